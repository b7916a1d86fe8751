"""Fingerprints of a whole capture at once: the records ``Fingerprinter.run`` gives, faster.

:func:`fingerprint_capture` takes a capture read by
:func:`~netweave.capture.pcapfile.read_capture` and returns exactly the records
``list(Fingerprinter(options).run(capture.events()))`` returns, in the same order. It works
on the capture's handshake columns instead of record by record:

* p0f's view of a packet depends on a few header fields; handshakes are grouped by those
  fields (packed into integers) and the view, the JA4T/JA4TS rendering and the p0f match are
  computed once per group;
* p0f's flow bookkeeping (first SYN, retransmissions, first SYN-ACK server to client) and the
  JA4TS retransmission times run in one compiled pass keyed by the capture's own flow index;
* TLS hellos go through the batch path of :class:`Fingerprinter` (one compiled scan, one
  JA4/JA4S computation per TLS stack).

Python then only builds the records. Where the compiled pass cannot promise the same answer
(more flows than the observers keep, a SYN-ACK matching a userland
tool signature, which ends a p0f flow), the records come from ``Fingerprinter.run``.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from netweave.capture.compiled import jit
from netweave.capture.events import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from netweave.capture.flows import PayloadColumns
from netweave.capture.pcapfile import Capture, HandshakeColumns
from netweave.capture.recordmaker import bulk_builder
from netweave.collector import gc_paused
from netweave.fingerprint.foxio import MAX_SYN_ACK_TIMES, gaps_suffix, rendered
from netweave.fingerprint.hello_scan import scan_spans
from netweave.fingerprint.p0f import AckRule, P0fPacket, p0f_view
from netweave.fingerprint.p0f_observer import MAX_FLOWS, P0fObserver, P0fResult
from netweave.fingerprint.records import KIND_SYN, KIND_SYNACK, FingerprintRecord
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions, with_learned

__all__ = ["fingerprint_capture"]

I64 = npt.NDArray[np.int64]

_KIND_BITS = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST
_SYNACK = TCP_SYN | TCP_ACK
_build_records = bulk_builder(FingerprintRecord)
_KIND_TEXT = np.array([KIND_SYN, KIND_SYNACK], dtype=object)
# First bytes of a stream that may hold a hello: a TLS record (change cipher spec, alert,
# handshake, application data) or an HTTP head (``CONNECT ...``, ``HTTP/...``).
_HELLO_LEADS = np.array([0x14, 0x15, 0x16, 0x17, ord("C"), ord("H")], dtype=np.uint8)


def fingerprint_capture(capture: Capture, options: FingerprintOptions) -> list[FingerprintRecord]:
    """The fingerprint records of ``capture``, as ``Fingerprinter(options).run`` gives them."""
    with gc_paused():
        records = _columnar(capture, options)
    if records is None:
        return list(Fingerprinter(options).run(capture.events()))
    return records


def _columnar(capture: Capture, options: FingerprintOptions) -> list[FingerprintRecord] | None:
    cols = capture.handshake_columns
    bits = cols.tcp_flags & _KIND_BITS
    rows = np.flatnonzero((bits == TCP_SYN) | (bits == _SYNACK))
    flows, cflow = np.unique(cols.flow[rows], return_inverse=True)
    if flows.shape[0] >= MAX_FLOWS:
        return None  # the observers would start evicting flows: take their path
    cflow = cflow.reshape(-1)
    f = cols.fields
    if rows.shape[0] == len(cols.flow):
        pick = _all
    else:
        picked = rows.tolist()

        def pick(values: list[Any]) -> list[Any]:
            return _take(values, picked)

    tcp_options = pick(f.tcp_options)
    options_id = _intern(tcp_options)
    n = len(tcp_options)
    t4: list[str | None] = [None] * n
    t4s: list[str | None] = [None] * n
    if options.foxio:
        t4, t4s = _ja4t_ja4ts(cols, rows, cflow, tcp_options, options_id, pick(f.timestamp_ns))
    p0f: list[P0fResult | None] = [None] * n
    if options.p0f_db is not None:
        observer = P0fObserver(options.p0f_db, ack_rule=options.ack_rule)
        found = _p0f(observer, cols, rows, cflow, tcp_options, options_id, options.ack_rule)
        if found is None:
            return None
        p0f = found
    frames = pick(f.frame)
    handshake_records = _build_records(
        frames,
        pick(f.timestamp_ns),
        _KIND_TEXT[(bits[rows] != TCP_SYN).astype(np.int64)].tolist(),
        pick(f.src),
        pick(f.src_port),
        pick(f.dst),
        pick(f.dst_port),
        t4,
        t4s,
        [None] * n,
        [None] * n,
        p0f,
        pick(f.tunnel),
    )
    return _merge(capture, handshake_records, frames, options)


def _all(values: list[Any]) -> list[Any]:
    return values


def _take(values: list[Any], indices: list[int]) -> list[Any]:
    """``[values[i] for i in indices]`` in one C-level call."""
    if len(indices) > 1:
        return list(operator.itemgetter(*indices)(values))
    return [values[i] for i in indices]


def _merge(
    capture: Capture,
    handshake_records: list[FingerprintRecord],
    frames: list[int],
    options: FingerprintOptions,
) -> list[FingerprintRecord]:
    """Handshake and hello records in the order of the events that gave them."""
    at, hello_records = _hellos(capture, Fingerprinter(options))
    if not hello_records:
        return handshake_records
    several = np.flatnonzero(np.diff(at) == 0)
    if several.size:  # payloads with several hellos: their records by frame, as run() has them
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        stops = np.r_[starts[1:], len(at)]
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            if b - a > 1:
                hello_records[a:b] = sorted(hello_records[a:b], key=_frame)
    # Events come in frame order, handshakes before payloads on the same frame (see
    # Capture.events); a payload's records are where the payload completes.
    everything = np.concatenate((np.array(frames, dtype=np.int64), at))
    rank = np.repeat(np.arange(2), (len(handshake_records), len(hello_records)))
    merged = handshake_records + hello_records
    return _take(merged, np.lexsort((rank, everything)).tolist())


def _hellos(capture: Capture, fingerprinter: Fingerprinter) -> tuple[I64, list[FingerprintRecord]]:
    """Hello records of the capture's TCP first payloads in payload order, and the frame
    that completed each one's payload (``last_frame``)."""
    pc = capture.payload_columns
    if pc is None:
        return np.zeros(0, dtype=np.int64), []
    tcp = np.flatnonzero(pc.tcp & (pc.length > 0))
    # Only a TLS record or an HTTP (CONNECT) head can lead to a hello: scan just those.
    tcp = tcp[np.isin(_first_bytes(pc, tcp), _HELLO_LEADS)]
    # Scanned where they lie (the capture, or the reassembled bytes): no copy.
    found_rows: list[I64] = []
    found_ends: list[I64] = []
    keys: list[bytes] = []
    inside = pc.in_image[tcp]
    for part, buffer in ((tcp[inside], pc.image), (tcp[~inside], pc.data)):
        scan = scan_spans(buffer, pc.start[part], pc.start[part] + pc.length[part])
        found_rows.append(part[scan.payload])
        found_ends.append(scan.end)
        keys += scan.key_list()
    where_rows, scan_ends = np.concatenate(found_rows), np.concatenate(found_ends)
    by_row = np.argsort(where_rows, kind="stable")  # a payload's hellos stay in stream order
    where_rows, scan_ends = where_rows[by_row], scan_ends[by_row]
    keys = _take(keys, by_row.tolist())
    kept, known, learned = fingerprinter.resolve_hellos(
        where_rows.tolist(), scan_ends.tolist(), keys, pc.record
    )
    rows = np.array(kept, dtype=np.int64)
    where_rows, ends = where_rows[rows], scan_ends[rows]
    where = where_rows.tolist()
    nothing: list[None] = [None] * len(where)
    src, src_port, dst, dst_port = pc.endpoints(where_rows)
    records = _build_records(
        _frames_at(pc, where_rows, ends),
        pc.time_ns[where_rows].tolist(),
        [v[0] for v in known],
        src,
        src_port,
        dst,
        dst_port,
        nothing,
        nothing,
        [v[1] for v in known],
        [v[2] for v in known],
        nothing,
        _take(pc.tunnel, where),
    )
    where, records = with_learned(where, records, learned)
    return pc.last_frame[np.array(where, dtype=np.int64)], records


