"""The few packets that need a walk: tunnel decapsulation and IPv6 extension headers.

Only packets the batch decoder flags (GRE, IP-in-IP, VXLAN and Geneve ports, IPv6 with
extension headers) come here; each gets its inner offset computed with a short Python
step and then rejoins the batch decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from netweave.capture.decode import Packets

TUNNEL_GRE: Final = 1
TUNNEL_ERSPAN: Final = 2
TUNNEL_VXLAN: Final = 4
TUNNEL_GENEVE: Final = 8
TUNNEL_IPIP: Final = 16
TUNNEL_NAMES: Final = (
    (TUNNEL_GRE, "gre"),
    (TUNNEL_ERSPAN, "erspan"),
    (TUNNEL_VXLAN, "vxlan"),
    (TUNNEL_GENEVE, "geneve"),
    (TUNNEL_IPIP, "ipip"),
)

VXLAN_PORT: Final = 4789
VXLAN_GPE_PORT: Final = 4790
GENEVE_PORT: Final = 6081
UDP_TUNNEL_PORTS: Final = (VXLAN_PORT, VXLAN_GPE_PORT, GENEVE_PORT)
_GPE_NEXT: Final = {1: 228, 2: 229, 3: 1}
IP_TUNNEL_PROTOS: Final = (4, 41, 47)

# Link kinds, as in netweave.capture.decode (kept literal to avoid an import cycle).
_ETHERNET: Final = 1
_IPV4: Final = 228
_IPV6: Final = 229

_GRE_ETHERTYPES: Final = {0x0800: _IPV4, 0x86DD: _IPV6, 0x6558: _ETHERNET}
_ERSPAN_II: Final = 0x88BE
_ERSPAN_III: Final = 0x22EB


def tunnel_name(code: int) -> str:
    """Names of the tunnels in bitmask ``code``, outermost first, joined with ``+``."""
    return "+".join(name for bit, name in TUNNEL_NAMES if code & bit)


def peel(
    img: npt.NDArray[np.uint8], pk: Packets, idx: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Inner start offset, inner link kind (-1: not a tunnel we open) and tunnel bit."""
    n = int(idx.size)
    start = np.zeros(n, dtype=np.int64)
    kind = np.full(n, -1, dtype=np.int64)
    code = np.zeros(n, dtype=np.int64)
    data = img
    for j in range(n):
        i = int(idx[j])
        end = int(pk.end[i])
        proto = int(pk.proto[i])
        if pk.udp_ok[i]:
            off = int(pk.payload_off[i])
            if off + 8 > end:
                continue
            port = int(pk.dport[i])
            if port not in UDP_TUNNEL_PORTS:
                port = int(pk.sport[i])
            if port in (VXLAN_PORT, VXLAN_GPE_PORT):
                flags = int(data[off])
                inner = _ETHERNET
                if flags & 0x04:  # VXLAN-GPE: next protocol in byte 3
                    inner = _GPE_NEXT.get(int(data[off + 3]), -1)
                if flags & 0x08 and inner >= 0:
                    start[j], kind[j], code[j] = off + 8, inner, TUNNEL_VXLAN
            else:
                opt_len = (int(data[off]) & 0x3F) * 4
                ptype = (int(data[off + 2]) << 8) | int(data[off + 3])
                inner = _GRE_ETHERTYPES.get(ptype, -1)
                if inner >= 0 and off + 8 + opt_len <= end:
                    start[j], kind[j], code[j] = off + 8 + opt_len, inner, TUNNEL_GENEVE
            continue
        off = int(pk.l4[i])
        if proto in (4, 41):
            start[j], kind[j], code[j] = off, _IPV4 if proto == 4 else _IPV6, TUNNEL_IPIP
            continue
        if off + 4 > end:
            continue
        flags = (int(data[off]) << 8) | int(data[off + 1])
        if flags & 0x0007:  # GRE version 1 (PPTP) carries PPP, not opened here
            continue
        ptype = (int(data[off + 2]) << 8) | int(data[off + 3])
        hlen = 4 + 4 * (1 if flags & 0xC000 else 0) + 4 * bool(flags & 0x2000)
        hlen += 4 * bool(flags & 0x1000)
        inner_at = off + hlen
        if ptype in _GRE_ETHERTYPES:
            start[j], kind[j], code[j] = inner_at, _GRE_ETHERTYPES[ptype], TUNNEL_GRE
        elif ptype == _ERSPAN_II:
            # Type I has no sequence number and no ERSPAN header; type II has both.
            skip = 8 if flags & 0x1000 else 0
            start[j], kind[j] = inner_at + skip, _ETHERNET
            code[j] = TUNNEL_GRE | TUNNEL_ERSPAN
        elif ptype == _ERSPAN_III and inner_at + 12 <= end:
            skip = 12 + (8 if data[inner_at + 11] & 0x01 else 0)
            start[j], kind[j] = inner_at + skip, _ETHERNET
            code[j] = TUNNEL_GRE | TUNNEL_ERSPAN
        if kind[j] >= 0 and start[j] > end:
            kind[j] = -1
    return start, kind, code


_FIXED8 = (0, 43, 60, 135, 139, 140)


def walk_ipv6_extensions(
    img: npt.NDArray[np.uint8], limit: int, pk: Packets, idx: npt.NDArray[np.int64]
) -> None:
    """Follow IPv6 extension headers to the transport header (at most 8 of them)."""
    for i in idx.tolist():
        nh = int(pk.proto[i])
        off = int(pk.l4[i])
        end = int(pk.ip_end[i])
        for _ in range(8):
            if off + 8 > end or off > limit:
                nh = 59  # no next header reachable: leave transport undecoded
                break
            if nh in _FIXED8:
                nxt, length = int(img[off]), (int(img[off + 1]) + 1) * 8
            elif nh == 44:  # fragment
                nxt, length = int(img[off]), 8
                frag_off = ((int(img[off + 2]) << 8) | int(img[off + 3])) >> 3
                if frag_off:
                    pk.frag_tail[i] = True
            elif nh == 51:  # authentication header
                nxt, length = int(img[off]), (int(img[off + 1]) + 2) * 4
            else:
                break
            nh, off = nxt, off + length
        pk.proto[i] = nh
        pk.l4[i] = off
