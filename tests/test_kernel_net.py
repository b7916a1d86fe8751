"""Real programs on real veths in the test bed: XDP drops, tcx and tc records, pins."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from netweave import netns
from netweave.kernel import BpfObject, Link, Map, RingBuffer, TcFilter

from test_kernel_load import TestRecord
from testbed import TestBed


def _udp_socket(family: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    return s


def _deliveries(bed: TestBed, link, port: int, count: int, *, v6: bool = False) -> int:
    """Send ``count`` datagrams from ns_a to ns_b:port; return how many arrived."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    dst = link.ipv6_b if v6 else link.ipv4_b
    rx = netns.run_in(link.ns_b, _udp_socket, family)
    tx = netns.run_in(link.ns_a, _udp_socket, family)
    with rx, tx:
        rx.bind((dst, port))
        for i in range(count):
            tx.sendto(f"datagram {i}".encode(), (dst, port))
        got = 0
        try:
            while got < count:
                rx.recvfrom(100)
                got += 1
        except TimeoutError:
            pass
    return got


def _ifindex(ns: str, dev: str) -> int:
    return netns.run_in(ns, socket.if_nametoindex, dev)


def test_xdp_on_veth_drops_what_it_should(testbed: TestBed, test_objects: Path) -> None:
    a, b = testbed.add_ns("a"), testbed.add_ns("b")
    link = testbed.link(a, b)
    testbed.run(a, ["ping", "-c", "1", "-W", "2", link.ipv4_b])  # neighbours resolved
    testbed.run(a, ["ping", "-6", "-c", "1", "-W", "2", link.ipv6_b])
    with BpfObject.from_file(test_objects / "test_xdp_drop.o") as obj:
        obj.set_rodata(drop_port=7000)
        obj.load()
        prog = obj.programs["xdp_drop_udp_port"]
        attach = netns.run_in(b, prog.attach_xdp, _ifindex(b, link.dev_b), "native")
        with attach:
            assert _deliveries(testbed, link, 7000, 5) == 0
            assert _deliveries(testbed, link, 7000, 3, v6=True) == 0
            assert _deliveries(testbed, link, 7001, 5) == 5
            testbed.run(a, ["ping", "-c", "2", "-i", "0.2", "-W", "2", link.ipv4_b])
            dropped = obj.map("dropped").lookup(bytes(4))
            assert dropped is not None and int.from_bytes(dropped, "little") == 8
        # Closing the (unpinned) link detached the program: the port is open again.
        assert _deliveries(testbed, link, 7000, 3) == 3


@pytest.mark.parametrize("hook", ["tcx", "classic tc"])
def test_tc_observer_delivers_ring_buffer_records(
    testbed: TestBed, test_objects: Path, hook: str
) -> None:
    a, b = testbed.add_ns("a"), testbed.add_ns("b")
    link = testbed.link(a, b)
    with BpfObject.from_file(test_objects / "test_tc_records.o") as obj:
        obj.load()
        obj.check_record("nw_test_rec", TestRecord)
        prog = obj.programs["tc_udp_records"]
        ifindex = _ifindex(b, link.dev_b)
        attach: Link | TcFilter
        if hook == "tcx":
            attach = netns.run_in(b, prog.attach_tcx, ifindex, ingress=True, first=True)
        else:
            attach = netns.run_in(b, TcFilter, ifindex, True, prog.fd, prog.name)
        with attach, RingBuffer(obj.map("records"), obj.map("record_drops")) as ring:
            assert _deliveries(testbed, link, 9999, 20) == 20
            records: list[bytes] = []
            deadline = time.monotonic() + 5
            while len(records) < 20 and time.monotonic() < deadline:
                records += ring.poll(timeout=0.5)
            assert ring.dropped == 0
    decoded = [TestRecord.from_buffer_copy(r) for r in records]
    assert len(decoded) == 20
    for rec in decoded:
        assert rec.ifindex == ifindex and rec.proto == 17
        assert str(ipaddress.IPv4Address(rec.saddr.to_bytes(4, "little"))) == link.ipv4_a
        assert str(ipaddress.IPv4Address(rec.daddr.to_bytes(4, "little"))) == link.ipv4_b
        assert socket.ntohs(rec.dport) == 9999
    assert [r.ts_ns for r in decoded] == sorted(r.ts_ns for r in decoded)


_PINNER = textwrap.dedent(
    """
    import sys
    from netweave.kernel import BpfObject
    obj = BpfObject.from_file(sys.argv[1])
    obj.load()
    m = obj.map("dropped")
    m.update(bytes(4), (424242).to_bytes(8, "little"))
    m.pin(sys.argv[2])
    print("pinned", flush=True)
    sys.stdin.read()
    """
)


def test_pinned_map_survives_its_process_being_killed(
    test_objects: Path, pin_dir: Path, tmp_path: Path
) -> None:
    pin = pin_dir / "dropped"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PINNER, str(test_objects / "test_xdp_drop.o"), str(pin)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "NETWEAVE_AUDIT_LOG": str(tmp_path / "pinner-audit.jsonl")},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "pinned"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    with Map.from_pin(pin) as survivor:
        value = survivor.lookup(bytes(4))
        assert value is not None and int.from_bytes(value, "little") == 424242
        survivor.update(bytes(4), (7).to_bytes(8, "little"))
    with Map.from_pin(pin) as again:
        assert again.lookup(bytes(4)) == (7).to_bytes(8, "little")
