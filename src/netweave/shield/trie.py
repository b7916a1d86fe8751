"""The shield's lookup tables, built in userspace with numpy and copied into array maps.

IPv4: a multibit trie. ``l1`` has 2^20 slots indexed by the address's top 20 bits; below
it, chunks of 16 slots each consume 4 more bits (levels for bits 20-23, 24-27, 28-31). A
slot holds 0 (no rule), a rule id, or ``CHILD | chunk``; the best match of every slot is
pushed down to it (leaf pushing), so the kernel stops at the first slot without CHILD.
The tables come from "painting" the address space: the sorted boundaries of every rule,
the value that holds from each boundary on, and a slot needs a child exactly when a
boundary falls strictly inside it.

IPv6: one hash keyed by (prefix length, masked address); the kernel probes the lengths
present, longest first. Allowlist entries take precedence over block rules in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CHILD = 0x80000000
ALLOW = 0x40000000
ID_MASK = 0x3FFFFFFF
L1_BITS = 20
L1_SLOTS = 1 << L1_BITS
STRIDE = 4
SHIFTS = (32 - L1_BITS, 8, 4, 0)  # address bits below each level's slot index

U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class V4Tables:
    """The IPv4 trie: first level and the chunk array (16 slots per chunk, concatenated)."""

    l1: U32
    chunks: U32

    def any24(self) -> npt.NDArray[np.bool_]:
        """One flag per /24: True when some rule covers an address in it."""
        flags = np.repeat(self.l1 != 0, 16)  # a rule id in a slot covers its 16 /24s
        child = (self.l1 & CHILD) != 0
        if child.any():
            below = self.chunks.reshape(-1, 16)[self.l1[child] & ~np.uint32(CHILD)] != 0
            flags.reshape(-1, 16)[child] = below
        return flags

    @property
    def chunk_count(self) -> int:
        """How many 16-slot chunks hang below the first level."""
        return len(self.chunks) // 16


def _unique_sorted(a: I64) -> I64:
    """Sorted distinct values of ``a`` (sort-based; numpy's hash-based unique is slower)."""
    a = np.sort(a)
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _overlay(cuts: I64, values: U32, start: I64, end: I64, val: U32) -> tuple[I64, U32]:
    """Paint disjoint ranges ``[start, end) -> val`` over a painted space."""
    if len(start) == 0:
        return cuts, values
    order = np.argsort(start)
    s, e, v = start[order], end[order], val[order]
    new_cuts = _unique_sorted(np.concatenate([cuts, s, e[e < (1 << 32)]]))
    new_values = values[np.searchsorted(cuts, new_cuts, side="right") - 1]
    idx = np.searchsorted(s, new_cuts, side="right") - 1
    ok = idx >= 0
    inside = np.zeros(len(new_cuts), dtype=bool)
    inside[ok] = new_cuts[ok] < e[idx[ok]]
    new_values[inside] = v[idx[inside]]
    return new_cuts, new_values


def paint(block: tuple[I64, I64, U32], allow: tuple[I64, I64, U32]) -> tuple[I64, U32]:
    """Boundaries and values of the address space painted with disjoint ranges.

    ``block`` and ``allow`` are ``(start, end, value)`` arrays of disjoint half-open ranges
    each; where both cover an address, the allow value wins. Returns sorted boundaries
    ``b`` (starting at 0) and ``v`` such that every address in ``[b[i], b[i+1])`` maps to
    ``v[i]``, with no two neighbours equal.
    """
    cuts: I64 = np.zeros(1, dtype=np.int64)
    values: U32 = np.zeros(1, dtype=np.uint32)
    for start, end, val in (block, allow):  # allow painted last: it wins
        cuts, values = _overlay(cuts, values, start, end, val)
    keep = np.ones(len(cuts), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return cuts[keep], values[keep]


def _scatter_last(target: I64, positions: I64, indices: I64) -> None:
    """``target[p] = i`` keeping, for repeated positions, the last (largest) index."""
    if len(positions):
        last = np.ones(len(positions), dtype=bool)
        last[:-1] = positions[1:] != positions[:-1]
        target[positions[last]] = indices[last]


def build_v4(bounds: I64, values: U32) -> V4Tables:
    """The trie tables of a painted address space (see :func:`paint`).

    Each slot takes the value of the last boundary at or below its first address: the
    index of that boundary is scattered to the first slot starting at or above it and
    carried forward with a running maximum (boundaries and slots are both in address
    order). A chunk starts from its parent slot's boundary index.
    """
    j = np.arange(len(bounds), dtype=np.int64)
    levels: list[U32] = []
    starts: list[I64] = []  # first address covered by each chunk, in id order
    parents = np.zeros(0, dtype=np.int64)
    parent_k = np.zeros(0, dtype=np.int64)
    allocated = 0  # chunks handed out so far, level by level, in address order
    for depth, shift in enumerate(SHIFTS):
        if depth == 0:
            k = np.zeros(L1_SLOTS, dtype=np.int64)
            q = (bounds + (1 << shift) - 1) >> shift
            sel = q < L1_SLOTS
            _scatter_last(k, q[sel], j[sel])
        else:
            width = shift + STRIDE
            low = bounds & ((1 << width) - 1)
            inner = low != 0
            chunk = np.searchsorted(parents, bounds[inner] >> width)
            q = (low[inner] + (1 << shift) - 1) >> shift
            ok = q < 16
            k = np.repeat(parent_k, 16)
            _scatter_last(k, chunk[ok] * 16 + q[ok], j[inner][ok])
        k = np.maximum.accumulate(k)
        slots = values[k]
        if shift:
            needing = _unique_sorted(bounds[(bounds & ((1 << shift) - 1)) != 0] >> shift)
            if depth == 0:
                pos = needing
            else:
                pos = np.searchsorted(parents, needing >> STRIDE) * 16 + (needing & 15)
            parent_k = k[pos]
            ids = allocated + np.arange(len(needing), dtype=np.int64)
            slots[pos] = (CHILD | ids).astype(np.uint32)
            allocated += len(needing)
            parents = needing
            starts.append(needing << shift)
        levels.append(slots)
    return _depth_first(levels[0], np.concatenate(levels[1:]), np.concatenate(starts))


def _depth_first(l1: U32, chunks: U32, starts: I64) -> V4Tables:
    """Renumber chunks depth first, so one address's chunks sit close together.

    Built level by level, the three chunks below a /20 holding a /32 land megabytes
    apart; in depth-first order they are neighbours (same page, adjacent cache lines),
    which makes lookups of random addresses markedly cheaper.
    """
    n = len(starts)
    # Children start at or after their parent and are built after it: sorting by start
    # address, ties by build order (id), gives depth-first preorder.
    order = np.lexsort((np.arange(n), starts))
    rank = np.empty(n, dtype=np.uint32)
    rank[order] = np.arange(n, dtype=np.uint32)
    rows = np.ascontiguousarray(chunks).view(np.dtype((np.void, 64)))  # one chunk per row
    out = rows[order].view(np.uint32).copy()
    first = l1.copy()
    for table in (first, out):
        child = (table & CHILD) != 0
        table[child] = CHILD | rank[table[child] & ~np.uint32(CHILD)]
    return V4Tables(first, out)


def lookup_v4(tables: V4Tables, addr: int) -> int:
    """The slot value the kernel finds for ``addr`` (reference for tests and tools)."""
    v = int(tables.l1[addr >> SHIFTS[0]])
    for shift in SHIFTS[1:]:
        if not v & CHILD:
            return v
        v = int(tables.chunks[((v & ~CHILD) << 4) | ((addr >> shift) & 15)])
    return v
