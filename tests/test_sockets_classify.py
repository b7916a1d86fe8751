"""Every socket of a real test bed is classified the way the bed was set up.

Two namespaces joined by a veth pair: ``srv`` runs Debian's nginx (a dual-stack listener on
[::]:8080 with keep-alive off, and 8081 bound to one IPv4 address), redis-server (0.0.0.0)
and memcached (TCP and UDP 11211); ``cli`` runs curl and redis-cli against them, plus UDP
sockets made by this test. ``ss`` and pyroute2's DiagSocket, run in the same namespaces,
are the reference peers for the raw table and process attribution.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from pyroute2 import DiagSocket

from netweave import netns
from netweave.sockets import diag
from netweave.sockets.hostmap import HostMap
from netweave.sockets.records import Direction, Snapshot, Socket, TcpState
from netweave.sockets.snapshot import take_snapshot

from testbed import TestBed

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen [::]:8080 ipv6only=off;
        keepalive_timeout 0;
        root {tmp}/www;
        location = /close {{ return 444; }}
        # The server paces big.bin: curl's own --limit-rate lets a buffered burst through.
        location = /big.bin {{ limit_rate 10k; }}
    }}
    server {{
        listen {addr}:8081;
        root {tmp}/www;
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Bed:
    """The namespaces, addresses and sockets the tests look for."""

    bed: TestBed
    srv: str
    cli: str
    srv4: str
    srv6: str
    cli4: str
    udp_ephemeral_port: int
    udp_low_port: int
    udp_connected_port: int
    pinned_client_port: int
    snapshot: Snapshot


def _wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.skip("the socket test bed needs root to create namespaces")
    tb = TestBed()
    kept: list[socket.socket] = []
    try:
        srv = tb.add_ns("srv")
        cli = tb.add_ns("cli")
        link = tb.link(srv, cli)
        www = tb.tmp / "www"
        www.mkdir()
        (www / "small.txt").write_text("hello\n")
        (www / "big.bin").write_bytes(b"\0" * (16 << 20))
        conf = tb.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tb.tmp, addr=link.ipv4_a))
        tb.start(srv, "nginx", ["nginx", "-c", str(conf), "-p", str(tb.tmp)])
        # redis-server runs in a cgroup of its own, as a container's process would.
        redis_argv = ["redis-server", "--port", "6390", "--bind", "0.0.0.0", "--save", "",
                      "--appendonly", "no", "--protected-mode", "no",
                      "--dir", str(tb.tmp)]  # fmt: skip
        tb.start(srv, "redis", redis_argv, cgroup=tb.cgroup("redis"))
        tb.start(srv, "memcached", ["memcached", "-u", "root", "-l", link.ipv4_a,
                                    "-p", "11211", "-U", "11211", "-m", "16"])  # fmt: skip
        tb.wait_tcp(cli, link.ipv4_a, 8080)
        tb.wait_tcp(cli, link.ipv6_a, 8080)
        tb.wait_tcp(cli, link.ipv4_a, 8081)
        tb.wait_tcp(cli, link.ipv4_a, 6390)
        tb.wait_tcp(cli, link.ipv4_a, 11211)

        # Long-lived client connections: slow downloads and a redis subscription.
        base4 = f"http://{link.ipv4_a}:8080"
        base6 = f"http://[{link.ipv6_a}]:8080"
        tb.start(cli, "curl-slow4", ["curl", "-s", "-o", "/dev/null", "--limit-rate", "20k",
                                     f"{base4}/big.bin"])  # fmt: skip
        tb.start(cli, "curl-slow6", ["curl", "-s", "-o", "/dev/null", "--limit-rate", "20k",
                                     f"{base6}/big.bin"])  # fmt: skip
        tb.start(cli, "sub", ["redis-cli", "-h", link.ipv4_a, "-p", "6390", "SUBSCRIBE", "news"])
        # Local connections inside srv: over loopback and over srv's own veth address.
        tb.start(srv, "sub-lo", ["redis-cli", "-h", "127.0.0.1", "-p", "6390", "SUBSCRIBE", "a"])
        tb.start(srv, "sub-own", ["redis-cli", "-h", link.ipv4_a, "-p", "6390", "SUBSCRIBE", "b"])
        # Short requests leave TIME_WAIT: nginx closes first on /close (444: close without a
        # reply), curl closes first on 8081 (keep-alive on).
        tb.run(cli, ["curl", "-s", "-o", "/dev/null", f"{base4}/close"], check=False)
        tb.run(cli, ["curl", "-sf", "-o", "/dev/null", f"http://{link.ipv4_a}:8081/small.txt"])

        with netns.enter(tb.ns_path(cli)) as worker:
            ephemeral = worker.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            ephemeral.bind(("0.0.0.0", 0))
            low = worker.call(socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
            low.bind(("::", 5353))
            connected = worker.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            connected.connect((link.ipv4_a, 11211))
            connected.send(b"\0\1\0\0\0\1\0\0version\r\n")
            kept += [ephemeral, low, connected]
        with netns.enter(tb.ns_path(srv)) as worker:
            # A client socket on port 8081 of another address: 8081 listens on the veth
            # address only, so this is outbound (Netdata's port-only rule says inbound).
            pinned = worker.call(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
            pinned.bind(("127.0.0.1", 8081))
            pinned.connect(("127.0.0.1", 6390))
            kept.append(pinned)

        def settled() -> bool:
            snap = take_snapshot()
            srv_ns = tb.ns_inode(srv)
            cli_ns = tb.ns_inode(cli)
            established = [
                s for s in snap.sockets
                if s.netns == cli_ns and s.raw.proto == "tcp"
                and s.raw.state == TcpState.ESTABLISHED and s.process is not None
            ]  # fmt: skip
            waits = [s for s in snap.sockets if s.raw.state == TcpState.TIME_WAIT
                     and s.netns in (srv_ns, cli_ns)]  # fmt: skip
            return len(established) >= 3 and len(waits) >= 2

        _wait_for(settled, "curl and redis-cli connections and TIME_WAIT sockets")
        yield Bed(
            tb, srv, cli, link.ipv4_a, link.ipv6_a, link.ipv4_b,
            ephemeral.getsockname()[1], 5353, connected.getsockname()[1],
            pinned.getsockname()[1], take_snapshot(),
        )  # fmt: skip
    finally:
        for sock in kept:
            sock.close()
        tb.close()


def _in(bed: Bed, ns: str) -> list[Socket]:
    inode = bed.bed.ns_inode(ns)
    return [s for s in bed.snapshot.sockets if s.netns == inode]


def _one(sockets: list[Socket], what: str, **want: object) -> Socket:
    found = [s for s in sockets if all(getattr(s.raw, k) == v for k, v in want.items())]
    assert found, f"no socket for {what} ({want}) among {[s.raw for s in sockets]}"
    return found[0]


def _all(sockets: list[Socket], **want: object) -> list[Socket]:
    return [s for s in sockets if all(getattr(s.raw, k) == v for k, v in want.items())]


def test_listeners(bed: Bed) -> None:
    srv = _in(bed, bed.srv)
    nginx = _one(srv, "nginx dual-stack", proto="tcp", local_port=8080, state=TcpState.LISTEN)
    assert nginx.raw.family == 6
    assert nginx.raw.local_ip == "::"
    assert nginx.raw.v6only is False
    assert nginx.direction is Direction.LISTEN
    assert nginx.process is not None
    assert nginx.process.comm == "nginx"
    bound = _one(srv, "nginx 8081", proto="tcp", local_port=8081, state=TcpState.LISTEN)
    assert bound.raw.local_ip == bed.srv4
    redis = _one(srv, "redis", proto="tcp", local_port=6390, state=TcpState.LISTEN)
    assert redis.direction is Direction.LISTEN
    assert redis.process is not None
    assert redis.process.comm == "redis-server"
    assert "6390" in redis.process.cmdline
    assert redis.process.cgroup == f"/{bed.bed.prefix}-redis"
    assert nginx.process.cgroup != redis.process.cgroup
    udp = _one(srv, "memcached udp", proto="udp", local_port=11211)
    assert udp.direction is Direction.LISTEN
    assert udp.process is not None
    assert udp.process.comm == "memcached"


def test_curl_and_redis_cli_are_outbound_and_their_servers_inbound(bed: Bed) -> None:
    cli, srv = _in(bed, bed.cli), _in(bed, bed.srv)
    est = TcpState.ESTABLISHED
    curls = _all(cli, proto="tcp", remote_port=8080, state=est)
    assert {c.raw.family for c in curls} == {4, 6}
    for curl in curls:
        assert curl.direction is Direction.OUTBOUND
        assert curl.process is not None
        assert curl.process.comm == "curl"
    sub = _one(cli, "redis-cli", proto="tcp", remote_port=6390, state=est)
    assert sub.direction is Direction.OUTBOUND
    assert sub.process is not None
    assert sub.process.comm == "redis-cli"
    assert sub.process.netns == bed.bed.ns_inode(bed.cli)

    # Dual-stack: the IPv4 curl arrives on nginx's [::] socket as ::ffff:<cli4>.
    mapped = _one(srv, "nginx v4-mapped", proto="tcp", local_port=8080, state=est,
                  remote_ip=f"::ffff:{bed.cli4}")  # fmt: skip
    assert mapped.raw.family == 6
    assert mapped.direction is Direction.INBOUND
    assert mapped.process is not None
    assert mapped.process.comm == "nginx"
    served = _one(srv, "redis-server side", proto="tcp", local_port=6390, state=est,
                  remote_ip=bed.cli4)  # fmt: skip
    assert served.direction is Direction.INBOUND
    assert served.process is not None
    assert served.process.comm == "redis-server"


def test_local_connections(bed: Bed) -> None:
    srv = _in(bed, bed.srv)
    est = TcpState.ESTABLISHED
    over_lo = _all(srv, proto="tcp", remote_ip="127.0.0.1", remote_port=6390, state=est)
    over_own = _all(srv, proto="tcp", remote_ip=bed.srv4, remote_port=6390, state=est)
    assert over_lo
    assert over_own
    for sock in over_lo + over_own:
        assert sock.direction is Direction.LOCAL_OUTBOUND
    served_lo = _all(srv, proto="tcp", local_port=6390, remote_ip="127.0.0.1", state=est)
    served_own = _all(srv, proto="tcp", local_port=6390, local_ip=bed.srv4, remote_ip=bed.srv4)
    assert served_lo
    assert served_own
    for sock in served_lo + served_own:
        assert sock.direction is Direction.LOCAL_INBOUND


def test_listening_port_is_keyed_by_bound_address(bed: Bed) -> None:
    srv = _in(bed, bed.srv)
    pinned = _one(srv, "client bound to 127.0.0.1:8081", proto="tcp", local_ip="127.0.0.1",
                  local_port=8081, remote_port=6390)  # fmt: skip
    assert pinned.direction is Direction.LOCAL_OUTBOUND
    assert pinned.process is not None
    assert pinned.process.pid == os.getpid()


def test_time_wait_sockets_are_classified(bed: Bed) -> None:
    tw = TcpState.TIME_WAIT
    server_side = _one(_in(bed, bed.srv), "nginx TIME_WAIT", proto="tcp", local_port=8080, state=tw)
    assert server_side.direction is Direction.INBOUND
    assert server_side.raw.inode == 0
    assert server_side.process is None
    client_side = _one(_in(bed, bed.cli), "curl TIME_WAIT", proto="tcp", remote_port=8081, state=tw)
    assert client_side.direction is Direction.OUTBOUND


def test_udp_low_port_listens_ephemeral_is_unconnected(bed: Bed) -> None:
    cli = _in(bed, bed.cli)
    ephemeral = _one(cli, "ephemeral udp", proto="udp", local_port=bed.udp_ephemeral_port)
    assert 32768 <= bed.udp_ephemeral_port <= 60999
    assert ephemeral.direction is Direction.UNCONNECTED
    assert ephemeral.process is not None
    assert ephemeral.process.pid == os.getpid()
    low = _one(cli, "udp 5353", proto="udp", local_port=bed.udp_low_port)
    assert low.direction is Direction.LISTEN
    connected = _one(cli, "connected udp", proto="udp", local_port=bed.udp_connected_port)
    assert connected.direction is Direction.OUTBOUND
    assert connected.raw.remote_port == 11211


def _lone_syn(src: str, dst: str, dport: int) -> None:
    """Send one TCP SYN from ``src``, an address nobody owns: the SYN-ACK goes unanswered."""
    sport = 40000 + secrets.randbelow(20000)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
    header = struct.pack("!HHIIBBHHH", sport, dport, secrets.randbits(32), 0, 5 << 4, 0x02,
                         64240, 0, 0)  # fmt: skip
    checksum = _inet_checksum(pseudo + header)
    tcp = header[:16] + struct.pack("!H", checksum) + header[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ip + tcp, (dst, 0))


def _inet_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_syn_recv_is_inbound(bed: Bed) -> None:
    # A handshake the client never finishes: its source address is unused in the bed, so
    # nginx's SYN-ACK is never answered and the request sits in SYN_RECV.
    ghost = bed.srv4.rsplit(".", 1)[0] + ".99"
    netns.run_in(bed.bed.ns_path(bed.cli), _lone_syn, ghost, bed.srv4, 8080)
    srv_ns = bed.bed.ns_inode(bed.srv)

    def pending() -> list[Socket]:
        return [s for s in take_snapshot().sockets
                if s.netns == srv_ns and s.raw.state == TcpState.SYN_RECV]  # fmt: skip

    _wait_for(pending, "a SYN_RECV socket in srv")
    request = pending()[0]
    assert request.raw.local_port == 8080
    assert request.raw.remote_ip in (ghost, f"::ffff:{ghost}")
    assert request.raw.inode == 0
    assert request.direction is Direction.INBOUND


def test_host_lists(bed: Bed) -> None:
    host = HostMap()
    host.fold_snapshot(bed.snapshot)
    report = host.report(bed.snapshot.taken_at)
    outbound = {(o.proto, o.ip, o.port): o for o in report.outbound}
    curl = outbound[("tcp", bed.srv4, 8080)]
    assert curl.comm == "curl"
    assert curl.first_seen <= curl.last_seen == bed.snapshot.taken_at
    assert ("tcp", bed.srv6, 8080) in outbound
    assert outbound[("tcp", bed.srv4, 6390)].comm == "redis-cli"
    assert ("udp", bed.srv4, 11211) in outbound
    assert ("tcp", "127.0.0.1", 6390) not in outbound  # local, not outbound
    # The same sockets seen again are not new connections.
    counts = {key: o.connections for key, o in outbound.items()}
    host.fold_snapshot(bed.snapshot)
    again = host.report(bed.snapshot.taken_at).outbound
    assert {(o.proto, o.ip, o.port): o.connections for o in again} == counts
    assert counts[("tcp", bed.srv4, 8080)] >= 2  # slow curl + wait_tcp's probe (TIME_WAIT)
    ips = {ip.ip for ip in report.local_ips}
    assert {bed.srv4, bed.srv6, bed.cli4} <= ips
    listeners = {(item.proto, item.address, item.port, item.comm) for item in report.listeners}
    assert ("tcp", "*", 8080, "nginx") in listeners
    assert ("tcp", bed.srv4, 8081, "nginx") in listeners
    assert ("udp", bed.srv4, 11211, "memcached") in listeners


def test_procfs_fallback_classifies_the_same(bed: Bed) -> None:
    wanted = {bed.bed.ns_inode(bed.srv), bed.bed.ns_inode(bed.cli)}
    via_diag = take_snapshot(source="diag")
    via_procfs = take_snapshot(source="procfs")

    def table(snap: Snapshot) -> set[tuple[object, ...]]:
        return {
            (s.netns, s.raw.proto, s.raw.local_ip, s.raw.local_port, s.raw.remote_ip,
             s.raw.remote_port, s.raw.state, s.direction, s.process.pid if s.process else None)
            for s in snap.sockets
            if s.netns in wanted and s.raw.state != TcpState.TIME_WAIT
        }  # fmt: skip

    assert {v.source for v in via_procfs.namespaces} == {"procfs"}
    assert table(via_procfs) == table(via_diag)
    assert len(table(via_diag)) >= 15


def test_raw_table_matches_pyroute2_diag_socket(bed: Bed) -> None:
    def both() -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
        ours: set[tuple[object, ...]] = set()
        ref: set[tuple[object, ...]] = set()
        for proto, number in (("tcp", socket.IPPROTO_TCP), ("udp", socket.IPPROTO_UDP)):
            for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                ours |= {(s.local_ip, s.local_port, s.remote_ip, s.remote_port, s.state,
                          s.inode, s.cookie) for s in diag.dump(proto, family)}  # fmt: skip
                with DiagSocket() as ds:
                    ds.bind()
                    ref |= {(m["idiag_src"], m["idiag_sport"], m["idiag_dst"], m["idiag_dport"],
                             m["idiag_state"], m["idiag_inode"], m["idiag_cookie"])
                            for m in ds.get_sock_stats(family=af, protocol=number)}  # fmt: skip
        return ours, ref

    ours, ref = netns.run_in(bed.bed.ns_path(bed.srv), both)
    assert ours == ref
    assert len(ours) >= 10


def test_process_attribution_matches_ss(bed: Bed) -> None:
    out = bed.bed.run(bed.srv, ["ss", "-tanpH", "state", "established"]).stdout
    ss_pids: dict[tuple[str, int], set[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        local, peer = fields[2], fields[3]
        key = (peer.rsplit(":", 1)[0].strip("[]"), int(local.rsplit(":", 1)[1]))
        ss_pids[key] = {int(p) for p in re.findall(r"pid=(\d+)", line)}
    checked = 0
    for sock in _in(bed, bed.srv):
        if sock.raw.proto != "tcp" or sock.raw.state != TcpState.ESTABLISHED:
            continue
        key = (sock.raw.remote_ip, sock.raw.local_port)
        if ss_pids.get(key):
            assert sock.process is not None
            assert sock.process.pid in ss_pids[key], key
            checked += 1
    assert checked >= 4


def test_cli_json_matches_schema(bed: Bed) -> None:
    schema = json.loads((Path(__file__).parent.parent / "schemas/sockets.schema.json").read_text())
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "netweave"), "sockets", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    document = json.loads(proc.stdout)
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
    srv_ns = bed.bed.ns_inode(bed.srv)
    listening = {(s["proto"], s["local_port"]) for s in document["sockets"]
                 if s["netns"] == srv_ns and s["direction"] == "LISTEN"}  # fmt: skip
    assert {("tcp", 8080), ("tcp", 8081), ("tcp", 6390), ("udp", 11211)} <= listening
    table = subprocess.run(
        [str(Path(sys.executable).parent / "netweave"), "sockets", "--netns", "self"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert "outbound destinations" in table
    assert "LISTEN" in table or "sockets (0" in table


def test_without_root_the_cli_says_what_it_could_not_see(bed: Bed) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("util-linux setpriv is needed to drop to an unprivileged user")
    # numba (imported by the CLI through capture/) caches compiled code next to the source,
    # which nobody may not write: give it a cache directory it can.
    with tempfile.TemporaryDirectory(prefix="nwt-numba-") as cache:
        Path(cache).chmod(0o777)
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             str(Path(sys.executable).parent / "netweave"), "sockets", "--json"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "NUMBA_CACHE_DIR": cache},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert bed.bed.ns_inode(bed.srv) in document["unreadable_namespaces"]
    assert "could not enter" in proc.stderr
    assert "not root" in proc.stderr


def test_snapshots_survive_processes_exiting_mid_read(bed: Bed) -> None:
    # 150 curl processes come and go (each with a socket) while snapshots are taken.
    url = f"http://{bed.srv4}:8081/small.txt"
    churn = bed.bed.start(
        bed.cli,
        "churn",
        ["sh", "-c", f"for i in $(seq 150); do curl -s -o /dev/null {url} & done; wait"],
    )
    cli_ns = bed.bed.ns_inode(bed.cli)
    taken = 0
    deadline = time.monotonic() + 30
    while churn.process.poll() is None and time.monotonic() < deadline:
        snap = take_snapshot()
        assert any(s.netns == cli_ns for s in snap.sockets)
        taken += 1
    churn.process.wait(30)
    assert churn.process.returncode == 0
    assert taken >= 1
