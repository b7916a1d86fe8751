"""Prefilter soundness over every match line of Debian's file.

For each line subjects are generated from the compiled regex itself (walking Python's
parse tree: repeats at their minimum and first branches, or optional parts taken and last
branches); when the regex
really matches that subject, the prefilter must let it through. A prefilter that skipped
a matching line would silently change nmap's answer.
"""

from __future__ import annotations

import re
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import pytest

from netweave.services.matcher import prefilter
from netweave.services.pcre import UnsupportedPatternError, compile_pcre, translate_pcre
from netweave.services.probes_file import DEFAULT_PROBES_PATH, load_probes

pytestmark = pytest.mark.skipif(
    not DEFAULT_PROBES_PATH.exists(), reason=f"{DEFAULT_PROBES_PATH} missing: install nmap-common"
)

_CATEGORY = {
    sre_c.CATEGORY_DIGIT: b"7",
    sre_c.CATEGORY_NOT_DIGIT: b"x",
    sre_c.CATEGORY_SPACE: b" ",
    sre_c.CATEGORY_NOT_SPACE: b"x",
    sre_c.CATEGORY_WORD: b"w",
    sre_c.CATEGORY_NOT_WORD: b"-",
}


_CATEGORY_RE = {
    sre_c.CATEGORY_DIGIT: rb"\d",
    sre_c.CATEGORY_NOT_DIGIT: rb"\D",
    sre_c.CATEGORY_SPACE: rb"\s",
    sre_c.CATEGORY_NOT_SPACE: rb"\S",
    sre_c.CATEGORY_WORD: rb"\w",
    sre_c.CATEGORY_NOT_WORD: rb"\W",
}


class _UnsupportedError(Exception):
    pass


def _class_byte(items: list[tuple[Any, Any]]) -> bytes:
    negate = any(op is sre_c.NEGATE for op, _ in items)
    if negate:
        for candidate in b"xX7 -_\x00\xff":
            probe = bytes([candidate])
            if not any(_in_item(op, av, probe) for op, av in items if op is not sre_c.NEGATE):
                return probe
        raise _UnsupportedError
    op, av = items[0]
    if op is sre_c.LITERAL:
        return bytes([av])
    if op is sre_c.RANGE:
        return bytes([av[0]])
    if op is sre_c.CATEGORY:
        return _CATEGORY[av]
    raise _UnsupportedError


def _in_item(op: Any, av: Any, probe: bytes) -> bool:
    if op is sre_c.LITERAL:
        return probe[0] == av
    if op is sre_c.RANGE:
        return av[0] <= probe[0] <= av[1]
    if op is sre_c.CATEGORY:
        return re.fullmatch(_CATEGORY_RE[av], probe) is not None
    raise _UnsupportedError


def _generate(tree: Any, groups: dict[int, bytes], rich: bool) -> bytes:
    out = b""
    for op, av in tree:
        if op is sre_c.LITERAL:
            out += bytes([av])
        elif op is sre_c.NOT_LITERAL:
            out += b"x" if av != ord("x") else b"y"
        elif op is sre_c.ANY:
            out += b"x"
        elif op is sre_c.IN:
            out += _class_byte(av)
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
            low, high, sub = av
            out += _generate(sub, groups, rich) * (max(low, 1, min(high, 2)) if rich else low)
        elif op is sre_c.SUBPATTERN:
            group, _add, _del, sub = av
            text = _generate(sub, groups, rich)
            if group:
                groups[group] = text
            out += text
        elif op is sre_c.ATOMIC_GROUP:
            out += _generate(av, groups, rich)
        elif op is sre_c.BRANCH:
            out += _generate(av[1][-1] if rich else av[1][0], groups, rich)
        elif op is sre_c.GROUPREF:
            out += groups.get(av, b"")
        elif op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
            continue
        else:
            raise _UnsupportedError
    return out


@pytest.mark.parametrize("rich", [False, True], ids=["minimal", "optional-parts-taken"])
def test_prefilter_admits_a_subject_generated_from_every_line(rich: bool) -> None:
    db = load_probes(DEFAULT_PROBES_PATH)
    checked = 0
    for probe in db.probes:
        for rule in probe.matches:
            try:
                regex = compile_pcre(rule.pattern, ignorecase=rule.ignorecase, dotall=rule.dotall)
                flags = (re.IGNORECASE if rule.ignorecase else 0) | (
                    re.DOTALL if rule.dotall else 0
                )
                tree = sre_parse.parse(translate_pcre(rule.pattern).encode("latin-1"), flags)
                subject = _generate(tree, {}, rich)
            except (_UnsupportedError, UnsupportedPatternError, re.error, KeyError, IndexError):
                continue
            if not subject or regex.search(subject) is None:
                continue
            prefix, needles, first = prefilter(rule)
            haystack = subject.lower() if rule.ignorecase else subject
            want_prefix = prefix.lower() if rule.ignorecase else prefix
            assert haystack.startswith(want_prefix), (rule.line, subject)
            for needle in needles:
                assert (needle.lower() if rule.ignorecase else needle) in haystack, rule.line
            assert subject[0] in first, (rule.line, subject)
            checked += 1
    # most lines yield a subject their own regex matches; all of those must pass
    assert checked > 8000
