"""Packets the kernel observer's per-CPU flow cache holds that its flow tables lack yet.

The observer counts most packets of an established flow in a slot of a per-CPU array (plain
adds, no lookup in the shared LRU table) and moves them to the flow's table entry every 64th
packet of a direction, on SYN/FIN/RST, on a new flag or first payload, and when another
flow takes the slot. A reader adds what the slots hold to what the table holds, so counts
are exact whenever they are read.
"""

from __future__ import annotations

from ctypes import Structure, sizeof

import numpy as np

from netweave.capture import kernel_records as kr
from netweave.kernel import Map

Pending = tuple[int, int, int, int]
"""Packets lo->hi, bytes lo->hi, packets hi->lo, bytes hi->lo."""


def pending_counts(cache: Map, slot: type[kr.FlowSlot4 | kr.FlowSlot6]) -> dict[bytes, Pending]:
    """Every flow key with counts in some CPU's slot of ``cache``, summed over the CPUs.

    Read after the flow table: a slot emptied into the table between the two reads is then
    missing from both, so a read can fall short by a moment's packets but never counts one
    twice (readers take only the growth of cumulative counts).
    """
    raw = b"".join(value for _index, value in cache.items())
    slots = np.frombuffer(raw, _dtype(slot))
    busy = slots[(slots["packets_lo_hi"] | slots["packets_hi_lo"]) != 0]
    out: dict[bytes, Pending] = {}
    for key, p_lh, b_lh, p_hl, b_hl in busy.tolist():  # a row per busy slot of each CPU
        s = out.get(key, (0, 0, 0, 0))
        out[key] = (s[0] + p_lh, s[1] + b_lh, s[2] + p_hl, s[3] + b_hl)
    return out


def _dtype(slot: type[Structure]) -> np.dtype[np.void]:
    tail = slot.t.offset
    counts = ("packets_lo_hi", "bytes_lo_hi", "packets_hi_lo", "bytes_hi_lo")
    return np.dtype(
        {
            "names": ["key", *counts],
            "formats": [f"V{tail}"] + ["=u8"] * len(counts),
            "offsets": [0] + [tail + getattr(kr.SlotTail, c).offset for c in counts],
            "itemsize": (sizeof(slot) + 7) // 8 * 8,  # per-CPU values are 8-byte aligned
        }
    )
