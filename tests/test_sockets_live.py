"""Live socket events: a connection shorter than any snapshot interval is still mapped."""

from __future__ import annotations

import sys
import time

from netweave.sockets.hostmap import HostMap
from netweave.sockets.live import SocketEvents
from netweave.sockets.records import TcpState
from netweave.sockets.snapshot import take_snapshot

from testbed import TestBed

# A client that names itself, connects, and closes at once; it prints how long that took.
_SHORT_CLIENT = """
import socket, sys, time
open("/proc/self/comm", "w").write("shortconn")
t0 = time.time()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.close()
t1 = time.time()
print(t0, t1)
"""


def test_short_connection_lands_in_the_outbound_list(testbed: TestBed) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    testbed.start(b, "http", ["python3", "-m", "http.server", "8080", "--bind", link.ipv4_b])
    testbed.wait_tcp(a, link.ipv4_b, 8080)
    hostmap = HostMap()
    with SocketEvents() as live:
        hostmap.fold_snapshot(take_snapshot())  # the seed: what was open before
        # The bed's readiness probe may have left a TIME_WAIT socket the seed counted.
        seeded = sum(
            o.connections
            for o in hostmap.report().outbound
            if (o.ip, o.port) == (link.ipv4_b, 8080)
        )
        live.poll(0.1)
        out = testbed.run(a, [sys.executable, "-c", _SHORT_CLIENT, link.ipv4_b, "8080"])
        opened, closed = (float(x) for x in out.stdout.split())
        assert closed - opened < 0.05, "the client connection lived longer than 50 ms"
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.comm == "shortconn" and e.new_state == TcpState.CLOSE for e in events
        ):
            events += live.poll(0.2)
        hostmap.fold_events(events)
        assert live.dropped == 0
    client_ns = testbed.ns_inode(a)
    connect = (TcpState.CLOSE, TcpState.SYN_SENT)
    opens = [e for e in events if e.netns == client_ns and (e.old_state, e.new_state) == connect]
    assert [(e.comm, e.daddr, e.dport) for e in opens] == [("shortconn", link.ipv4_b, 8080)]
    report = hostmap.report()
    entry = next(o for o in report.outbound if (o.ip, o.port) == (link.ipv4_b, 8080))
    assert (entry.proto, entry.comm, entry.connections) == ("tcp", "shortconn", seeded + 1)
    if not seeded:  # else first_seen is the seed snapshot's, before the client started
        assert opened - 0.05 <= entry.first_seen
    assert opened - 0.05 <= entry.last_seen <= closed + 0.05
