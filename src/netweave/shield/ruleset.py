"""A rule set: the aggregated block rules of some feeds, the allowlist and the bypass
addresses, with rule ids and the conflicts a user must hear about."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netweave.shield.aggregate import aggregate_v4, aggregate_v6, v4_ranges
from netweave.shield.feeds import Feed, parse_cidr

MAX_BYPASS4 = 8
MAX_BYPASS6 = 4

# struct nw_shield_rule
RULE_DTYPE = np.dtype(
    [
        ("addr", ">u4", (4,)),
        ("family", "u1"),
        ("plen", "u1"),
        ("allow", "u1"),
        ("pad", "u1"),
        ("pad2", "<u4"),
    ]
)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A bypass address or allowlisted CIDR that a feed would block."""

    kind: str  # "bypass" or "allow"
    protected: str
    feed: str
    entry: str
    entries: int

    def describe(self) -> str:
        """One line for the user."""
        more = f" (and {self.entries - 1} more entries)" if self.entries > 1 else ""
        return (
            f"{self.kind} {self.protected} is listed by {self.feed}: {self.entry}{more}; "
            f"it stays reachable"
        )


@dataclass(frozen=True, slots=True)
class Protected:
    """What is never dropped: bypass addresses (exact) and allowlisted CIDRs."""

    bypass: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        v4 = [b for b in self.bypass if ":" not in b]
        if len(v4) > MAX_BYPASS4 or len(self.bypass) - len(v4) > MAX_BYPASS6:
            raise ValueError(f"at most {MAX_BYPASS4} IPv4 and {MAX_BYPASS6} IPv6 bypass addresses")
        for b in self.bypass:
            _, _, plen = parse_cidr(b)
            if "/" in b or plen not in (32, 128):
                raise ValueError(f"bypass {b!r} must be one address")
        for a in self.allow:
            parse_cidr(a)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Aggregated rules with ids: block IPv4 ``1..n4``, block IPv6 next, then allow."""

    v4_addr: npt.NDArray[np.uint32]
    v4_plen: npt.NDArray[np.uint8]
    v6: tuple[tuple[int, int], ...]
    allow_v4_addr: npt.NDArray[np.uint32]
    allow_v4_plen: npt.NDArray[np.uint8]
    allow_v6: tuple[tuple[int, int], ...]
    protected: Protected
    sources: tuple[str, ...]
    listed: int
    conflicts: tuple[Conflict, ...]

    @property
    def block_count(self) -> int:
        """Block rules after aggregation."""
        return len(self.v4_addr) + len(self.v6)

    @property
    def rule_count(self) -> int:
        """Every rule id in use (block and allow)."""
        return self.block_count + len(self.allow_v4_addr) + len(self.allow_v6)

    @property
    def first_allow_id(self) -> int:
        """The id of the first allowlist rule."""
        return self.block_count + 1

    def table(self) -> npt.NDArray[np.void]:
        """``struct nw_shield_rule`` for ids ``0..rule_count`` (id 0 is unused)."""
        t = np.zeros(self.rule_count + 1, dtype=RULE_DTYPE)
        n4, n6, a4 = len(self.v4_addr), len(self.v6), len(self.allow_v4_addr)
        for first, addr, plen, allow in (
            (1, self.v4_addr, self.v4_plen, 0),
            (n4 + n6 + 1, self.allow_v4_addr, self.allow_v4_plen, 1),
        ):
            sl = slice(first, first + len(addr))
            t["addr"][sl, 0] = addr
            t["family"][sl] = 4
            t["plen"][sl] = plen
            t["allow"][sl] = allow
        for first, v6, allow in ((n4 + 1, self.v6, 0), (n4 + n6 + a4 + 1, self.allow_v6, 1)):
            for i, (a, p) in enumerate(v6):
                t["addr"][first + i] = [(a >> s) & 0xFFFFFFFF for s in (96, 64, 32, 0)]
                t["family"][first + i] = 6
                t["plen"][first + i] = p
                t["allow"][first + i] = allow
        return t


def rule_text(record: np.void) -> str:
    """The CIDR of one ``nw_shield_rule`` record."""
    words = [int(w) for w in record["addr"]]
    if int(record["family"]) == 4:
        return f"{ipaddress.IPv4Address(words[0])}/{int(record['plen'])}"
    value = (words[0] << 96) | (words[1] << 64) | (words[2] << 32) | words[3]
    return f"{ipaddress.IPv6Address(value)}/{int(record['plen'])}"


def _split(cidrs: Sequence[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for c in cidrs:
        family, value, plen = parse_cidr(c)
        (v4 if family == socket.AF_INET else v6).append((value, plen))
    return v4, v6


def _conflicts(feeds: Sequence[Feed], protected: Protected) -> list[Conflict]:
    found: list[Conflict] = []
    for kind, items in (("bypass", protected.bypass), ("allow", protected.allow)):
        for text in items:
            family, value, plen = parse_cidr(text)
            for feed in feeds:
                if family == socket.AF_INET:
                    s, e = v4_ranges(feed.v4_addr, feed.v4_plen)
                    lo, hi = value, value + (1 << (32 - plen))
                    hit = np.flatnonzero((s < hi) & (e > lo))
                    entries = [
                        f"{ipaddress.IPv4Address(int(feed.v4_addr[i]))}/{int(feed.v4_plen[i])}"
                        for i in hit[:1]
                    ]
                    count = len(hit)
                else:
                    net = ipaddress.IPv6Network((value, plen))
                    over = [
                        ipaddress.IPv6Network((a, p))
                        for a, p in zip(feed.v6_addr, feed.v6_plen, strict=True)
                        if net.overlaps(ipaddress.IPv6Network((a, p)))
                    ]
                    entries, count = [str(n) for n in over[:1]], len(over)
                if count:
                    found.append(Conflict(kind, text, feed.source, entries[0], count))
    return found


def build_ruleset(feeds: Sequence[Feed], protected: Protected) -> RuleSet:
    """Aggregate the feeds' CIDRs, attach the allowlist and report conflicts."""
    if feeds:
        a4 = np.concatenate([f.v4_addr for f in feeds])
        p4 = np.concatenate([f.v4_plen for f in feeds])
    else:
        a4, p4 = np.zeros(0, np.uint32), np.zeros(0, np.uint8)
    v4_addr, v4_plen = aggregate_v4(a4, p4)
    allow4, allow6 = _split(protected.allow)
    aa, ap = aggregate_v4(
        np.array([a for a, _ in allow4], np.uint32), np.array([p for _, p in allow4], np.uint8)
    )
    v6 = aggregate_v6((a, p) for f in feeds for a, p in zip(f.v6_addr, f.v6_plen, strict=True))
    return RuleSet(
        v4_addr,
        v4_plen,
        tuple(v6),
        aa,
        ap,
        tuple(aggregate_v6(allow6)),
        protected,
        tuple(f.source for f in feeds),
        sum(f.count for f in feeds),
        tuple(_conflicts(feeds, protected)),
    )
