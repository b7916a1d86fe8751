"""AF_PACKET backend in the test bed: real servers, real clients, the graph equals the traffic.

A client namespace talks to a server namespace over a veth pair: curl over IPv4 and IPv6 to
Python's http.server (dual stack), a DNS query to dnsmasq, and a long-lived TCP connection
opened (from a low source port, to a high server port) before the observer started. The
observer runs on the server's veth inside the server namespace, with tcpdump beside it as
the reference: the graph from AF_PACKET equals the connections the test made, the graph
from tcpdump's capture replayed through the pcap reader is the same, and the filter passed
exactly the packets tshark counts as SYN, payload or UDP in tcpdump's capture.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netweave import netns
from netweave.capture.afpacket import AfPacketGroup, AfPacketObserver, LiveFlows
from netweave.capture.decode import LINK_ETHERNET, LINK_RAW
from netweave.capture.events import CaptureEvent
from netweave.capture.pcapfile import read_capture
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import Inventory, inventory_from
from netweave.graph.model import GraphView

from testbed import TestBed

HTTP_PORT = 8080
ECHO_PORT = 47000
CLIENT_LOW_PORT = 700  # lower than the server's port: only the listener list gets it right
ECHO_SERVER = (
    "import socket\n"
    f"s = socket.create_server(('0.0.0.0', {ECHO_PORT}))\n"
    "c, _ = s.accept()\n"
    "for d in iter(lambda: c.recv(4096), b''):\n"
    "    c.sendall(d)\n"
)


@dataclass(frozen=True, slots=True)
class _Listener:
    """A listener with the socket table's field names (what netweave.sockets reports)."""

    proto: str
    address: str
    port: int
    comm: str | None


