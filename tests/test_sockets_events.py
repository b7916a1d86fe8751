"""The live-event seam: state changes folded into the outbound list.

Events come from real connections: two snapshots of a test bed around a curl download are
diffed into the same kernel-shaped records the tp_btf program will deliver.
"""

from __future__ import annotations

import time

from netweave.sockets.hostmap import HostMap, events_from_snapshots
from netweave.sockets.records import StateChange, TcpState
from netweave.sockets.snapshot import take_snapshot

from testbed import TestBed

NGINX_CONF = """
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{ listen {addr}:8090; root {tmp}/www; }}
}}
"""


def _wait(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_snapshot_diff_events_fold_into_outbound_list(testbed: TestBed) -> None:
    srv = testbed.add_ns("srv")
    cli = testbed.add_ns("cli")
    link = testbed.link(srv, cli)
    (testbed.tmp / "www").mkdir()
    (testbed.tmp / "www" / "big.bin").write_bytes(b"\0" * (4 << 20))
    conf = testbed.tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=testbed.tmp, addr=link.ipv4_a))
    testbed.start(srv, "nginx", ["nginx", "-c", str(conf), "-p", str(testbed.tmp)])
    testbed.wait_tcp(cli, link.ipv4_a, 8090)
    cli_ns = testbed.ns_inode(cli)

    host = HostMap()
    before = take_snapshot()
    host.fold_snapshot(before)
    key = ("tcp", link.ipv4_a, 8090)
    # wait_tcp's probe left a TIME_WAIT: a seeded destination with no process yet.
    seeded = {(o.proto, o.ip, o.port): o for o in host.report().outbound}.get(key)
    seeded_count = seeded.connections if seeded else 0
    assert seeded is None or seeded.pid == 0

    curl = testbed.start(cli, "curl", ["curl", "-s", "-o", "/dev/null", "--limit-rate", "50k",
                                       f"http://{link.ipv4_a}:8090/big.bin"])  # fmt: skip

    def connected() -> bool:
        return any(
            s.netns == cli_ns and s.raw.remote_port == 8090 and s.process is not None
            for s in take_snapshot().sockets
        )

    _wait(connected, "curl's connection")
    during = take_snapshot()
    opened = events_from_snapshots(before, during)
    syn = [e for e in opened if e.new_state == TcpState.SYN_SENT and e.dport == 8090]
    assert len(syn) == 1
    assert syn[0].old_state == TcpState.CLOSE
    assert syn[0].comm == "curl"
    assert syn[0].netns == cli_ns
    # Only the events are folded: the outbound entry must come from them alone.
    assert host.fold_events(opened) == len(opened)
    entry = {(o.proto, o.ip, o.port): o for o in host.report().outbound}[key]
    assert entry.comm == "curl"
    assert entry.pid == syn[0].pid
    assert entry.connections == seeded_count + 1
    assert abs(entry.first_seen - during.taken_at) < 1.0

    testbed.stop(curl)

    def closed() -> bool:
        return not any(
            s.netns == cli_ns and s.raw.remote_port == 8090
            and s.raw.state != TcpState.TIME_WAIT
            for s in take_snapshot().sockets
        )  # fmt: skip

    _wait(closed, "curl's connection to close")
    after = take_snapshot()
    gone = [e for e in events_from_snapshots(during, after) if e.dport == 8090]
    assert [e.new_state for e in gone if e.cookie == syn[0].cookie] == [TcpState.CLOSE]
    host.fold_events(gone)
    # Closed, but kept: the destination stays in the list with a later last_seen.
    entry_after = {(o.proto, o.ip, o.port): o for o in host.report().outbound}[key]
    assert entry_after.last_seen > entry.first_seen
    assert entry_after.comm == "curl"
    assert not host.is_tracking(syn[0].cookie)


def _open(cookie: int, daddr: str, dport: int, t: int) -> StateChange:
    close, syn_sent = int(TcpState.CLOSE), int(TcpState.SYN_SENT)
    return StateChange(cookie, close, syn_sent, 4, "10.0.0.1", daddr, 0, dport, 7, "app", t)


def test_local_opens_are_not_outbound_and_bounds_hold() -> None:
    host = HostMap(max_outbound=2, ttl=60.0)
    now = time.monotonic_ns()
    host.fold_events(
        [
            _open(1, "127.0.0.1", 80, now),
            _open(2, "192.0.2.10", 80, now),
            _open(3, "192.0.2.11", 80, now + 1000),
            _open(4, "192.0.2.12", 80, now + 2000),
        ]
    )
    report = host.report()
    assert [o.ip for o in report.outbound] == ["192.0.2.11", "192.0.2.12"]
    assert host.events_dropped_local == 1
    later = host.report(now=time.time() + 120)
    assert later.outbound == ()