def _first_bytes(pc: PayloadColumns, rows: I64) -> npt.NDArray[np.uint8]:
    """The first byte of each of the payloads ``rows`` (none may be empty)."""
    lead = np.zeros(len(rows), dtype=np.uint8)
    kept = pc.in_image[rows]
    lead[kept] = pc.image[pc.start[rows[kept]]]
    lead[~kept] = pc.data[pc.start[rows[~kept]]]
    return lead


def _frames_at(pc: PayloadColumns, rows: I64, ends: I64) -> list[int]:
    """``FirstPayload.frame_at(end)`` of payload ``rows[j]`` and offset ``ends[j]``: the
    frame of the first segment ending at or after the offset, else the payload's last."""
    first, count = pc.seg_first[rows], pc.seg_count[rows]
    frames = pc.last_frame[rows].copy()
    open_ = np.ones(rows.shape[0], dtype=np.bool_)
    for step in range(int(count.max(initial=0))):
        at = np.minimum(first + step, max(pc.seg_end.shape[0] - 1, 0))
        hit = open_ & (step < count) & (ends <= pc.seg_end[at])
        frames[hit] = pc.seg_frame[at[hit]]
        open_ &= ~hit
    out: list[int] = frames.tolist()
    return out


def _frame(record: FingerprintRecord) -> int:
    return record.frame


