"""Capture-file backend: a pcap or pcapng file in, the shared event records out.

``read_capture(path)`` maps the file and walks its records
(:mod:`netweave.capture.containers`), then one compiled pass decodes every packet's
link, tunnel, IP and transport headers and groups packets into flows
(:mod:`netweave.capture.flowtable`). Only the packets that become records are decoded
into columns (:mod:`netweave.capture.decode`) and turned into events in Python
(:mod:`netweave.capture.flows`): segments with SYN set, the first payload of every flow
direction (reassembled in one compiled pass, :mod:`netweave.capture.reassembly`), flows
without a seen handshake, and per-flow counters. Records are built in bulk from column
lists (:mod:`netweave.capture.recordmaker`) with the cyclic GC paused; the handshake and
payload columns stay on the capture for consumers that take it whole
(:func:`netweave.fingerprint.columnar.fingerprint_capture`).

Damage is never fatal to what came before it: a file that breaks off or holds a corrupt
record yields every event up to that point plus a :class:`CaptureFileError` naming the file
and byte offset (``Capture.damage``). Malformed packets inside a sound file are skipped
and listed in ``Capture.problems`` with their frame number and byte offset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from netweave.capture import flowtable
from netweave.capture.containers import CaptureFileError, Frames, read_frames
from netweave.capture.decode import PROBLEM_TEXT, decode
from netweave.capture.events import (
    CAPTURE_PAYLOAD_LIMIT,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.flows import (
    AddressText,
    HandshakeFields,
    PayloadColumns,
    first_payloads,
    flows,
    handshake_records,
    rows_of,
)
from netweave.collector import gc_paused

__all__ = ["Capture", "CaptureFileError", "HandshakeColumns", "PacketProblem", "read_capture"]

MAX_LISTED_PROBLEMS = 100

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PacketProblem:
    """A malformed packet: its frame number, the byte offset in the file and what is wrong."""

    frame: int
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeColumns:
    """Header fields of ``Capture.handshakes`` as arrays (row ``i`` is handshake ``i``).

    For consumers that take all handshakes of a capture at once (the fingerprints of
    :func:`netweave.fingerprint.replay.fingerprint_capture`); values equal the records'.
    """

    fields: HandshakeFields  # frame, time, endpoints, options, tunnel as lists
    flow: I64  # the capture's flow of the segment (either direction)
    forward: Mask  # sent by the endpoint that sent the flow's first packet
    ip_version: I64
    ttl: I64
    tos: I64
    ip_flags: I64
    ip_id: I64
    flow_label: I64
    ip_options_length: I64
    seq: I64
    ack: I64
    window: I64
    tcp_flags: I64
    urgent_pointer: I64
    payload_length: I64


@dataclass(frozen=True, slots=True)
class Capture:
    """Everything read from one capture file."""

    path: str
    packets: int
    handshakes: tuple[TcpHandshake, ...]
    payloads: tuple[FirstPayload, ...]
    flows_seen: tuple[FlowSeen, ...]
    counters: tuple[FlowCounters, ...]
    problems: tuple[PacketProblem, ...]
    problem_count: int
    damage: CaptureFileError | None
    handshake_columns: HandshakeColumns | None = field(default=None, compare=False, repr=False)
    payload_columns: PayloadColumns | None = field(default=None, compare=False, repr=False)

    def events(self) -> list[TcpHandshake | FirstPayload | FlowSeen]:
        """Handshakes, first payloads and unseen-handshake flows in packet order.

        A first payload sorts at the frame that completed it (``last_frame``), where a
        live observer would emit it.
        """
        frame = np.fromiter(
            itertools.chain(
                (s.frame for s in self.flows_seen),
                (h.frame for h in self.handshakes),
                (p.last_frame for p in self.payloads),
            ),
            dtype=np.int64,
            count=len(self.flows_seen) + len(self.handshakes) + len(self.payloads),
        )
        rank = np.repeat(
            np.arange(3, dtype=np.int64),
            (len(self.flows_seen), len(self.handshakes), len(self.payloads)),
        )
        merged: list[TcpHandshake | FirstPayload | FlowSeen] = [
            *self.flows_seen,
            *self.handshakes,
            *self.payloads,
        ]
        return [merged[k] for k in np.lexsort((rank, frame)).tolist()]


def read_capture(
    path: str | Path,
    *,
    payload_limit: int = CAPTURE_PAYLOAD_LIMIT,
    counters: bool = True,
) -> Capture:
    """Read a pcap or pcapng file into event records.

    Raises :class:`CaptureFileError` only when nothing can be read (missing file, not a
    capture); later damage is reported in ``Capture.damage`` with what came before it.
    """
    frames = read_frames(path)
    with gc_paused():
        return _records(str(path), frames, payload_limit=payload_limit, counters=counters)


def _records(path: str, frames: Frames, *, payload_limit: int, counters: bool) -> Capture:
    found = flowtable.scan(frames)
    # Decode into columns only the packets that become records.
    wanted = np.unique(np.concatenate((found.syn, found.pick, found.first)))
    pk = decode(frames.image, frames.data_offset[wanted], frames.caplen[wanted],
                frames.linktype[wanted])  # fmt: skip
    addresses = AddressText(pk)
    shakes, option_problems, fields = handshake_records(
        pk,
        frames.image,
        frames.ts_ns,
        addresses,
        wanted=wanted,
        syn=found.syn,
        bad_options=found.syn_bad_options,
    )
    payloads, payload_columns = first_payloads(
        pk,
        frames.image,
        frames.ts_ns,
        scan=found,
        wanted=wanted,
        addresses=addresses,
        limit=payload_limit,
    )
    seen, counted = flows(pk, frames.ts_ns, found, addresses, wanted=wanted, counters=counters)
    bad = np.flatnonzero(found.problem)
    problems = [
        PacketProblem(int(i) + 1, int(frames.record_offset[i]),
                      PROBLEM_TEXT[int(found.problem[i])])
        for i in bad[:MAX_LISTED_PROBLEMS].tolist()
    ]  # fmt: skip
    problems.extend(PacketProblem(p.frame, p.offset, p.reason) for p in option_problems)
    problems.sort(key=lambda p: p.frame)
    sel = rows_of(wanted, found.syn)
    version = pk.ip_version[sel]
    columns = HandshakeColumns(
        fields=fields,
        flow=found.syn_flow,
        forward=found.syn_forward,
        ip_version=version,
        ttl=pk.ttl[sel],
        tos=pk.tos[sel],
        ip_flags=pk.ip_flags[sel],
        ip_id=pk.ip_id[sel],
        flow_label=pk.flow_label[sel],
        ip_options_length=np.where(version == 4, pk.ip_hlen[sel] - 20, 0),
        seq=pk.seq[sel],
        ack=pk.ack[sel],
        window=pk.window[sel],
        tcp_flags=pk.tcp_flags[sel],
        urgent_pointer=pk.urgent[sel],
        payload_length=pk.payload_wire[sel],
    )
    return Capture(
        path=path,
        packets=len(frames),
        handshakes=tuple(shakes),
        payloads=tuple(payloads),  # in last_frame order
        flows_seen=tuple(seen),  # in frame order
        counters=tuple(counted),  # in first_seen_ns order
        problems=tuple(problems[:MAX_LISTED_PROBLEMS]),
        problem_count=int(bad.size) + len(option_problems),
        damage=frames.damage,
        handshake_columns=columns,
        payload_columns=payload_columns,
    )
