"""IPV6_V6ONLY decides whether a [::] listener owns IPv4 sockets on its port.

Real sockets in a bed namespace: a v6-only [::]:P listener does not make an IPv4 client
bound to port P inbound (Netdata's port-only rule would), while a dual-stack [::]:R
listener's accepted IPv4 connection, seen as ::ffff:127.0.0.1, is inbound.
"""

from __future__ import annotations

import socket

from netweave import netns
from netweave.sockets.records import Direction, Socket, TcpState
from netweave.sockets.snapshot import take_snapshot

from testbed import TestBed


def _listener6(v6only: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind(("::", 0))
    sock.listen()
    return sock


def _setup() -> tuple[list[socket.socket], int, int, int]:
    """Runs inside the namespace; returns the sockets and the ports P, Q, R."""
    only6 = _listener6(v6only=True)
    port_p = only6.getsockname()[1]
    plain4 = socket.create_server(("127.0.0.1", 0))
    port_q = plain4.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.bind(("127.0.0.1", port_p))  # same port as the v6-only listener, other family
    client.connect(("127.0.0.1", port_q))
    served, _ = plain4.accept()
    dual = _listener6(v6only=False)
    port_r = dual.getsockname()[1]
    client4 = socket.create_connection(("127.0.0.1", port_r))
    mapped, _ = dual.accept()
    return [only6, plain4, client, served, dual, client4, mapped], port_p, port_q, port_r


def _find(sockets: list[Socket], **want: object) -> Socket:
    found = [s for s in sockets if all(getattr(s.raw, k) == v for k, v in want.items())]
    assert len(found) == 1, (want, [s.raw for s in sockets])
    return found[0]


def test_v6only_listener_does_not_own_ipv4_port(testbed: TestBed) -> None:
    ns = testbed.add_ns("dual")
    held, port_p, port_q, port_r = netns.run_in(testbed.ns_path(ns), _setup)
    try:
        inode = testbed.ns_inode(ns)
        mine = [s for s in take_snapshot().sockets if s.netns == inode]
        est = TcpState.ESTABLISHED
        client = _find(mine, family=4, local_port=port_p, state=est)
        assert client.direction is Direction.LOCAL_OUTBOUND
        served = _find(mine, family=4, local_port=port_q, state=est)
        assert served.direction is Direction.LOCAL_INBOUND
        mapped = _find(mine, family=6, local_port=port_r, state=est)
        assert mapped.raw.remote_ip == "::ffff:127.0.0.1"
        assert mapped.direction is Direction.LOCAL_INBOUND
        client4 = _find(mine, family=4, remote_port=port_r, state=est)
        assert client4.direction is Direction.LOCAL_OUTBOUND
        only6 = _find(mine, family=6, local_port=port_p, state=TcpState.LISTEN)
        assert only6.raw.v6only is True
    finally:
        for sock in held:
            sock.close()