def _intern(values: list[bytes]) -> I64:
    """A small integer per distinct value, in order of first appearance."""
    index: dict[bytes, int] = {}
    ids = [index.setdefault(v, len(index)) for v in values]
    return np.array(ids, dtype=np.int64)


def _groups(*keys: I64) -> tuple[I64, I64]:
    """Group rows by equal key columns: (first row of each group, group of each row)."""
    n = keys[0].shape[0]
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort(keys[::-1])
    change = np.zeros(n, dtype=np.bool_)
    change[0] = True
    for key in keys:
        ordered = key[order]
        change[1:] |= ordered[1:] != ordered[:-1]
    group_sorted = np.cumsum(change) - 1
    group = np.empty(n, dtype=np.int64)
    group[order] = group_sorted
    return order[change], group


def _ja4t_ja4ts(
    cols: HandshakeColumns,
    rows: I64,
    cflow: I64,
    tcp_options: list[bytes],
    options_id: I64,
    timestamps: list[int],
) -> tuple[list[str | None], list[str | None]]:
    flags = cols.tcp_flags[rows]
    window = cols.window[rows]
    first, group = _groups(window, options_id)
    texts = np.array(
        [rendered(int(window[i]), tcp_options[i]) for i in first.tolist()] + [None],
        dtype=object,
    )
    none = len(first)
    t4: list[str | None] = texts[np.where(flags == TCP_SYN, group, none)].tolist()
    count = np.zeros(len(rows), dtype=np.int64)
    times = np.zeros((len(rows), MAX_SYN_ACK_TIMES), dtype=np.int64)
    stamps = np.array(timestamps, dtype=np.int64)
    _ja4ts_pass(flags, cflow, cols.seq[rows], stamps, int(cflow.max(initial=-1)) + 1, count,
                times)  # fmt: skip
    t4s: list[str | None] = texts[np.where(flags == _SYNACK, group, none)].tolist()
    for r in np.flatnonzero(count > 1).tolist():
        t4s[r] = f"{t4s[r]}_{gaps_suffix(times[r, : count[r]].tolist())}"
    return t4, t4s


