"""What the graph needs to know about the local host: listeners, own addresses, outbound list.

The socket table (:mod:`netweave.sockets`) produces these lists; the graph accepts anything
with the same read-only fields (the Protocols below), so it does not import the socket code.
:func:`inventory_from` copies such objects into the graph's own frozen records.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class ListenerLike(Protocol):
    """A listening socket: ``proto`` ``tcp``/``udp``, bound ``address`` (``0.0.0.0``/``::``
    for a wildcard), ``port`` and the owning process name (``comm``) when known."""

    @property
    def proto(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def comm(self) -> str | None: ...


class LocalIPLike(Protocol):
    """An address of this host."""

    @property
    def ip(self) -> str: ...


class OutboundLike(Protocol):
    """A destination this host opened connections to, and the process that last did."""

    @property
    def proto(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def first_seen(self) -> float: ...
    @property
    def last_seen(self) -> float: ...
    @property
    def comm(self) -> str: ...
    @property
    def connections(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Listener:
    """A local listening socket (``address`` canonical, IPv4-mapped IPv6 unmapped)."""

    proto: str
    address: str
    port: int
    process: str | None


@dataclass(frozen=True, slots=True)
class Outbound:
    """A destination this host opened connections to (times in seconds since the epoch)."""

    proto: str
    ip: str
    port: int
    first_seen: float
    last_seen: float
    process: str | None
    connections: int


@dataclass(frozen=True, slots=True)
class Inventory:
    """This host's listeners, own addresses and outbound list, as the graph uses them."""

    listeners: tuple[Listener, ...] = ()
    local_ips: tuple[str, ...] = ()
    outbound: tuple[Outbound, ...] = ()


WILDCARDS = frozenset({"0.0.0.0", "::"})


def canonical_ip(text: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4.

    Raises :class:`ValueError` naming the text when it is not an IP address.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError as exc:
        raise ValueError(f"not an IP address: {text!r}") from exc
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def inventory_from(
    listeners: Iterable[ListenerLike] = (),
    local_ips: Iterable[LocalIPLike | str] = (),
    outbound: Iterable[OutboundLike] = (),
) -> Inventory:
    """Copy the socket table's lists into an :class:`Inventory` (sorted, de-duplicated)."""
    lst = {
        Listener(item.proto.lower(), canonical_ip(item.address), int(item.port), item.comm or None)
        for item in listeners
    }
    ips = {canonical_ip(ip if isinstance(ip, str) else ip.ip) for ip in local_ips}
    out = {
        Outbound(
            o.proto.lower(),
            canonical_ip(o.ip),
            int(o.port),
            float(o.first_seen),
            float(o.last_seen),
            o.comm or None,
            int(o.connections),
        )
        for o in outbound
    }
    return Inventory(
        listeners=tuple(sorted(lst, key=lambda x: (x.proto, x.port, x.address, x.process or ""))),
        local_ips=tuple(sorted(ips)),
        outbound=tuple(sorted(out, key=lambda o: (o.proto, o.ip, o.port, o.first_seen))),
    )
