"""AF_PACKET backend: a raw packet socket on one interface, the same event records out.

Used when eBPF is not available. :class:`AfPacketObserver` opens an ``AF_PACKET`` raw socket
(optionally inside another network namespace, through :func:`netweave.netns.run_in`; the
socket stays in that namespace), attaches the classic BPF filter of
:mod:`netweave.capture.afpacket_filter` with ``SO_ATTACH_FILTER`` before it binds to the
interface (so nothing unfiltered is ever queued), and asks for ``PACKET_AUXDATA`` (VLAN tags
the kernel took out of the frame, wire length) and ``SO_TIMESTAMPNS`` (packet time).

:meth:`AfPacketObserver.poll` reads what is queued, puts the VLAN tags back into the frames,
decodes the batch with the capture-file decoder (:func:`netweave.capture.decode.decode`,
same field semantics as pcap replay), and keeps per-flow state in userspace
(:class:`LiveFlows`): a ``TcpHandshake`` per SYN segment, the ``FirstPayload`` of each
flow direction (one packet, at most ``payload_limit`` bytes, as the kernel observer does),
a ``FlowSeen`` for flows whose handshake was not seen (at most once per flow per
``FLOW_SEEN_INTERVAL_NS``). :meth:`AfPacketObserver.counters` returns cumulative
``FlowCounters``; they count only the packets the filter keeps (SYNs, payload segments,
UDP), not pure ACKs.
"""

from __future__ import annotations

