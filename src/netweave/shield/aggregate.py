"""Aggregation of overlapping and adjacent CIDRs into the fewest CIDRs covering the same
addresses: sorted integer ranges merged with numpy for IPv4 (a million entries in well
under a second), plain integers for IPv6."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

U32 = npt.NDArray[np.uint32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


def v4_ranges(addr: U32, plen: U8) -> tuple[I64, I64]:
    """Half-open ``[start, end)`` ranges (int64) of IPv4 CIDRs."""
    size = np.left_shift(np.int64(1), (32 - plen.astype(np.int64)))
    start = addr.astype(np.int64) & ~(size - 1)
    return start, start + size


def merge_ranges(start: I64, end: I64) -> tuple[I64, I64]:
    """Merge overlapping and adjacent half-open ranges; the result is sorted and disjoint."""
    if len(start) == 0:
        return start.copy(), end.copy()
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(s)) - 1
    return s[heads], reach[tails]


def ranges_to_v4_cidrs(start: I64, end: I64) -> tuple[U32, U8]:
    """The fewest CIDRs exactly covering disjoint ranges, sorted by address."""
    out_a: list[I64] = []
    out_p: list[npt.NDArray[np.int64]] = []
    s, e = start.copy(), end.copy()
    for _ in range(70):  # each range splits into at most 64 CIDRs
        live = s < e
        if not live.any():
            break
        s, e = s[live], e[live]
        low = np.where(s == 0, np.int64(1) << 32, s & -s)
        _, top_exp = np.frexp((e - s).astype(np.float64))  # span = m * 2**exp, m in [0.5, 1)
        size = np.minimum(low, np.left_shift(np.int64(1), top_exp.astype(np.int64) - 1))
        _, size_exp = np.frexp(size.astype(np.float64))
        out_a.append(s.copy())
        out_p.append(33 - size_exp.astype(np.int64))
        s = s + size
    if not out_a:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint8)
    a = np.concatenate(out_a)
    p = np.concatenate(out_p)
    order = np.argsort(a, kind="stable")
    return a[order].astype(np.uint32), p[order].astype(np.uint8)


def aggregate_v4(addr: U32, plen: U8) -> tuple[U32, U8]:
    """Aggregate IPv4 CIDRs (any order, overlaps allowed) into the fewest equivalent CIDRs."""
    s, e = v4_ranges(addr, plen)
    return ranges_to_v4_cidrs(*merge_ranges(s, e))


def aggregate_v6(cidrs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Aggregate IPv6 ``(address, prefix length)`` pairs into the fewest equivalent CIDRs."""
    ranges = sorted(
        (a & ~((1 << (128 - p)) - 1), (a & ~((1 << (128 - p)) - 1)) + (1 << (128 - p)))
        for a, p in cidrs
    )
    merged: list[list[int]] = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out: list[tuple[int, int]] = []
    for first, end in merged:
        at = first
        while at < end:
            low = at & -at if at else 1 << 128
            top = 1 << ((end - at).bit_length() - 1)
            size = min(low, top)
            out.append((at, 128 - (size.bit_length() - 1)))
            at += size
    return out