def _dns_query(name: str) -> bytes:
    header = struct.pack("!HHHHHH", 0x4E57, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def _ask_dns(server: str, name: str, timeout: float) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(_dns_query(name), (server, 53))
        return sock.recv(512)


def _wait_dns(bed: TestBed, ns: str, server: str) -> None:
    deadline = time.monotonic() + 10
    with netns.enter(bed.ns_path(ns)) as worker:
        while True:
            try:
                worker.call(_ask_dns, server, "ready.example.test", 0.3)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _collect(
    observer: AfPacketObserver | AfPacketGroup, quiet: float = 0.6, limit: float = 10.0
) -> list[object]:
    """Poll until nothing arrived for ``quiet`` seconds (at most ``limit`` seconds)."""
    events: list[object] = []
    deadline = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        got = observer.poll(0.1)
        if got:
            events.extend(got)
            last = time.monotonic()
    return events


def _edges(view: GraphView) -> set[tuple[str, str, int, str, bool]]:
    return {(e.client, e.server, e.port, e.protocol, e.inferred) for e in view.edges}


@contextlib.contextmanager
def _long_lived(bed: TestBed, ns: str, server: str) -> Iterator[socket.socket]:
    def connect() -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", CLIENT_LOW_PORT))
            sock.settimeout(5)
            try:
                sock.connect((server, ECHO_PORT))
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    with netns.enter(bed.ns_path(ns)) as worker:
        sock = worker.call(connect)
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.root
def test_afpacket_graph_equals_the_connections_made(testbed: TestBed) -> None:
    for tool in ("curl", "dnsmasq", "tcpdump", "tshark"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/bootstrap.sh --test installs it)")
    bed = testbed
    cli, srv = bed.add_ns("cli"), bed.add_ns("srv")
    link = bed.link(cli, srv)
    bed.start(srv, "http", [sys.executable, "-m", "http.server", "--bind", "::", str(HTTP_PORT),
                            "--directory", str(bed.tmp)])  # fmt: skip
    bed.start(srv, "echo", [sys.executable, "-c", ECHO_SERVER])
    bed.start(srv, "dnsmasq", ["dnsmasq", "--no-daemon", "--port", "53", "--listen-address",
                               link.ipv4_b, "--bind-interfaces", "--no-resolv", "--no-hosts",
                               "--conf-file=/dev/null", f"--pid-file={bed.tmp}/dnsmasq.pid",
                               "--address=/example.test/10.1.2.3"])  # fmt: skip
    bed.wait_tcp(cli, link.ipv4_b, HTTP_PORT)
    bed.wait_tcp(cli, link.ipv6_b, HTTP_PORT)
    _wait_dns(bed, cli, link.ipv4_b)
    with _long_lived(bed, cli, link.ipv4_b) as held:
        held.sendall(b"before the observer")
        assert held.recv(64) == b"before the observer"
        pcap = bed.tmp / "reference.pcap"
        dump = bed.capture(srv, link.dev_b, pcap)
        with AfPacketObserver(link.dev_b, namespace=srv) as observer:
            time.sleep(0.3)
            bed.run(cli, ["curl", "-sf", "-o", "/dev/null", f"http://{link.ipv4_b}:{HTTP_PORT}/"])
            bed.run(cli, ["curl", "-sf", "-o", "/dev/null",
                          f"http://[{link.ipv6_b}]:{HTTP_PORT}/"])  # fmt: skip
            with netns.enter(bed.ns_path(cli)) as worker:
                answer = worker.call(_ask_dns, link.ipv4_b, "www.example.test", 3.0)
            assert socket.inet_aton("10.1.2.3") in answer  # dnsmasq really answered
            held.sendall(b"after the observer started")
            assert held.recv(64) == b"after the observer started"
            events = _collect(observer)
            counters = observer.counters()
            stats = observer.stats()
            time.sleep(0.3)
            bed.stop(dump)

    inventory = inventory_from(
        listeners=[
            _Listener("tcp", "::", HTTP_PORT, "python3"),
            _Listener("tcp", "0.0.0.0", ECHO_PORT, "python3"),
            _Listener("udp", link.ipv4_b, 53, "dnsmasq"),
        ],
        local_ips=[link.ipv4_b, link.ipv6_b],
    )
    expected = {
        (link.ipv4_a, link.ipv4_b, HTTP_PORT, "tcp", False),
        (link.ipv6_a, link.ipv6_b, HTTP_PORT, "tcp", False),
        (link.ipv4_a, link.ipv4_b, 53, "udp", False),
        (link.ipv4_a, link.ipv4_b, ECHO_PORT, "tcp", True),  # opened before the observer
    }
    live = _graph(inventory, [*events, *counters])  # type: ignore[list-item]
    assert _edges(live) == expected
    by_port = {e.port: e for e in live.edges if e.client == link.ipv4_a}
    assert by_port[ECHO_PORT].server_process == "python3"
    assert by_port[53].server_process == "dnsmasq"
    assert by_port[HTTP_PORT].bytes_to_client > 0 and by_port[ECHO_PORT].packets_to_server == 1

    reference = read_capture(pcap)
    assert reference.damage is None
    assert _edges(_graph(inventory, [*reference.events(), *reference.counters])) == expected

    # The kernel filter passed exactly the SYNs, payload segments and UDP datagrams.
    kept = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn==1 || tcp.len>0 || udp", "-T", "fields",
         "-e", "frame.number"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert stats.frames == len(kept)
    # Counters count exactly those packets: bytes per direction equal tshark's IP lengths.
    sizes = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", f"tcp.port=={HTTP_PORT} && ip && (tcp.flags.syn==1 || "
         "tcp.len>0)", "-T", "fields", "-e", "ip.src", "-e", "ip.len"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    pairs = list(zip(sizes[::2], map(int, sizes[1::2]), strict=True))
    http4 = by_port[HTTP_PORT]
    assert http4.bytes_to_server == sum(n for src, n in pairs if src == link.ipv4_a)
    assert http4.bytes_to_client == sum(n for src, n in pairs if src == link.ipv4_b)
    assert http4.packets_to_server == sum(1 for src, _n in pairs if src == link.ipv4_a)
    assert stats.kernel_drops == 0
    assert reference.packets > stats.frames  # pure ACKs (and ND, ...) stayed in the kernel


def _graph(inventory: Inventory, events: list[CaptureEvent]) -> GraphView:
    graph = GraphAccumulator()
    graph.set_inventory(inventory, host="srv")
    graph.feed_many(events)
    return graph.snapshot()


def _tagged_segment(src: str, dst: str, sport: int, dport: int, *, flags: int,
                    payload: bytes = b"") -> bytes:  # fmt: skip
    """An Ethernet frame with an 802.1Q tag (VLAN 100) around an IPv4 TCP segment."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 64240, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x81\x00\x00\x64\x08\x00" + ip + tcp


def _send_frames(interface: str, frames: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((interface, 0))
        for frame in frames:
            sock.send(frame)


@pytest.mark.root
def test_afpacket_reads_vlan_tags_from_auxdata_and_from_the_frame(testbed: TestBed) -> None:
    # This kernel has no 802.1Q devices (CONFIG_VLAN_8021Q unset), so tagged frames are sent
    # raw: on receive the kernel takes the tag out of the frame into the socket buffer
    # (reported through PACKET_AUXDATA); on send the tag stays in the frame.
    bed = testbed
    a, b = bed.add_ns("va"), bed.add_ns("vb")
    link = bed.link(a, b)
    vlan_a, vlan_b = "192.0.2.1", "192.0.2.2"  # TEST-NET-1: these frames never leave the bed
    with AfPacketObserver(link.dev_b, namespace=b) as observer:
        netns.run_in(bed.ns_path(a), _send_frames, link.dev_a, [
            _tagged_segment(vlan_a, vlan_b, 40000, 8081, flags=0x002),
            _tagged_segment(vlan_a, vlan_b, 40000, 8081, flags=0x018, payload=b"GET /\r\n"),
        ])  # fmt: skip
        netns.run_in(bed.ns_path(b), _send_frames, link.dev_b, [
            _tagged_segment(vlan_b, vlan_a, 8081, 40000, flags=0x012),
        ])  # fmt: skip
        # Nothing answers these frames, so wait for all three rather than for quiet: on a
        # loaded machine the receive side (softirq) can lag the sender by a long while.
        events: list[CaptureEvent] = []
        deadline = time.monotonic() + 15
        while len(events) < 3 and time.monotonic() < deadline:
            events.extend(observer.poll(0.2))
        counters = observer.counters()
        stats = observer.stats()
    view = _graph(Inventory(), [*events, *counters])  # type: ignore[list-item]
    assert _edges(view) == {(vlan_a, vlan_b, 8081, "tcp", False)}
    # The sent SYN-ACK is tapped at once; the received frames may come after it.
    kinds = sorted((type(e).__name__, getattr(e, "tcp_flags", 0)) for e in events)
    assert kinds == [("FirstPayload", 0), ("TcpHandshake", 0x002), ("TcpHandshake", 0x012)]
    assert stats.frames == 3
    assert stats.vlan_tagged == 2  # the two received frames; the sent one kept its tag inline


@pytest.mark.root
def test_afpacket_names_a_missing_interface(testbed: TestBed) -> None:
    ns = testbed.add_ns("lonely")
    with pytest.raises(OSError, match="cannot open an AF_PACKET socket on nope0 in namespace"):
        AfPacketObserver("nope0", namespace=ns)


@st.composite
def _tcp_frame(draw: st.DrawFn) -> bytes:
    """Ethernet/IPv4/TCP with arbitrary flags, offsets and lengths (often inconsistent)."""
    options = draw(st.binary(max_size=40))
    doff = draw(st.integers(0, 15))
    payload = draw(st.binary(max_size=40))
    tcp = struct.pack("!HHIIBBHHH", draw(st.sampled_from([80, 443, 40000])),
                      draw(st.sampled_from([80, 443, 40001])), draw(st.integers(0, 2**32 - 1)),
                      0, doff << 4, draw(st.integers(0, 255)), 1024, 0, 0)  # fmt: skip
    body = tcp + options + payload
    total = draw(st.one_of(st.just(20 + len(body)), st.integers(0, 0xFFFF)))
    ip = struct.pack("!BBHHHBBH4s4s", draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44])), 0, total,
                     0, draw(st.sampled_from([0, 0x4000, 0x2001])), 64, 6, 0,
                     bytes([10, 0, 0, draw(st.integers(1, 3))]), bytes([10, 0, 0, 9]))  # fmt: skip
    return b"\x02" * 12 + b"\x08\x00" + ip + body[: draw(st.integers(0, len(body)))]


_frame = st.one_of(
    st.binary(max_size=120),
    _tcp_frame(),
    st.builds(
        lambda ip, tail: b"\x02" * 12 + b"\x08\x00" + ip + tail,
        st.binary(min_size=0, max_size=24).map(lambda b: b"\x45" + b[1:]),
        st.binary(max_size=80),
    ),
    st.builds(
        lambda head, tail: b"\x02" * 12 + b"\x86\xdd\x60" + head + tail,
        st.binary(min_size=0, max_size=40),
        st.binary(max_size=80),
    ),
)


@pytest.mark.parametrize("linktype", [LINK_ETHERNET, LINK_RAW])
@settings(max_examples=150, deadline=None)
@given(frames=st.lists(_frame, min_size=1, max_size=8))
def test_live_flows_survive_any_frames(linktype: int, frames: list[bytes]) -> None:
    flows = LiveFlows()
    events = flows.take(
        [(f, 1_700_000_000_000_000_000 + i) for i, f in enumerate(frames)], linktype
    )
    flows.counters()
    for event in events:
        assert event.frame >= 1


@pytest.mark.root
def test_afpacket_group_on_loopback_and_a_veth_sees_each_packet_once(testbed: TestBed) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (scripts/bootstrap.sh --test installs it)")
    bed = testbed
    cli, srv = bed.add_ns("gc"), bed.add_ns("gs")
    link = bed.link(cli, srv)
    bed.start(srv, "http", [sys.executable, "-m", "http.server", "--bind", "::", "8082",
                            "--directory", str(bed.tmp)])  # fmt: skip
    bed.wait_tcp(srv, "127.0.0.1", 8082)
    with AfPacketGroup(["lo", link.dev_b], namespace=srv) as group:
        for url in ("http://127.0.0.1:8082/", "http://[::1]:8082/"):
            bed.run(srv, ["curl", "-sf", "-o", "/dev/null", url])
        bed.run(cli, ["curl", "-sf", "-o", "/dev/null", f"http://{link.ipv4_b}:8082/"])
        events = _collect(group)
        counters = group.flow_counters()
    # Loopback hands every packet to a packet socket twice (out and in): one copy is kept.
    kinds = [(type(e).__name__, getattr(e, "tcp_flags", None), e.link) for e in events]
    for link_name, flows in (("lo", 2), (link.dev_b, 1)):
        assert kinds.count(("TcpHandshake", 0x002, link_name)) == flows
        assert kinds.count(("TcpHandshake", 0x012, link_name)) == flows
        assert kinds.count(("FirstPayload", None, link_name)) == 2 * flows
    view = _graph(Inventory(), [*events, *counters])  # type: ignore[list-item]
    assert _edges(view) == {("127.0.0.1", "127.0.0.1", 8082, "tcp", False),
                            ("::1", "::1", 8082, "tcp", False),
                            (link.ipv4_a, link.ipv4_b, 8082, "tcp", False)}  # fmt: skip
    assert all(e.flows == 1 and e.packets_to_server == 2 for e in view.edges)
