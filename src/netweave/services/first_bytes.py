"""The bytes a subject may start with for a match line anchored at ``^``.

Read from the parse tree of the translated pattern (CPython's ``re._parser``): a
sequence contributes the first bytes of its items up to the first one that cannot match
empty; groups, alternations and repeats are followed; zero-width items (``^``, ``\\b``,
lookarounds) are skipped. Conservative: anything not understood, or a pattern that may
match the empty string, gives all 256 bytes.
"""

from __future__ import annotations

import re
from typing import Any, Final

from netweave.services.pcre import UnsupportedPatternError, translate_pcre
from netweave.services.records import MatchRule

try:  # private to CPython; without it every line simply accepts every first byte
    from re import _constants as sre_c  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other interpreters
    sre_c = sre_parse = None

__all__ = ["ALL_BYTES", "first_bytes"]

ALL_BYTES: Final = bytes(range(256))
_CATEGORIES: Final = {"DIGIT": rb"\d", "SPACE": rb"\s", "WORD": rb"\w"}

Firsts = frozenset[int] | None  # None: any byte


def first_bytes(rule: MatchRule) -> bytes:
    """Bytes (sorted) a subject ``rule`` matches may start with; all bytes when unsure."""
    if sre_parse is None or not rule.pattern.startswith("^"):
        return ALL_BYTES
    flags = re.IGNORECASE if rule.ignorecase else 0
    try:
        tree = sre_parse.parse(translate_pcre(rule.pattern).encode("latin-1"), flags)
        items = list(tree)
        if not items or items[0] != (sre_c.AT, sre_c.AT_BEGINNING):
            return ALL_BYTES  # e.g. ^a|b: an alternation at the top, not all anchored
        fold = rule.ignorecase or bool(tree.state.flags & re.IGNORECASE)
        found, nullable = _sequence(items[1:], fold)
    except (UnsupportedPatternError, re.error, RecursionError, ValueError, TypeError):
        return ALL_BYTES
    if found is None or nullable:
        return ALL_BYTES
    return bytes(sorted(found))


def _sequence(items: Any, fold: bool) -> tuple[Firsts, bool]:
    """(first bytes, may match empty) of a sequence of parse items."""
    found: set[int] = set()
    for op, av in items:
        got, nullable = _item(op, av, fold)
        if got is None:
            return None, False
        found |= got
        if not nullable:
            return frozenset(found), False
    return frozenset(found), True


def _item(op: Any, av: Any, fold: bool) -> tuple[Firsts, bool]:
    if op is sre_c.LITERAL:
        return _folded({av}, fold), False
    if op is sre_c.IN:
        return _class(av, fold), False
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
        low, _high, sub = av
        got, nullable = _sequence(sub, fold)
        return got, nullable or low == 0
    if op is sre_c.SUBPATTERN:
        _group, add_flags, del_flags, sub = av
        if add_flags or del_flags:
            return None, False
        return _sequence(sub, fold)
    if op is sre_c.ATOMIC_GROUP:
        return _sequence(av, fold)
    if op is sre_c.BRANCH:
        union: set[int] = set()
        any_nullable = False
        for branch in av[1]:
            got, nullable = _sequence(branch, fold)
            if got is None:
                return None, False
            union |= got
            any_nullable = any_nullable or nullable
        return frozenset(union), any_nullable
    if op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
        return frozenset(), True  # zero-width: ignoring what it asserts only adds bytes
    return None, False  # ANY, NOT_LITERAL, back references, ...: any byte


def _class(items: Any, fold: bool) -> Firsts:
    members: set[int] = set()
    negate = False
    for op, av in items:
        if op is sre_c.NEGATE:
            negate = True
        elif op is sre_c.LITERAL:
            members.add(av)
        elif op is sre_c.RANGE:
            members.update(range(av[0], av[1] + 1))
        elif op is sre_c.CATEGORY:
            name = str(av).removeprefix("CATEGORY_")
            inverse = name.startswith("NOT_")
            spelled = _CATEGORIES.get(name.removeprefix("NOT_"))
            if spelled is None:
                return None
            regex = re.compile(spelled)
            members.update(b for b in range(256) if (regex.match(bytes([b])) is None) == inverse)
        else:
            return None
    members = set(_folded(members, fold))
    if negate:
        # a negated class with case folding: a byte is out only when all its cases are out
        return frozenset(b for b in range(256) if not _folded({b}, fold) & members)
    return frozenset(members)


def _folded(members: set[int], fold: bool) -> frozenset[int]:
    """``members`` with the other ASCII case of each letter when matching ignores case."""
    if not fold:
        return frozenset(members)
    out = set(members)
    for b in members:
        if 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A:
            out.add(b ^ 0x20)
    return frozenset(out)