@jit
def _ja4ts_pass(
    flags: Any, cflow: Any, seq: Any, stamps: Any, flows: int, count: Any, times: Any
) -> None:
    """``Ja4tsTracker``'s bookkeeping: SYN-ACK times seen so far on each row's stream."""
    has = np.zeros(flows, dtype=np.bool_)
    seq_known = np.zeros(flows, dtype=np.bool_)
    syn_seq = np.zeros(flows, dtype=np.int64)
    seen = np.zeros(flows, dtype=np.int64)
    kept = np.zeros((flows, times.shape[1]), dtype=np.int64)
    for r in range(flags.shape[0]):
        c = cflow[r]
        if flags[r] == 0x002:
            if not has[c] or (seq_known[c] and syn_seq[c] != seq[r]):
                has[c] = True
                seq_known[c] = True
                syn_seq[c] = seq[r]
                seen[c] = 0
            elif not seq_known[c]:
                seq_known[c] = True
                syn_seq[c] = seq[r]
        elif flags[r] == 0x012:
            if not has[c]:
                has[c] = True
                seq_known[c] = False
                seen[c] = 0
            if seen[c] < times.shape[1]:
                kept[c, seen[c]] = stamps[r]
                seen[c] += 1
            count[r] = seen[c]
            if seen[c] > 1:
                times[r, : seen[c]] = kept[c, : seen[c]]


def _p0f(
    observer: P0fObserver,
    cols: HandshakeColumns,
    rows: I64,
    cflow: I64,
    tcp_options: list[bytes],
    options_id: I64,
    ack_rule: AckRule,
) -> list[P0fResult | None] | None:
    """p0f results of the handshakes at ``rows``; ``None`` where only the observer can tell."""
    ack = cols.ack[rows]
    ack_bit = (ack >> 24) & 1 if ack_rule is AckRule.P0F_X86 else (ack != 0).astype(np.int64)
    version = cols.ip_version[rows]
    if not np.isin(version, (4, 6)).all():
        return None
    packed = np.zeros(len(rows), dtype=np.int64)
    # p0f_view's arguments but the options, packed (61 bits); the options are interned.
    for value, width in (
        (version == 6, 1), (cols.ttl[rows], 8), (cols.tos[rows], 8), (cols.ip_flags[rows], 3),
        (cols.ip_id[rows] == 0, 1), (cols.flow_label[rows] != 0, 1),
        (cols.ip_options_length[rows], 6), (cols.seq[rows] == 0, 1), (ack_bit, 1),
        (ack == 0, 1), (cols.window[rows], 16), (cols.tcp_flags[rows], 12),
        (cols.urgent_pointer[rows] != 0, 1), (cols.payload_length[rows] != 0, 1),
    ):  # fmt: skip
        v = np.asarray(value, dtype=np.int64)
        if v.size and (v.min() < 0 or v.max() >= 1 << width):
            return None  # a value the packing cannot hold
        packed = (packed << width) | v
    first, view = _groups(packed, options_id)
    packets: list[P0fPacket | None] = []
    for i in first.tolist():
        r = int(rows[i])
        packets.append(p0f_view(
            int(cols.ip_version[r]), int(cols.ttl[r]), int(cols.tos[r]), int(cols.ip_flags[r]),
            bool(cols.ip_id[r] == 0), bool(cols.flow_label[r] != 0),
            int(cols.ip_options_length[r]), bool(cols.seq[r] == 0), int(ack_bit[i]),
            bool(cols.ack[r] == 0), int(cols.window[r]), int(cols.tcp_flags[r]),
            bool(cols.urgent_pointer[r] != 0), tcp_options[i], bool(cols.payload_length[r] != 0),
        ))  # fmt: skip
    ok = np.array([pk is not None for pk in packets], dtype=np.bool_)
    to_server = np.array([pk is not None and pk.to_server for pk in packets], dtype=np.bool_)
    mss = np.array([pk.mss if pk is not None else 0 for pk in packets], dtype=np.int64)
    sendsyn = np.array([observer.is_sendsyn(pk) for pk in packets], dtype=np.bool_)
    syn_results: list[P0fResult | None] = [
        observer.result(pk, 0, synack=False, sendsyn=bool(sendsyn[u]))
        if pk is not None and pk.to_server
        else None
        for u, pk in enumerate(packets)
    ]
    syn_app = np.array([r is not None and r.kind == "app" for r in syn_results], dtype=np.bool_)
    outcome = np.zeros(len(rows), dtype=np.int64)
    outcome_mss = np.zeros(len(rows), dtype=np.int64)
    _p0f_pass(view, cflow, cols.forward[rows], cols.seq[rows], ok, to_server, mss, sendsyn,
              syn_app, int(cflow.max(initial=-1)) + 1, outcome, outcome_mss)  # fmt: skip
    # One result per distinct (view, outcome, peer MSS); rows take theirs.
    hit = np.flatnonzero(outcome)
    first_hit, which = _groups(view[hit], outcome[hit], outcome_mss[hit])
    results: list[P0fResult | None] = []
    for r in hit[first_hit].tolist():
        u = int(view[r])
        code = int(outcome[r])
        pk = packets[u]
        if code == 1 or pk is None:
            results.append(syn_results[u])
            continue
        result = observer.result(pk, int(outcome_mss[r]), synack=True, sendsyn=code == 3)
        if code == 2 and result.kind == "app":
            return None  # a userland-tool SYN-ACK ends its flow: only the observer follows
        results.append(result)
    out = np.full(len(rows), None, dtype=object)
    out[hit] = np.array([*results, None], dtype=object)[:-1][which]
    found: list[P0fResult | None] = out.tolist()
    return found