import ctypes
import errno
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from netweave import netns
from netweave.capture.afpacket_filter import RET_K, handshake_filter, pack_program
from netweave.capture.decode import LINK_ETHERNET, LINK_RAW, decode
from netweave.capture.events import (
    FLOW_SEEN_INTERVAL_NS,
    KERNEL_PAYLOAD_LIMIT,
    PROTO_TCP,
    PROTO_UDP,
    TCP_SYN,
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.flows import AddressText, flow_keys, handshakes
from netweave.capture.tunnels import tunnel_name

__all__ = ["AfPacketError", "AfPacketGroup", "AfPacketObserver", "AfPacketStats", "LiveFlows"]

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_AUXDATA: Final = 8
PACKET_STATISTICS: Final = 6
PACKET_OUTGOING: Final = 4
SO_ATTACH_FILTER: Final = 26
SO_TIMESTAMPNS: Final = 35
SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
TP_STATUS_VLAN_VALID: Final = 0x10
TP_STATUS_VLAN_TPID_VALID: Final = 0x40
ARPHRD_ETHER: Final = 1
ARPHRD_LOOPBACK: Final = 772
ARPHRD_NONE: Final = 0xFFFE
ARPHRD_RAWIP: Final = 519
PAD: Final = 256
HEADER_ROOM: Final = 256
MAX_BATCH: Final = 4096
MAX_FLOWS: Final = 262_144
FLOW_IDLE_NS: Final = 300 * 1_000_000_000
_AUX = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_TIMESPEC = struct.Struct("=qq")
_STATS = struct.Struct("=II")  # struct tpacket_stats: packets, drops


class AfPacketError(OSError):
    """The packet socket could not be opened, filtered or bound; names the interface."""


@dataclass(frozen=True, slots=True)
class AfPacketStats:
    """What the observer has seen: frames read, VLAN tags restored, kernel drops."""

    frames: int
    vlan_tagged: int
    kernel_packets: int
    kernel_drops: int
    flows_tracked: int


class AfPacketObserver:
    """A filtered raw packet socket on ``interface`` (in ``namespace`` when given)."""

    def __init__(
        self,
        interface: str,
        *,
        namespace: str | None = None,
        payload_limit: int = KERNEL_PAYLOAD_LIMIT,
        rcvbuf: int = 4 << 20,
    ) -> None:
        self.interface = interface
        self.namespace = namespace
        self.payload_limit = payload_limit
        self.snaplen = HEADER_ROOM + payload_limit
        where = f"{interface} in namespace {namespace}" if namespace else interface
        self._where = where
        try:
            if namespace is None:
                opened = _open_socket(interface, self.snaplen, rcvbuf)
            else:
                opened = netns.run_in(namespace, _open_socket, interface, self.snaplen, rcvbuf)
        except OSError as exc:
            raise AfPacketError(
                exc.errno, f"cannot open an AF_PACKET socket on {where}: {exc.strerror or exc}"
            ) from exc
        self._sock, self._link, self._loopback = opened
        self.flows = LiveFlows(payload_limit=payload_limit, link=interface)
        self._frames = 0
        self._vlan = 0
        self._kernel_packets = 0
        self._kernel_drops = 0
        self._ancillary = socket.CMSG_SPACE(_AUX.size) + socket.CMSG_SPACE(_TIMESPEC.size)

    def fileno(self) -> int:
        """The socket's descriptor (for an event loop)."""
        return self._sock.fileno()

    def poll(self, timeout: float = 0.0, max_frames: int = MAX_BATCH) -> list[CaptureEvent]:
        """Wait up to ``timeout`` seconds for packets, then turn what is queued into events."""
        frames: list[tuple[bytes, int]] = []
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if ready:
            frames = self._drain(max_frames)
        if not frames:
            return []
        return self.flows.take(frames, self._link)

    def counters(self, *, changed_only: bool = True) -> list[FlowCounters]:
        """Cumulative counters of the flows that changed since the last call (or of all)."""
        return self.flows.counters(changed_only=changed_only)

    def flow_counters(self) -> list[FlowCounters]:
        """Cumulative counters of the flows that changed since the last call.

        Same name and meaning as the kernel observer's: the graph adds only the growth.
        """
        return self.flows.counters(changed_only=True)

    def stats(self) -> AfPacketStats:
        """Frames read, VLAN tags restored and the kernel's packet/drop counts so far."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
            packets, drops = _STATS.unpack(raw)
            self._kernel_packets += packets  # the kernel resets them at each read
            self._kernel_drops += drops
        except OSError:
            pass
        return AfPacketStats(
            frames=self._frames,
            vlan_tagged=self._vlan,
            kernel_packets=self._kernel_packets,
            kernel_drops=self._kernel_drops,
            flows_tracked=len(self.flows),
        )

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> AfPacketObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self, max_frames: int) -> list[tuple[bytes, int]]:
        frames: list[tuple[bytes, int]] = []
        sock = self._sock
        size = self.snaplen
        ancillary = self._ancillary
        while len(frames) < max_frames:
            try:
                data, cmsgs, _flags, address = sock.recvmsg(size, ancillary, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise AfPacketError(exc.errno, f"reading {self._where}: {exc.strerror}") from exc
            if self._loopback and address[2] == PACKET_OUTGOING:
                continue  # loopback shows every packet twice: keep the incoming copy
            stamp = 0
            for level, kind, payload in cmsgs:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUX.size:
                    status, _len, _snap, _mac, _net, tci, tpid = _AUX.unpack_from(payload)
                    if status & TP_STATUS_VLAN_VALID and self._link == LINK_ETHERNET:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
                        self._vlan += 1
                elif level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    stamp = sec * 1_000_000_000 + nsec
            frames.append((data, stamp or time.time_ns()))
        self._frames += len(frames)
        return frames


class AfPacketGroup:
    """AF_PACKET observers on several interfaces of one namespace, polled together.

    The drop-in for the kernel observer where eBPF is unavailable: ``poll``,
    ``flow_counters`` and ``close`` mean what they mean there. Each interface keeps its own
    flow state (records carry the interface in ``link``), as the kernel keys flows by
    interface too.
    """

    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        namespace: str | None = None,
        payload_limit: int = KERNEL_PAYLOAD_LIMIT,
    ) -> None:
        if not interfaces:
            raise AfPacketError(errno.EINVAL, "AF_PACKET: no interface to observe")
        self.observers: list[AfPacketObserver] = []
        try:
            for name in interfaces:
                self.observers.append(
                    AfPacketObserver(name, namespace=namespace, payload_limit=payload_limit)
                )
        except BaseException:
            self.close()
            raise

    def poll(self, timeout: float = 0.0) -> list[CaptureEvent]:
        """Wait up to ``timeout`` seconds for packets on any interface; return their events."""
        ready, _, _ = select.select(self.observers, [], [], max(timeout, 0.0))
        events: list[CaptureEvent] = []
        for observer in ready:
            events.extend(observer.poll(0.0))
        return events

    def flow_counters(self) -> list[FlowCounters]:
        """Counters of the flows that changed since the last call, every interface."""
        return [c for observer in self.observers for c in observer.flow_counters()]

    def stats(self) -> dict[str, AfPacketStats]:
        """Each interface's figures, by interface name."""
        return {o.interface: o.stats() for o in self.observers}

    def close(self) -> None:
        """Close every socket."""
        for observer in self.observers:
            observer.close()

    def __enter__(self) -> AfPacketGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_socket(interface: str, snaplen: int, rcvbuf: int) -> tuple[socket.socket, int, bool]:
    """Open, filter and bind the socket (runs inside the target namespace).

    The link type is only known once the socket is bound (``getsockname`` gives the
    hardware type; sysfs would show the host's namespace, not this thread's), so a
    drop-everything filter guards the socket until the real one replaces it.
    """
    socket.if_nametoindex(interface)  # a clear ENODEV for a wrong name, before anything else
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing queued yet
    try:
        _attach(sock, [(RET_K, 0, 0, 0)])
        sock.bind((interface, ETH_P_ALL))
        hatype = sock.getsockname()[3]
        if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            link, offset = LINK_ETHERNET, 14
        elif hatype in (ARPHRD_NONE, ARPHRD_RAWIP):
            link, offset = LINK_RAW, 0
        else:
            raise OSError(
                errno.EPROTONOSUPPORT,
                f"link type {hatype} of {interface} is not Ethernet or raw IP",
            )
        _attach(sock, handshake_filter(offset, snaplen))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except BaseException:
        sock.close()
        raise
    return sock, link, hatype == ARPHRD_LOOPBACK


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = ctypes.create_string_buffer(pack_program(program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


@dataclass(slots=True)
class _FlowState:
    """Userspace flow state (mutable, never leaves this module)."""

    key_ab: int  # directional hash of the first packet's direction
    a: str
    b: str
    a_port: int
    b_port: int
    ip_version: int
    protocol: int
    handshake: bool
    first_ns: int
    last_ns: int
    seen_ns: int  # last FlowSeen emitted (-1: never)
    payload_ab: bool = False
    payload_ba: bool = False
    pkts_ab: int = 0
    bytes_ab: int = 0
    pkts_ba: int = 0
    bytes_ba: int = 0
    flags: int = 0
    changed: bool = True
    tunnel: str = ""


class LiveFlows:
    """Per-flow state of a live packet source: frames in, deduplicated event records out."""

    def __init__(
        self,
        *,
        payload_limit: int = KERNEL_PAYLOAD_LIMIT,
        max_flows: int = MAX_FLOWS,
        link: str = "",
    ) -> None:
        self.payload_limit = payload_limit
        self.max_flows = max_flows
        self.link = link
        self.evicted = 0
        self._flows: dict[int, _FlowState] = {}
        self._frame = 0

    def __len__(self) -> int:
        return len(self._flows)

    def take(self, frames: list[tuple[bytes, int]], linktype: int) -> list[CaptureEvent]:
        """Decode one batch of ``(frame bytes, timestamp ns)`` and return its events in order."""
        image, offsets, lengths, stamps = _image(frames)
        count = len(frames)
        pk = decode(image, offsets, lengths, np.full(count, linktype, dtype=np.int64))
        addresses = AddressText()
        directional, undirected = flow_keys(pk)
        base = self._frame
        self._frame += count
        shakes, _problems = handshakes(pk, image, stamps, addresses)
        by_index = {h.frame - 1: h for h in shakes}
        events: list[CaptureEvent] = []
        sel = np.flatnonzero(pk.tcp_ok | pk.udp_ok)
        cols = {
            name: getattr(pk, name)[sel].tolist()
            for name in ("sport", "dport", "tcp_flags", "payload_off", "payload_cap",
                         "payload_wire", "ip_total", "ip_version", "tunnel")
        }  # fmt: skip
        tcp = pk.tcp_ok[sel].tolist()
        dkeys = directional[sel].tolist()
        ukeys = undirected[sel].tolist()
        times = stamps[sel].tolist()
        flows = self._flows
        for j, i in enumerate(sel.tolist()):
            ts = times[j]
            frame = base + i + 1
            is_tcp = tcp[j]
            flags = cols["tcp_flags"][j] if is_tcp else 0
            state = flows.get(ukeys[j])
            ends: tuple[str, str] | None = None
            if state is None:
                ends = addresses.endpoints(pk, i)
                state = self._new(ukeys[j], dkeys[j], ends[0], ends[1], cols, j, is_tcp, flags, ts)
                if state.seen_ns == ts:
                    events.append(self._seen(state, frame, flags))
            elif not state.handshake and ts - state.seen_ns >= FLOW_SEEN_INTERVAL_NS:
                state.seen_ns = ts
                events.append(self._seen(state, frame, flags))
            forward = dkeys[j] == state.key_ab
            size = cols["ip_total"][j]
            if forward:
                state.pkts_ab += 1
                state.bytes_ab += size
            else:
                state.pkts_ba += 1
                state.bytes_ba += size
            state.flags |= flags
            state.last_ns = max(state.last_ns, ts)
            state.changed = True
            shake = by_index.get(i)
            if shake is not None:
                events.append(_relabel(shake, frame, self.link))
            cap = cols["payload_cap"][j]
            if cap > 0 and not (state.payload_ab if forward else state.payload_ba):
                if forward:
                    state.payload_ab = True
                else:
                    state.payload_ba = True
                if ends is None:
                    ends = addresses.endpoints(pk, i)
                events.append(self._payload(image, ends, j, cols, ts, frame, is_tcp))
        return events

    def counters(self, *, changed_only: bool = True) -> list[FlowCounters]:
        """Cumulative ``FlowCounters`` per flow; drops flows idle for ``FLOW_IDLE_NS``."""
        out: list[FlowCounters] = []
        newest = max((s.last_ns for s in self._flows.values()), default=0)
        for key, s in list(self._flows.items()):
            if s.changed or not changed_only:
                out.append(
                    FlowCounters(
                        ip_version=s.ip_version,
                        protocol=s.protocol,
                        a=s.a,
                        b=s.b,
                        a_port=s.a_port,
                        b_port=s.b_port,
                        packets_a_to_b=s.pkts_ab,
                        bytes_a_to_b=s.bytes_ab,
                        packets_b_to_a=s.pkts_ba,
                        bytes_b_to_a=s.bytes_ba,
                        first_seen_ns=s.first_ns,
                        last_seen_ns=s.last_ns,
                        tcp_flags_seen=s.flags,
                        handshake_seen=s.handshake,
                        link=self.link,
                    )
                )
                s.changed = False
            elif newest - s.last_ns > FLOW_IDLE_NS:
                del self._flows[key]
        return out

    def _new(
        self,
        ukey: int,
        dkey: int,
        src: str,
        dst: str,
        cols: dict[str, list[int]],
        j: int,
        is_tcp: bool,
        flags: int,
        ts: int,
    ) -> _FlowState:
        if len(self._flows) >= self.max_flows:
            oldest = min(self._flows, key=lambda k: self._flows[k].last_ns)
            del self._flows[oldest]
            self.evicted += 1
        handshake = is_tcp and bool(flags & TCP_SYN)
        state = _FlowState(
            key_ab=dkey,
            a=src,
            b=dst,
            a_port=cols["sport"][j],
            b_port=cols["dport"][j],
            ip_version=cols["ip_version"][j],
            protocol=PROTO_TCP if is_tcp else PROTO_UDP,
            handshake=handshake,
            first_ns=ts,
            last_ns=ts,
            seen_ns=-1 if handshake else ts,
            tunnel=_tunnel_text(cols["tunnel"][j]),
        )
        self._flows[ukey] = state
        return state

    def _seen(self, s: _FlowState, frame: int, flags: int) -> FlowSeen:
        return FlowSeen(
            timestamp_ns=s.seen_ns,
            frame=frame,
            ip_version=s.ip_version,
            protocol=s.protocol,
            src=s.a,
            dst=s.b,
            src_port=s.a_port,
            dst_port=s.b_port,
            tcp_flags=flags,
            link=self.link,
            tunnel=s.tunnel,
        )

    def _payload(
        self,
        image: bytearray,
        ends: tuple[str, str],
        j: int,
        cols: dict[str, list[int]],
        ts: int,
        frame: int,
        is_tcp: bool,
    ) -> FirstPayload:
        off = cols["payload_off"][j]
        cap = min(cols["payload_cap"][j], self.payload_limit)
        src, dst = ends
        return FirstPayload(
            timestamp_ns=ts,
            frame=frame,
            last_frame=frame,
            ip_version=cols["ip_version"][j],
            protocol=PROTO_TCP if is_tcp else PROTO_UDP,
            src=src,
            dst=dst,
            src_port=cols["sport"][j],
            dst_port=cols["dport"][j],
            data=bytes(image[off : off + cap]),
            truncated=cols["payload_wire"][j] > cap,
            link=self.link,
            tunnel=_tunnel_text(cols["tunnel"][j]),
        )


def _relabel(shake: TcpHandshake, frame: int, link: str) -> TcpHandshake:
    """Number a handshake per observer (the decoder numbers frames within a batch).

    The record was built for this batch a moment ago and nothing else holds it yet, so it is
    completed in place rather than copied field by field.
    """
    object.__setattr__(shake, "frame", frame)
    if link:
        object.__setattr__(shake, "link", link)
    return shake


_TUNNEL_TEXT: dict[int, str] = {0: ""}


def _tunnel_text(code: int) -> str:
    text = _TUNNEL_TEXT.get(code)
    if text is None:
        text = _TUNNEL_TEXT[code] = tunnel_name(code)
    return text


def _image(
    frames: list[tuple[bytes, int]],
) -> tuple[bytearray, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Frames laid end to end plus zero padding, with their offsets, lengths and times."""
    lengths = [len(data) for data, _ts in frames]
    offsets = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        offsets[1:] = np.cumsum(lengths[:-1])
    image = bytearray(b"".join(data for data, _ts in frames))
    image.extend(bytes(PAD))
    stamps = np.array([ts for _data, ts in frames], dtype=np.int64)
    return image, offsets, np.array(lengths, dtype=np.int64), stamps
