"""Direction of every socket in one network namespace.

Netdata's network viewer rules (listening = TCP LISTEN or no remote; inbound = the local
port is a listening port; local = the remote is loopback or one of the host's own IPs), with
its blind spots fixed:

- listening ports are keyed by (protocol, family, bound address or wildcard, port) inside one
  namespace, so a port that listens on one address does not make every socket on that port
  inbound;
- the namespace's own IPs come from rtnetlink *and* from the local addresses of its sockets;
- IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are IPv4: a dual-stack ``[::]`` listener
  that is not IPV6_V6ONLY makes IPv4 sockets on its port inbound;
- a UDP socket with no remote is LISTEN only outside the ephemeral port range, otherwise
  UNCONNECTED (a client's unconnected socket);
- TIME_WAIT and SYN_RECV sockets are classified, not dropped (SYN_RECV is always inbound).
"""

from __future__ import annotations

from collections.abc import Iterable

from netweave.sockets.records import Direction, RawSocket, TcpState

__all__ = ["Classifier", "is_loopback", "is_unspecified", "unmap"]

_WILDCARD = "*"
_LISTEN = TcpState.LISTEN
_SYN_RECV = TcpState.SYN_RECV


def unmap(ip: str) -> str:
    """``::ffff:10.0.0.1`` -> ``10.0.0.1``; anything else unchanged."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def is_unspecified(ip: str) -> bool:
    """True for 0.0.0.0, :: and ::ffff:0.0.0.0."""
    return ip in ("0.0.0.0", "::", "::ffff:0.0.0.0")


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8 (also IPv4-mapped) and ::1."""
    return ip == "::1" or unmap(ip).startswith("127.")


class Classifier:
    """Classify the sockets of one namespace; build it from the namespace's whole table."""

    def __init__(
        self,
        sockets: Iterable[RawSocket],
        local_ips: Iterable[str],
        ephemeral_ports: tuple[int, int],
    ) -> None:
        self.ephemeral_ports = ephemeral_ports
        self._listening: dict[tuple[str, int, str, int], bool] = {}
        self._listening_ports: set[tuple[str, int]] = set()
        self._local_cache: dict[str, bool] = {}
        seen: set[str] = set()
        for sock in sockets:
            seen.add(sock.local_ip)
            if self._listens(sock):
                address = _WILDCARD if is_unspecified(sock.local_ip) else sock.local_ip
                key = (sock.proto, sock.family, address, sock.local_port)
                self._listening[key] = sock.v6only
                self._listening_ports.add((sock.proto, sock.local_port))
        own = {unmap(ip) for ip in local_ips}
        own.update(unmap(ip) for ip in seen if not is_unspecified(ip))
        self.local_ips = frozenset(own)

    def direction(self, sock: RawSocket) -> Direction:
        """The direction of one socket of this namespace."""
        if self._listens(sock):
            return Direction.LISTEN
        if sock.remote_port == 0 and is_unspecified(sock.remote_ip):
            return Direction.UNCONNECTED
        local = self._local_cache.get(sock.remote_ip)
        if local is None:
            local = self._local_cache[sock.remote_ip] = self.is_local(sock.remote_ip)
        if sock.state == _SYN_RECV or (
            (sock.proto, sock.local_port) in self._listening_ports and self._is_listening_port(sock)
        ):
            return Direction.LOCAL_INBOUND if local else Direction.INBOUND
        return Direction.LOCAL_OUTBOUND if local else Direction.OUTBOUND

    def is_local(self, ip: str) -> bool:
        """True when ``ip`` is loopback or one of this namespace's own addresses."""
        plain = unmap(ip)
        return is_loopback(plain) or plain in self.local_ips

    def _listens(self, sock: RawSocket) -> bool:
        if sock.proto == "tcp":
            return sock.state == _LISTEN
        if sock.remote_port != 0 or not is_unspecified(sock.remote_ip):
            return False
        low, high = self.ephemeral_ports
        return not low <= sock.local_port <= high

    def _is_listening_port(self, sock: RawSocket) -> bool:
        listening = self._listening
        proto, port, ip = sock.proto, sock.local_port, sock.local_ip
        plain = unmap(ip)
        if plain != ip or sock.family == 4:
            # IPv4, possibly seen through a dual-stack IPv6 socket.
            if (proto, 4, plain, port) in listening or (proto, 4, _WILDCARD, port) in listening:
                return True
            if (proto, 6, "::ffff:" + plain, port) in listening:
                return True
            v6only = listening.get((proto, 6, _WILDCARD, port))
            return v6only is False
        return (proto, 6, ip, port) in listening or (proto, 6, _WILDCARD, port) in listening
