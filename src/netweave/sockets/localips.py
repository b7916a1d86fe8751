"""What a network namespace considers its own: addresses (rtnetlink) and ephemeral ports.

Both read the namespace of the calling *thread*: run them on a
:func:`netweave.netns.enter` worker to ask about another namespace.
"""

from __future__ import annotations

from pathlib import Path

from pyroute2 import IPRoute

__all__ = ["ephemeral_ports", "rtnetlink_addresses"]

DEFAULT_EPHEMERAL = (32768, 60999)


def rtnetlink_addresses() -> frozenset[str]:
    """Every address on an interface of this namespace (RTM_GETADDR), IPv4 and IPv6."""
    found: set[str] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if address:
                found.add(str(address).split("%")[0])
    return frozenset(found)


def ephemeral_ports() -> tuple[int, int]:
    """This namespace's ``net.ipv4.ip_local_port_range`` (it also governs IPv6)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
