"""Pausing Python's cyclic garbage collector around bursts of acyclic records.

Replay, fingerprinting, socket snapshots and the graph build tens of thousands of records
that hold no reference cycles; every few hundred allocations would otherwise start a
collection that walks everything built so far.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic collector for the ``with`` block (re-enabled only if it was on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
