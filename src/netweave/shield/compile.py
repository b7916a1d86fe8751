"""Turn a :class:`RuleSet` into the bytes the kernel maps and ``const volatile`` globals take."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netweave.shield.aggregate import v4_ranges
from netweave.shield.ruleset import MAX_BYPASS4, MAX_BYPASS6, RuleSet
from netweave.shield.trie import ALLOW, V4Tables, build_v4, paint

MAX_V6_LENS = 129


@dataclass(frozen=True, slots=True)
class Compiled:
    """Everything one loaded instance needs: trie tables, IPv6 entries and globals."""

    v4: V4Tables
    v6_keys: bytes  # struct nw_shield_v6_key, packed
    v6_values: bytes  # __u32 ids, packed
    v6_lens: tuple[int, ...]  # longest first
    rules: npt.NDArray[np.void]
    rodata: dict[str, int | bytes]

    @property
    def v6_count(self) -> int:
        """Entries of the IPv6 hash."""
        return len(self.v6_values) // 4


def _v6_entries(rs: RuleSet) -> list[tuple[int, int, int]]:
    """(prefix length, address, value) of the IPv6 hash; block rules inside an allow dropped.

    CIDRs either nest or are disjoint, so after removing block rules inside an allow
    entry, the longest match is an allow entry wherever one covers the address.
    """
    allow_first = rs.first_allow_id + len(rs.allow_v4_addr)
    allows = [ipaddress.IPv6Network(c) for c in rs.allow_v6]
    out: list[tuple[int, int, int]] = []
    first = len(rs.v4_addr) + 1
    for i, (a, p) in enumerate(rs.v6):
        if not allows or not any(ipaddress.IPv6Network((a, p)).subnet_of(al) for al in allows):
            out.append((p, a, first + i))
    out += [(p, a, (allow_first + i) | ALLOW) for i, (a, p) in enumerate(rs.allow_v6)]
    return out


def _bypass_rodata(bypass: tuple[str, ...]) -> dict[str, int | bytes]:
    v4 = [socket.inet_pton(socket.AF_INET, b) for b in bypass if ":" not in b]
    v6 = [socket.inet_pton(socket.AF_INET6, b) for b in bypass if ":" in b]
    return {
        "bypass4": b"".join(v4).ljust(4 * MAX_BYPASS4, b"\0"),
        "n_bypass4": len(v4),
        "bypass6": b"".join(v6).ljust(16 * MAX_BYPASS6, b"\0"),
        "n_bypass6": len(v6),
    }


def compile_ruleset(rs: RuleSet) -> Compiled:
    """Paint, build the trie and pack the IPv6 entries of ``rs``."""
    bs, be = v4_ranges(rs.v4_addr, rs.v4_plen)
    bid = np.arange(1, len(rs.v4_addr) + 1, dtype=np.uint32)
    as_, ae = v4_ranges(rs.allow_v4_addr, rs.allow_v4_plen)
    aid = (np.arange(len(rs.allow_v4_addr), dtype=np.uint32) + rs.first_allow_id) | ALLOW
    bounds, values = paint((bs, be, bid), (as_, ae, aid.astype(np.uint32)))
    v4 = build_v4(bounds, values)
    entries = _v6_entries(rs)
    keys = b"".join(
        p.to_bytes(4, "little") + (a & ~((1 << (128 - p)) - 1)).to_bytes(16, "big")
        for p, a, _ in entries
    )
    vals = b"".join(v.to_bytes(4, "little") for _, _, v in entries)
    lens = tuple(sorted({p for p, _, _ in entries}, reverse=True))
    rodata = _bypass_rodata(rs.protected.bypass)
    rodata["v6_lens"] = bytes(lens).ljust(MAX_V6_LENS, b"\0")
    rodata["n_v6_lens"] = len(lens)
    return Compiled(v4, keys, vals, lens, rs.table(), rodata)
