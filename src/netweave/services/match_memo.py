"""A bounded memo of match results: real servers repeat their banners and replies.

Keys are exact (the probe's protocol and name, and the subject bytes the matcher looks at,
i.e. the response cut at its ``subject_cap``), so a hit returns what matching would
return. Least recently used entries go first once either bound is reached: a number of
entries, and the bytes of the subjects kept (the memo's memory is about that sum).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from netweave.services.records import ServiceMatch

__all__ = ["DEFAULT_MEMO_BYTES", "DEFAULT_MEMO_ENTRIES", "MatchMemo"]

DEFAULT_MEMO_ENTRIES: Final = 4096
DEFAULT_MEMO_BYTES: Final = 8 << 20
_ENTRY_OVERHEAD: Final = 200  # key tuple, dict slot and result, roughly, per entry

MemoKey = tuple[str, str, bytes]


class MatchMemo:
    """LRU of ``(protocol, probe name, subject) -> ServiceMatch | None``; not thread-safe."""

    __slots__ = ("_entries", "_max_bytes", "_max_entries", "_size", "hits", "misses")

    def __init__(
        self, max_entries: int = DEFAULT_MEMO_ENTRIES, max_bytes: int = DEFAULT_MEMO_BYTES
    ) -> None:
        self._entries: OrderedDict[MemoKey, ServiceMatch | None] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The bytes this memo accounts for (subjects plus a fixed overhead per entry)."""
        return self._size

    def lookup(self, key: MemoKey) -> tuple[bool, ServiceMatch | None]:
        """(True, result) when ``key`` is known, else (False, None)."""
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
            self.hits += 1
            return True, entries[key]
        self.misses += 1
        return False, None

    def store(self, key: MemoKey, result: ServiceMatch | None) -> None:
        """Remember ``result`` for ``key``, dropping the least recently used as needed."""
        cost = len(key[2]) + _ENTRY_OVERHEAD
        if cost > self._max_bytes or self._max_entries <= 0 or key in self._entries:
            return
        entries = self._entries
        while entries and (
            len(entries) >= self._max_entries or self._size + cost > self._max_bytes
        ):
            old, _ = entries.popitem(last=False)
            self._size -= len(old[2]) + _ENTRY_OVERHEAD
        entries[key] = result
        self._size += cost