@jit
def _p0f_pass(
    view: Any, cflow: Any, forward: Any, seq: Any, ok: Any, to_server: Any, mss: Any,
    sendsyn: Any, syn_app: Any, flows: int, outcome: Any, outcome_mss: Any,
) -> None:  # fmt: skip
    """``P0fObserver``'s flow bookkeeping; per row 0 (no result), 1 the SYN result of its
    view, 2 a SYN-ACK result (peer MSS in ``outcome_mss``), 3 a sendsyn response."""
    live = np.zeros(flows, dtype=np.bool_)
    client_forward = np.zeros(flows, dtype=np.bool_)
    syn_seq = np.zeros(flows, dtype=np.int64)
    syn_mss = np.zeros(flows, dtype=np.int64)
    acked = np.zeros(flows, dtype=np.bool_)
    probe = np.zeros(flows, dtype=np.bool_)
    for r in range(view.shape[0]):
        u = view[r]
        if not ok[u]:
            continue
        c = cflow[r]
        if to_server[u]:
            if live[c]:
                if client_forward[c] == forward[r] and syn_seq[c] == seq[r]:
                    continue  # a retransmitted SYN
                live[c] = False
            outcome[r] = 1
            if not syn_app[u] or sendsyn[u]:
                live[c] = True
                client_forward[c] = forward[r]
                syn_seq[c] = seq[r]
                syn_mss[c] = mss[u]
                acked[c] = False
                probe[c] = sendsyn[u]
            continue
        if not live[c]:
            continue
        if probe[c]:
            live[c] = False
            outcome[r] = 3
            outcome_mss[r] = syn_mss[c]
            continue
        if client_forward[c] == forward[r] or acked[c]:
            continue
        acked[c] = True
        outcome[r] = 2
        outcome_mss[r] = syn_mss[c]
