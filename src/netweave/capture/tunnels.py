"""Names of the tunnels the decoder opens (GRE, ERSPAN, VXLAN, Geneve, IP-in-IP)."""

from __future__ import annotations

from typing import Final

from netweave.capture.decode import (
    TUNNEL_ERSPAN,
    TUNNEL_GENEVE,
    TUNNEL_GRE,
    TUNNEL_IPIP,
    TUNNEL_VXLAN,
)

TUNNEL_NAMES: Final = (
    (TUNNEL_GRE, "gre"),
    (TUNNEL_ERSPAN, "erspan"),
    (TUNNEL_VXLAN, "vxlan"),
    (TUNNEL_GENEVE, "geneve"),
    (TUNNEL_IPIP, "ipip"),
)


def tunnel_name(code: int) -> str:
    """Names of the tunnels in bitmask ``code`` joined with ``+`` (``""`` for none)."""
    return "+".join(name for bit, name in TUNNEL_NAMES if code & bit)


TUNNEL_TEXT: Final = tuple(tunnel_name(code) for code in range(32))
"""``tunnel_name`` of every bitmask, indexable by the code."""
