"""The live eBPF backend: the kernel flow observer on tcx (or tc) hooks, decoded into events.

``KernelObserver`` loads ``bpf/observer.bpf.c``, checks every record layout against the
object's BTF, attaches the observer first in the chain on ingress and egress of each chosen
interface (inside another network namespace when asked), and turns ring-buffer records into
the records of :mod:`netweave.capture.events`. Flow counters come from the kernel's LRU flow
tables plus its per-CPU flow cache, on demand.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from ctypes import Structure, sizeof
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroute2 import IPRoute

from netweave.capture import kernel_records as kr
from netweave.capture.columns import FlowColumns
from netweave.capture.events import (
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.flow_slots import pending_counts
from netweave.capture.ring_columns import flow_columns, walk_records
from netweave.kernel import BpfObject, Link, RingBuffer, TcFilter
from netweave.netns import run_in

log = logging.getLogger(__name__)
IntArray = npt.NDArray[np.int64]
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

_DECODERS: dict[int, type[Structure]] = {
    kr.NW_EV_HANDSHAKE: kr.HandshakeRecord,
    kr.NW_EV_PAYLOAD: kr.PayloadRecord,
    kr.NW_EV_FLOW_SEEN: kr.FlowSeenRecord,
}


def numpy_dtype(record: type[Structure]) -> np.dtype[np.void]:
    """A structured dtype with the record's offsets; byte arrays become ``V<n>`` (bytes)."""
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    for field in record._fields_:
        name, ctype = field[0], field[1]
        names.append(name)
        offsets.append(getattr(record, name).offset)
        if isinstance(ctype, type) and issubclass(ctype, Structure):
            formats.append(numpy_dtype(ctype))
        elif hasattr(ctype, "_length_"):
            formats.append(np.dtype(f"V{sizeof(ctype)}"))
        else:
            formats.append(np.dtype(ctype))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": sizeof(record)})  # fmt: skip


