"""The live eBPF backend: the kernel flow observer on tcx (or tc) hooks, decoded into events.

``KernelObserver`` loads ``bpf/observer.bpf.c``, checks every record layout against the
object's BTF, attaches the observer first in the chain on ingress and egress of each chosen
interface (inside another network namespace when asked), and turns ring-buffer records into
the records of :mod:`netweave.capture.events`. Flow counters come from the kernel's LRU flow
table on demand.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from ctypes import Structure, sizeof
from dataclasses import dataclass

from pyroute2 import IPRoute

from netweave.capture import kernel_records as kr
from netweave.capture.events import (
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.kernel import BpfObject, Link, RingBuffer, TcFilter
from netweave.netns import run_in

log = logging.getLogger(__name__)
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

_DECODERS: dict[int, type[Structure]] = {
    kr.NW_EV_HANDSHAKE: kr.HandshakeRecord,
    kr.NW_EV_PAYLOAD: kr.PayloadRecord,
    kr.NW_EV_FLOW_SEEN: kr.FlowSeenRecord,
}


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

    return run_in(netns, listing) if netns else listing()


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
        self._obj.set_max_entries("flows", flow_entries)
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
        self._flows = self._obj.map("flows")
        self._frame = 0
        self.malformed = 0
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        self._text: dict[bytes, str] = {}

    def _resolve(self, names: Sequence[str]) -> list[Interface]:
        def lookup() -> list[Interface]:
            return [Interface(socket.if_nametoindex(n), n) for n in names]

        return run_in(self.netns, lookup) if self.netns else lookup()

    def _attach(self, ifindex: int, ingress: bool) -> Link | TcFilter:
        def attach() -> Link | TcFilter:
            return self._prog.attach_tc(ifindex, ingress=ingress, first=True)

        return run_in(self.netns, attach) if self.netns else attach()

    # -- events -------------------------------------------------------------------------
    def fileno(self) -> int:
        """Readable when events are waiting (for select/epoll loops)."""
        return self._ring.fileno()

    def poll(self, timeout: float | None = None) -> list[CaptureEvent]:
        """Wait up to ``timeout`` seconds for events and return every one ready."""
        return self.decode(self._ring.poll(timeout))

    @property
    def dropped(self) -> int:
        """Events the kernel could not queue because the ring buffer was full."""
        return self._ring.dropped

    def decode(self, records: Iterable[bytes]) -> list[CaptureEvent]:
        """Turn raw ring-buffer records into events; wrong-sized records are counted, skipped."""
        out: list[CaptureEvent] = []
        for raw in records:
            if len(raw) < sizeof(kr.EventHeader):
                self._malformed(raw, "shorter than its header")
                continue
            hdr = kr.EventHeader.from_buffer_copy(raw)
            record = _DECODERS.get(hdr.kind)
            if record is None or hdr.size != sizeof(record) or len(raw) != hdr.size:
                self._malformed(raw, f"kind {hdr.kind} of {len(raw)} bytes")
                continue
            self._frame += 1
            out.append(self._event(record.from_buffer_copy(raw)))
        return out

    def _malformed(self, raw: bytes, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning(
                "observer: dropping a record of unexpected size (%s); counting the rest", what
            )

    def _event(self, rec: Structure) -> CaptureEvent:
        ep = rec.ep
        ts = rec.hdr.ts_ns + self._clock_offset
        link = self._names.get(rec.hdr.ifindex, str(rec.hdr.ifindex))
        src, dst = self._addr(ep.src, ep.ip_version), self._addr(ep.dst, ep.ip_version)
        if isinstance(rec, kr.HandshakeRecord):
            return TcpHandshake(
                ts, self._frame, ep.ip_version, src, dst, ep.src_port, ep.dst_port, rec.ttl,
                rec.tos, rec.ip_flags, rec.ip_id, rec.flow_label, rec.ip_options_length,
                rec.ip_total_length, rec.seq, rec.ack, rec.window, rec.tcp_flags, rec.urgent,
                bytes(rec.options[: rec.options_length]), rec.payload_length, link,
            )  # fmt: skip
        if isinstance(rec, kr.PayloadRecord):
            return FirstPayload(
                ts, self._frame, self._frame, ep.ip_version, ep.proto, src, dst, ep.src_port,
                ep.dst_port, bytes(rec.data[: rec.captured]), rec.length > rec.captured, link,
            )  # fmt: skip
        assert isinstance(rec, kr.FlowSeenRecord)
        return FlowSeen(ts, self._frame, ep.ip_version, ep.proto, src, dst, ep.src_port,
                        ep.dst_port, rec.tcp_flags, link)  # fmt: skip

    def _addr(self, raw: object, version: int) -> str:
        key = bytes(raw)[: 4 if version == 4 else 16]  # type: ignore[call-overload]
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
        """Every flow in the kernel's table, direction ``a`` being its first sender."""
        out = []
        for raw_key, raw_val in self._flows.items():
            k = kr.FlowKey.from_buffer_copy(raw_key)
            v = kr.FlowStats.from_buffer_copy(raw_val)
            lo, hi = self._addr(k.addr_lo, k.ip_version), self._addr(k.addr_hi, k.ip_version)
            sides = (
                (lo, hi, k.port_lo, k.port_hi, v.packets_lo_hi, v.bytes_lo_hi, v.packets_hi_lo,
                 v.bytes_hi_lo)
                if not v.a_is_hi
                else (hi, lo, k.port_hi, k.port_lo, v.packets_hi_lo, v.bytes_hi_lo,
                      v.packets_lo_hi, v.bytes_lo_hi)
            )  # fmt: skip
            out.append(
                FlowCounters(
                    k.ip_version,
                    k.proto,
                    *sides,
                    v.first_ns + self._clock_offset,
                    v.last_ns + self._clock_offset,
                    v.tcp_flags,
                    bool(v.handshake_seen),
                    self._names.get(k.ifindex, str(k.ifindex)),
                )
            )
        return out

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
