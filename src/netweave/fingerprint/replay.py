"""From capture event records to fingerprint records (sans-IO, stateful over one replay).

:class:`Fingerprinter` takes the shared event records (whatever backend produced them)
one at a time and returns the fingerprint records they give rise to. The FoxIO-licensed
fingerprints (JA4T, JA4TS, JA4S) are computed only when ``FingerprintOptions.foxio`` is
true, and are imported only then.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from netweave.capture.events import (
    PROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    FirstPayload,
    TcpHandshake,
)
from netweave.capture.recordmaker import bulk_builder, record_builder
from netweave.collector import gc_paused
from netweave.fingerprint.hello_scan import scan_hellos
from netweave.fingerprint.ja4 import ja4
from netweave.fingerprint.p0f import AckRule
from netweave.fingerprint.p0f_db import P0fDatabase
from netweave.fingerprint.p0f_observer import P0fObserver
from netweave.fingerprint.records import (
    KIND_CLIENT_HELLO,
    KIND_SERVER_HELLO,
    KIND_SYN,
    KIND_SYNACK,
    FingerprintRecord,
)
from netweave.fingerprint.tls_hello import ClientHello, stream_hellos

if TYPE_CHECKING:
    from netweave.fingerprint.foxio import Ja4tsTracker


RUN_BATCH = 65_536
"""Events fingerprinted together by :meth:`Fingerprinter.run`."""
MAX_HELLO_MEMO = 65_536
"""Distinct hello keys remembered (cleared when full)."""


# What the hello memo keeps of one hello: (kind, ja4, ja4s).
HelloPrint = tuple[str, str | None, str | None]


@dataclass(frozen=True, slots=True)
class FingerprintOptions:
    """What to compute: p0f (when a database is given), FoxIO JA4+ (``foxio``), JA4."""

    p0f_db: P0fDatabase | None = None
    foxio: bool = True
    ack_rule: AckRule = AckRule.P0F_X86


class Fingerprinter:
    """Stateful over one stream of events: p0f flow state, JA4TS retransmission gaps."""

    def __init__(self, options: FingerprintOptions) -> None:
        self._options = options
        self._p0f = (
            P0fObserver(options.p0f_db, ack_rule=options.ack_rule)
            if options.p0f_db is not None
            else None
        )
        self._ja4ts: Ja4tsTracker | None = None
        self._ja4t: Callable[[TcpHandshake], str | None] | None = None
        # hello key (hello_scan) -> (kind, ja4, ja4s) of hellos fingerprinted before
        self._hello_memo: dict[bytes, HelloPrint] = {}
        if options.foxio:
            from netweave.fingerprint.foxio import Ja4tsTracker, ja4t

            self._ja4ts = Ja4tsTracker()
            self._ja4t = ja4t

    @property
    def options(self) -> FingerprintOptions:
        """What this fingerprinter computes."""
        return self._options

    def feed(self, event: object) -> list[FingerprintRecord]:
        """The fingerprint records ``event`` gives rise to (often none)."""
        if isinstance(event, TcpHandshake):
            record = self._handshake(event)
            return [record] if record is not None else []
        if isinstance(event, FirstPayload) and event.protocol == PROTO_TCP:
            return self._hellos(event)
        return []

    def run(self, events: Iterable[object]) -> Iterator[FingerprintRecord]:
        """Fingerprint records of ``events``: per event as :meth:`feed` gives them, in frame
        order within an event.

        Events are taken in batches so that the TLS hellos of a batch are found in one
        compiled pass (:mod:`netweave.fingerprint.hello_scan`); the records are those
        :meth:`feed` would return event by event.
        """
        batch: list[object] = []
        for event in events:
            batch.append(event)
            if len(batch) >= RUN_BATCH:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[object]) -> list[FingerprintRecord]:
        with gc_paused():
            return self._batch_records(batch)

    def _batch_records(self, batch: list[object]) -> list[FingerprintRecord]:
        payloads = [e for e in batch if isinstance(e, FirstPayload) and e.protocol == PROTO_TCP]
        hellos = self.hello_records(payloads)
        shakes = self._batch_handshakes(
            [e for e in batch if isinstance(e, TcpHandshake) and e.tcp_flags & _KIND_BITS in _KINDS]
        )  # fmt: skip
        out: list[FingerprintRecord] = []
        k = 0
        s = 0
        for event in batch:
            if isinstance(event, TcpHandshake):
                if event.tcp_flags & _KIND_BITS in _KINDS:
                    out.append(shakes[s])
                    s += 1
            elif isinstance(event, FirstPayload) and event.protocol == PROTO_TCP:
                found = hellos.get(k)
                k += 1
                if found:
                    out.extend(sorted(found, key=_frame) if len(found) > 1 else found)
        return out

    def _batch_handshakes(self, shakes: list[TcpHandshake]) -> list[FingerprintRecord]:
        """Records of SYNs and SYN-ACKs, in order (what :meth:`_handshake` gives each)."""
        n = len(shakes)
        nothing: list[str | None] = [None] * n
        t4: list[str | None] = nothing
        t4s: list[str | None] = nothing
        if self._ja4ts is not None and self._ja4t is not None:
            ja4t = self._ja4t
            t4 = [ja4t(h) for h in shakes]
            t4s = self._ja4ts.observe_many(shakes)
        p0f = self._p0f.observe_many(shakes) if self._p0f is not None else [None] * n
        return _build_records(
            [h.frame for h in shakes],
            [h.timestamp_ns for h in shakes],
            [_KINDS[h.tcp_flags & _KIND_BITS] for h in shakes],
            [h.src for h in shakes],
            [h.src_port for h in shakes],
            [h.dst for h in shakes],
            [h.dst_port for h in shakes],
            t4,
            t4s,
            nothing,
            nothing,
            p0f,
            [h.tunnel for h in shakes],
        )

    def hello_records(self, payloads: list[FirstPayload]) -> dict[int, list[FingerprintRecord]]:
        """Hello records of ``payloads`` by position (what :meth:`feed` gives each)."""
        out: dict[int, list[FingerprintRecord]] = {}
        for index, record in zip(*self.hello_record_list(payloads), strict=True):
            found = out.get(index)
            if found is None:
                out[index] = [record]
            else:
                found.append(record)
        return out

    def hello_record_list(
        self, payloads: list[FirstPayload]
    ) -> tuple[list[int], list[FingerprintRecord]]:
        """Hello records of ``payloads`` in payload order, and the payload of each record.

        One compiled scan finds the hellos; their fingerprints come from the memo, or from
        the Python parser for a TLS stack not seen before. A payload's records are in the
        order :meth:`feed` gives them.
        """
        if not payloads:
            return [], []
        scan = scan_hellos([p.data for p in payloads])
        keys = scan.key_list()
        scan_where, scan_ends = scan.payload.tolist(), scan.end.tolist()
        kept, known, learned = self.resolve_hellos(
            scan_where, scan_ends, keys, payloads.__getitem__
        )
        where = [scan_where[j] for j in kept]
        ends = [scan_ends[j] for j in kept]
        held = [payloads[k] for k in where]
        nothing: list[None] = [None] * len(held)
        built = _build_records(
            [p.frame_at(end) for p, end in zip(held, ends, strict=True)],
            [p.timestamp_ns for p in held],
            [v[0] for v in known],
            [p.src for p in held],
            [p.src_port for p in held],
            [p.dst for p in held],
            [p.dst_port for p in held],
            nothing,
            nothing,
            [v[1] for v in known],
            [v[2] for v in known],
            nothing,
            [p.tunnel for p in held],
        )
        return with_learned(where, built, learned)

    def resolve_hellos(
        self,
        where: list[int],
        ends: list[int],
        keys: list[bytes],
        payload: Callable[[int], FirstPayload],
    ) -> tuple[list[int], list[HelloPrint], dict[int, list[FingerprintRecord]]]:
        """Fingerprints of the hellos a compiled scan found: hello ``j`` has key ``keys[j]``
        and ends at ``ends[j]`` in payload ``where[j]`` (non-decreasing).

        Returns the hellos answered by the memo (their positions ``j`` and ``(kind, ja4,
        ja4s)``), and the records of each payload holding a TLS stack not seen before: the
        Python parser decides for that whole payload, and the fingerprints are remembered
        under the key of each of its hellos.
        """
        memo = self._hello_memo
        values = [memo.get(key) for key in keys]
        if None not in values:
            return list(range(len(keys))), cast("list[HelloPrint]", values), {}
        learned: dict[int, list[FingerprintRecord]] = {}
        for j in [j for j, value in enumerate(values) if value is None]:
            index = where[j]
            if index in learned:
                continue
            key = keys[j]
            values[j] = memo.get(key)
            if values[j] is None:
                group = range(bisect.bisect_left(where, index), bisect.bisect_right(where, index))
                learned[index] = self._learn_hellos(
                    payload(index), [(ends[t], keys[t]) for t in group]
                )
        kept = [j for j in range(len(keys)) if where[j] not in learned]
        return kept, [v for j in kept if (v := values[j]) is not None], learned

    def _learn_hellos(
        self, payload: FirstPayload, scanned: list[tuple[int, bytes]]
    ) -> list[FingerprintRecord]:
        """Records of ``payload`` from the Python parser; each hello's fingerprints are
        remembered under its key when the compiled scan found the same hellos."""
        records = self._hellos(payload)
        memo = self._hello_memo
        if len(records) == len(scanned) and all(
            r.frame == payload.frame_at(end)
            and r.kind == (KIND_CLIENT_HELLO if key[0] == 1 else KIND_SERVER_HELLO)
            for (end, key), r in zip(scanned, records, strict=True)
        ):
            if len(memo) + len(records) > MAX_HELLO_MEMO:
                memo.clear()
            for (_end, key), r in zip(scanned, records, strict=True):
                memo[key] = (r.kind, r.ja4, r.ja4s)
        return records

    def _handshake(self, h: TcpHandshake) -> FingerprintRecord | None:
        kind_bits = h.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)
        if kind_bits == TCP_SYN:
            kind = KIND_SYN
        elif kind_bits == TCP_SYN | TCP_ACK:
            kind = KIND_SYNACK
        else:
            return None
        t4 = t4s = None
        if self._ja4ts is not None and self._ja4t is not None:
            t4 = self._ja4t(h)
            t4s = self._ja4ts.observe(h)
        p0f = self._p0f.observe(h) if self._p0f is not None else None
        return _make_record(h.frame, h.timestamp_ns, kind, h.src, h.src_port, h.dst,
                            h.dst_port, t4, t4s, None, None, p0f, h.tunnel)  # fmt: skip

    def _hellos(self, p: FirstPayload) -> list[FingerprintRecord]:
        out: list[FingerprintRecord] = []
        for end, hello in stream_hellos(p.data):
            frame = p.frame_at(end)
            if isinstance(hello, ClientHello):
                out.append(_hello_record(p, frame, KIND_CLIENT_HELLO, ja4_value=ja4(hello)))
            else:
                value = None
                if self._options.foxio:
                    from netweave.fingerprint.foxio import ja4s

                    value = ja4s(hello)
                out.append(_hello_record(p, frame, KIND_SERVER_HELLO, ja4s_value=value))
        return out


def with_learned(
    where: list[int], records: list[FingerprintRecord], learned: dict[int, list[FingerprintRecord]]
) -> tuple[list[int], list[FingerprintRecord]]:
    """``records`` (of payloads ``where``, in payload order) with the ``learned`` records of
    other payloads put in payload order too (a payload's own records keep their order)."""
    if not learned:
        return where, records
    where, records = list(where), list(records)
    for index, found in learned.items():
        where.extend([index] * len(found))
        records.extend(found)
    order = sorted(range(len(where)), key=where.__getitem__)  # stable
    return [where[k] for k in order], [records[k] for k in order]


def _frame(record: FingerprintRecord) -> int:
    return record.frame


_make_record = record_builder(FingerprintRecord)
_build_records = bulk_builder(FingerprintRecord)
_KIND_BITS = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST
_KINDS = {TCP_SYN: KIND_SYN, TCP_SYN | TCP_ACK: KIND_SYNACK}


def _hello_record(
    p: FirstPayload,
    frame: int,
    kind: str,
    *,
    ja4_value: str | None = None,
    ja4s_value: str | None = None,
) -> FingerprintRecord:
    # A hello spread over several segments is reported on the frame that completed it,
    # as tshark does.
    return FingerprintRecord(
        frame=frame,
        timestamp_ns=p.timestamp_ns,
        kind=kind,
        src=p.src,
        src_port=p.src_port,
        dst=p.dst,
        dst_port=p.dst_port,
        ja4=ja4_value,
        ja4s=ja4s_value,
        tunnel=p.tunnel,
    )