DTYPES: dict[int, np.dtype[np.void]] = {kind: numpy_dtype(rec) for kind, rec in _DECODERS.items()}


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One drain of the ring buffer: the copied block and where its well-formed records are.

    ``offsets``, ``kinds`` and ``frames`` have one row per record of a known kind and size,
    in arrival order; frames number every drained record (malformed ones too), as
    :meth:`KernelObserver.events_of` reports them. Nothing is decoded beyond the kind until
    asked: :meth:`records` gathers whole records of one kind, and
    :func:`netweave.capture.ring_columns.flow_columns` only the fields the graph reads.
    """

    block: bytes
    offsets: npt.NDArray[np.int64]
    kinds: npt.NDArray[np.int64]
    frames: npt.NDArray[np.int64]
    malformed: int

    def __len__(self) -> int:
        return len(self.offsets)

    def records(self, kind: int) -> npt.NDArray[np.void]:
        """Every record of ``kind`` as a structured array (see ``DTYPES``), arrival order."""
        dtype = DTYPES[kind]
        off = self.offsets[self.kinds == kind]
        raw = np.frombuffer(self.block, np.uint8)
        rows = raw[off[:, None] + np.arange(dtype.itemsize)]
        return np.ascontiguousarray(rows).view(dtype).ravel()


def decode_block(
    block: bytes, offsets: Sequence[int] | IntArray, sizes: Sequence[int] | IntArray,
    first_frame: int,
) -> EventBatch:  # fmt: skip
    """Find the well-formed records of a drained block of ring-buffer records.

    A record whose size is not its kind's size is counted in ``malformed`` and skipped.
    """
    none = np.zeros(0, np.int64)
    if not len(offsets):
        return EventBatch(block, none, none, none, 0)
    raw = np.frombuffer(block, np.uint8)
    off = np.asarray(offsets, np.int64)
    size = np.asarray(sizes, np.int64)
    ok = (size >= 2) & (off + 2 <= len(raw))
    kinds = np.zeros(len(off), np.int64)
    kinds[ok] = raw[off[ok]].astype(np.int64) | (raw[off[ok] + 1].astype(np.int64) << 8)
    good = np.zeros(len(off), np.bool_)
    for kind, dtype in DTYPES.items():
        good |= (kinds == kind) & (size == dtype.itemsize) & (off + dtype.itemsize <= len(raw))
    picked = np.flatnonzero(good)
    return EventBatch(block, off[picked], kinds[picked], picked + first_frame,
                      len(off) - len(picked))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Interface:
    """An interface the observer watches: index and name in its namespace."""

    ifindex: int
    name: str


def default_interfaces(netns: str | None = None, extra: Iterable[str] = ()) -> list[Interface]:
    """Every non-loopback interface that is up, plus those named in ``extra``."""

    def listing() -> list[Interface]:
        with IPRoute() as ipr:
            links = ipr.get_links()
        wanted = set(extra)
        out = []
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            flags = link["flags"]
            if name in wanted or (flags & IFF_UP and not flags & IFF_LOOPBACK):
                out.append(Interface(link["index"], name))
        return out

    return run_in(netns, listing)


class KernelObserver:
    """The kernel flow observer on a set of interfaces; use as a context manager."""

    def __init__(
        self,
        interfaces: Sequence[str] | None = None,
        *,
        netns: str | None = None,
        flow_entries: int = 65536,
    ) -> None:
        self.netns = netns
        self._obj = BpfObject.embedded("observer")
        self._obj.set_max_entries("flows4", flow_entries)
        self._obj.set_max_entries("flows6", max(flow_entries // 4, 1024))
        self._obj.load()
        for struct_name, record in kr.RECORDS.items():
            self._obj.check_record(struct_name, record)
        self._prog = self._obj.programs["observe"]
        if interfaces is None:
            self.interfaces = default_interfaces(netns)
        else:
            self.interfaces = self._resolve(interfaces)
        self._names = {i.ifindex: i.name for i in self.interfaces}
        self._attachments: list[Link | TcFilter] = []
        try:
            for iface in self.interfaces:
                for ingress in (True, False):
                    self._attachments.append(self._attach(iface.ifindex, ingress))
        except Exception:
            self.close()
            raise
        self._ring = RingBuffer(self._obj.map("events"), self._obj.map("event_drops"))
        walk_records(bytes(8))  # load the compiled walk now, not at the first drain
        self._flows4 = self._obj.map("flows4")
        self._flows6 = self._obj.map("flows6")
        self._cache4 = self._obj.map("cache4")
        self._cache6 = self._obj.map("cache6")
        self._last_read: dict[bytes, tuple[int, int]] = {}
        self._frame = 0
        self.malformed = 0
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        self._text: dict[bytes, str] = {}

    def _resolve(self, names: Sequence[str]) -> list[Interface]:
        def lookup() -> list[Interface]:
            return [Interface(socket.if_nametoindex(n), n) for n in names]

        return run_in(self.netns, lookup)

    def _attach(self, ifindex: int, ingress: bool) -> Link | TcFilter:
        return run_in(self.netns, self._prog.attach_tc, ifindex, ingress=ingress, first=True)

    # -- events -------------------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when events are waiting (for select/epoll loops)."""
        return self._ring.fileno()

    def poll(self, timeout: float | None = None) -> list[CaptureEvent]:
        """Wait up to ``timeout`` seconds for events and return every one ready."""
        return self.events_of(self.poll_batch(timeout))

    def poll_batch(self, timeout: float | None = None) -> EventBatch:
        """Wait up to ``timeout`` seconds for events and decode every one ready, column-wise."""
        block, offsets, sizes = self._drain()
        if not len(offsets):
            self._ring.poll_wait(timeout)
            block, offsets, sizes = self._drain()
        return self._decode_block(block, offsets, sizes)

    def _drain(self) -> tuple[bytes, IntArray, IntArray]:
        """Every record ready now: one copy of the ring's ready region, a compiled walk."""
        block = self._ring.ready_block()
        offsets, sizes, walked = walk_records(block)
        self._ring.release(walked, len(offsets))
        return block, offsets, sizes

    def _decode_block(
        self, block: bytes, offsets: Sequence[int] | IntArray, sizes: Sequence[int] | IntArray
    ) -> EventBatch:
        """Decode, number the frames on from the last batch, and count malformed records."""
        batch = decode_block(block, offsets, sizes, self._frame + 1)
        self._frame += len(offsets)
        self._count_malformed(batch.malformed)
        return batch

    def events_of(
        self, batch: EventBatch, kinds: Iterable[int] = tuple(DTYPES)
    ) -> list[CaptureEvent]:
        """The batch's records of ``kinds`` (default: all) as event objects, in arrival order."""
        placed: list[tuple[int, CaptureEvent]] = []
        for kind in kinds:
            selected = batch.kinds == kind
            if not selected.any():
                continue
            frames = batch.frames[selected].tolist()
            for frame, rec in zip(frames, batch.records(kind).tolist(), strict=True):
                placed.append((frame, self._materialize(kind, frame, rec)))
        placed.sort(key=lambda item: item[0])
        return [event for _frame, event in placed]

    def columns_of(self, batch: EventBatch) -> FlowColumns:
        """The batch as the graph's columns, with no event objects (for ``add_batch``)."""
        return flow_columns(batch.block, batch.offsets, batch.kinds, self._clock_offset, self._addr)

    def test_run(self, frame: bytes, repeat: int = 1) -> None:
        """Run the observer on ``frame`` in the kernel (BPF_PROG_TEST_RUN), ``repeat`` times.

        The runs update the flow table and queue events in the ring buffer as packets on a
        watched interface do (benchmarks and tests drive the observer this way).
        """
        self._prog.test_run(frame, repeat=repeat)

    @property
    def dropped(self) -> int:
        """Events the kernel could not queue because the ring buffer was full."""
        return self._ring.dropped

    def decode(self, records: Iterable[bytes]) -> list[CaptureEvent]:
        """Turn raw ring-buffer records into events; wrong-sized records are counted, skipped."""
        chunks = list(records)
        offsets, at = [], 0
        for chunk in chunks:
            offsets.append(at)
            at += len(chunk)
        return self.events_of(
            self._decode_block(b"".join(chunks), offsets, [len(c) for c in chunks])
        )

    def _count_malformed(self, count: int) -> None:
        if count and not self.malformed:
            log.warning(
                "observer: dropping %d records of unexpected size; counting the rest", count
            )
        self.malformed += count

    def _materialize(self, kind: int, frame: int, rec: tuple[Any, ...]) -> CaptureEvent:
        hdr, ep = rec[0], rec[1]
        ts = hdr[3] + self._clock_offset
        link = self._names.get(hdr[2], str(hdr[2]))
        version = ep[5]
        src, dst = self._addr(ep[0], version), self._addr(ep[1], version)
        if kind == kr.NW_EV_HANDSHAKE:
            (_h, _e, seq, ack, label, window, flags, urgent, ip_id, total, plen, ttl, tos,
             ip_flags, ip_opt, olen, _pad, options) = rec  # fmt: skip
            return TcpHandshake(ts, frame, version, src, dst, ep[2], ep[3], ttl, tos, ip_flags,
                                ip_id, label, ip_opt, total, seq, ack, window, flags, urgent,
                                options[:olen], plen, link)  # fmt: skip
        if kind == kr.NW_EV_PAYLOAD:
            _h, _e, length, captured, _pad, data = rec
            return FirstPayload(ts, frame, frame, version, ep[4], src, dst, ep[2], ep[3],
                                data[:captured], length > captured, link, "",
                                ((captured, frame),))  # fmt: skip
        return FlowSeen(ts, frame, version, ep[4], src, dst, ep[2], ep[3], rec[2], link)

    def _addr(self, raw: bytes, version: int) -> str:
        key = raw[:4] if version == 4 else raw
        text = self._text.get(key)
        if text is None:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            text = socket.inet_ntop(family, key)
            if len(self._text) > 65536:
                self._text.clear()
            self._text[key] = text
        return text

    # -- flow table -----------------------------------------------------------------------
    def flow_counters(self) -> list[FlowCounters]:
        """Every flow in the kernel's tables, direction ``a`` being its first sender.

        Counts are the table's plus what the kernel's per-CPU flow cache holds for the flow
        (:func:`~netweave.capture.flow_slots.pending_counts`). The kernel refreshes a flow's
        last-seen time only on control packets and every 64th packet of a direction (a clock
        read costs more than the rest of the work), so a flow whose counts grew since the
        previous read was alive at that read, at least.
        """
        now = time.time_ns()
        out = []
        seen: dict[bytes, tuple[int, int]] = {}
        for table, cache, slot, key_type, version in (
            (self._flows4, self._cache4, kr.FlowSlot4, kr.FlowKey4, 4),
            (self._flows6, self._cache6, kr.FlowSlot6, kr.FlowKey, 6),
        ):
            entries = list(table.items())
            pending = pending_counts(cache, slot)  # after the table: see pending_counts
            for raw_key, raw_val in entries:
                k = key_type.from_buffer_copy(raw_key)
                v = kr.FlowStats.from_buffer_copy(raw_val)
                more = pending.get(raw_key)
                if more is not None:
                    v.packets_lo_hi += more[0]
                    v.bytes_lo_hi += more[1]
                    v.packets_hi_lo += more[2]
                    v.bytes_hi_lo += more[3]
                packets = v.packets_lo_hi + v.packets_hi_lo
                last = max(v.last_ns, v.first_ns) + self._clock_offset
                previous = self._last_read.get(raw_key)
                if previous is not None and packets > previous[0]:
                    last = max(last, previous[1])
                seen[raw_key] = (packets, now)
                out.append(self._counters(k, v, version, last))
        self._last_read = seen
        return out

    def _counters(self, k: Structure, v: kr.FlowStats, version: int, last: int) -> FlowCounters:
        lo = self._addr(bytes(k.addr_lo), version)
        hi = self._addr(bytes(k.addr_hi), version)
        lo_side = (lo, k.port_lo, v.packets_lo_hi, v.bytes_lo_hi)
        hi_side = (hi, k.port_hi, v.packets_hi_lo, v.bytes_hi_lo)
        a, b = (hi_side, lo_side) if v.a_is_hi else (lo_side, hi_side)
        return FlowCounters(
            version, k.proto, a[0], b[0], a[1], b[1], a[2], a[3], b[2], b[3],
            v.first_ns + self._clock_offset, last, v.tcp_flags, bool(v.handshake_seen),
            self._names.get(v.ifindex, str(v.ifindex)),
        )  # fmt: skip

    def close(self) -> None:
        """Detach from every interface and unload."""
        for attachment in self._attachments:
            attachment.close()
        self._attachments.clear()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
            self._ring = None  # type: ignore[assignment]
        self._obj.close()

    def __enter__(self) -> KernelObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
