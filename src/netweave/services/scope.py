"""Scope guard of the active prober: which addresses it may ever connect to.

By default only loopback and this host's own addresses; more networks must be declared
(home networks). Anything else is refused before a socket is opened.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["OutOfScopeError", "Scope", "host_addresses"]

_SIOCGIFADDR: Final = 0x8915
_LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutOfScopeError(PermissionError):
    """A target address lies outside every network the prober may reach."""


@dataclass(frozen=True, slots=True)
class Scope:
    """The networks the prober may connect to."""

    networks: tuple[IPNetwork, ...]

    @classmethod
    def default(cls, home_networks: Iterable[str] = ()) -> Scope:
        """Loopback, this host's own addresses, plus ``home_networks`` (CIDR strings).

        Raises ValueError naming a home network that is not a valid CIDR.
        """
        networks: list[IPNetwork] = list(_LOOPBACK)
        networks.extend(ipaddress.ip_network(a) for a in host_addresses())
        for text in home_networks:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"home network {text!r} is not a valid CIDR") from None
        return cls(tuple(networks))

    def allows(self, address: str) -> bool:
        """True if ``address`` (an IP literal) is inside one of the networks."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def check(self, host: str, address: str) -> None:
        """Raise :class:`OutOfScopeError` unless ``address`` (resolved from ``host``) is allowed."""
        if not self.allows(address):
            nets = ", ".join(str(n) for n in self.networks)
            raise OutOfScopeError(
                f"refusing to probe {host} ({address}): outside the allowed networks ({nets}); "
                "declare it as a home network (--home-net CIDR) if it is yours"
            )


def host_addresses() -> tuple[IPAddress, ...]:
    """This host's own addresses: the IPv4 address of each interface and all IPv6 ones."""
    found: list[IPAddress] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
            found.append(ipaddress.IPv4Address(reply[20:24]))
    try:
        with Path("/proc/net/if_inet6").open(encoding="ascii") as table:
            for row in table:
                hex_address = row.split()[0]
                found.append(ipaddress.IPv6Address(bytes.fromhex(hex_address)))
    except OSError:
        pass
    return tuple(found)
