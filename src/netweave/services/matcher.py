"""Match response bytes against a probe's match lines, as nmap's ``testMatch`` does.

Patterns are compiled lazily, one probe at a time, on first use, and kept. Each match line
gets a cheap prefilter (the bytes a subject may start with and the literal prefix of an
anchored pattern) so most lines are skipped without running a regex; the order of the
lines, and so the result, is the one nmap would give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from netweave.services.pcre import UnsupportedPatternError, compile_pcre, translate_pcre
from netweave.services.probes_file import ProbeDatabase
from netweave.services.records import MatchRule, Probe, ServiceMatch
from netweave.services.templates import fill_templates

__all__ = ["DEFAULT_SUBJECT_CAP", "Matcher", "PatternFailure"]

DEFAULT_SUBJECT_CAP: Final = 16384
_ALL_BYTES: Final = frozenset(range(256))
_MAX_PREFIX: Final = 24
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_PLAIN: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !\"#%&',-/:;<=>@_`~"
)
_ESCAPED_BYTES: Final = {"r": 0x0D, "n": 0x0A, "t": 0x09, "f": 0x0C, "e": 0x1B, "a": 0x07}


@dataclass(frozen=True, slots=True)
class PatternFailure:
    """A match line whose PCRE pattern Python's ``re`` cannot run; it never matches."""

    line: int
    service: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Entry:
    rule: MatchRule
    prefix: bytes
    prefix_fold: bool


_NOT_YET: Final = object()


class _ProbeIndex:
    """The match lines of one probe, bucketed by the first byte they accept.

    Regexes are compiled one by one the first time the prefilter lets a subject reach
    them; ``regexes[i]`` is the compiled pattern, None if it cannot compile, or _NOT_YET.
    """

    __slots__ = ("by_first_byte", "entries", "regexes")

    def __init__(self, entries: list[_Entry], first: list[frozenset[int]]) -> None:
        self.entries = entries
        self.regexes: list[object] = [_NOT_YET] * len(entries)
        buckets: list[list[int]] = [[] for _ in range(256)]
        for index, accepted in enumerate(first):
            for byte in accepted:
                buckets[byte].append(index)
        self.by_first_byte: tuple[tuple[int, ...], ...] = tuple(tuple(b) for b in buckets)


class Matcher:
    """Matches responses against the probes of one :class:`ProbeDatabase`.

    Not thread-safe (it fills its regex cache on first use of each probe).
    """

    def __init__(self, db: ProbeDatabase, subject_cap: int = DEFAULT_SUBJECT_CAP) -> None:
        self.db = db
        self.subject_cap = subject_cap
        self._indexes: dict[tuple[str, str], _ProbeIndex] = {}
        self._failures: dict[int, PatternFailure] = {}

    @property
    def failures(self) -> tuple[PatternFailure, ...]:
        """Match lines found so far that cannot compile (grows as probes are compiled)."""
        return tuple(self._failures[k] for k in sorted(self._failures))

    def compile_all(self) -> tuple[PatternFailure, ...]:
        """Compile every pattern now (for reports and benchmarks); return all failures."""
        for probe in self.db.probes:
            index = self._index(probe)
            for position, entry in enumerate(index.entries):
                if index.regexes[position] is _NOT_YET:
                    index.regexes[position] = self._compile(entry.rule)
        return self.failures

    def match(self, probe: Probe, response: bytes) -> ServiceMatch | None:
        """The match nmap reports for ``response`` to ``probe``: its fallbacks in order.

        The first fallback probe with any matching line (soft or hard) wins, and inside
        a probe the first matching line in file order wins, exactly as nmap's read handler.
        """
        if not response:
            return None
        for candidate in self.db.fallbacks(probe):
            found = self.match_lines(candidate, response)
            if found is not None:
                return found
        return None

    def match_lines(self, probe: Probe, response: bytes) -> ServiceMatch | None:
        """The first of ``probe``'s own match lines matching ``response`` (no fallbacks)."""
        if not response:
            return None
        subject = response[: self.subject_cap]
        index = self._index(probe)
        folded: bytes | None = None
        for position in index.by_first_byte[subject[0]]:
            entry = index.entries[position]
            if entry.prefix:
                if entry.prefix_fold:
                    if folded is None:
                        folded = subject[:256].lower()
                    if not folded.startswith(entry.prefix):
                        continue
                elif not subject.startswith(entry.prefix):
                    continue
            regex = index.regexes[position]
            if regex is _NOT_YET:
                regex = index.regexes[position] = self._compile(entry.rule)
            if not isinstance(regex, re.Pattern):
                continue
            found = regex.search(subject)
            if found is None:
                continue
            rule = entry.rule
            product, version, info, hostname, ostype, devicetype, cpes = fill_templates(
                rule.templates, found
            )
            return ServiceMatch(
                service=rule.service,
                soft=rule.soft,
                probe=probe.name,
                line=rule.line,
                product=product,
                version=version,
                info=info,
                hostname=hostname,
                ostype=ostype,
                devicetype=devicetype,
                cpe=cpes,
            )
        return None

    def _index(self, probe: Probe) -> _ProbeIndex:
        key = (probe.protocol, probe.name)
        index = self._indexes.get(key)
        if index is None:
            entries: list[_Entry] = []
            first: list[frozenset[int]] = []
            for rule in probe.matches:
                prefix, accepted = _prefilter(rule)
                fold = rule.ignorecase and any(
                    0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in prefix
                )
                entries.append(_Entry(rule, prefix.lower() if fold else prefix, fold))
                first.append(accepted)
            index = _ProbeIndex(entries, first)
            self._indexes[key] = index
        return index

    def _compile(self, rule: MatchRule) -> re.Pattern[bytes] | None:
        try:
            return compile_pcre(rule.pattern, ignorecase=rule.ignorecase, dotall=rule.dotall)
        except (UnsupportedPatternError, re.error, OverflowError, RecursionError) as exc:
            self._failures[rule.line] = PatternFailure(rule.line, rule.service, str(exc))
            return None


def _prefilter(rule: MatchRule) -> tuple[bytes, frozenset[int]]:
    """The literal prefix a subject must start with and the first bytes it may start with.

    Conservative: (b"", all bytes) whenever the pattern is not plainly anchored.
    """
    pattern = rule.pattern
    if not pattern.startswith("^"):
        return b"", _ALL_BYTES
    if "(?" in pattern and not _only_plain_groups(pattern):
        return b"", _ALL_BYTES
    if _has_top_level_alternation(pattern):
        return b"", _ALL_BYTES
    prefix = bytearray()
    i = 1
    n = len(pattern)
    while i < n and len(prefix) < _MAX_PREFIX:
        ch = pattern[i]
        value: int | None = None
        width = 1
        if ch in _PLAIN or ord(ch) >= 0x80:
            value = ord(ch)
        elif ch == "\\" and i + 1 < n:
            esc = pattern[i + 1]
            width = 2
            if esc in _ESCAPED_BYTES:
                value = _ESCAPED_BYTES[esc]
            elif esc == "0" and not pattern[i + 2 : i + 3].isdigit():
                value = 0
            elif esc == "x" and i + 3 < n and pattern[i + 2] in _HEX and pattern[i + 3] in _HEX:
                value = int(pattern[i + 2 : i + 4], 16)
                width = 4
            elif not esc.isalnum() and esc.isascii():
                value = ord(esc)
        if value is None:
            break
        after = pattern[i + width : i + width + 1]
        if after in ("?", "*", "{"):
            break
        prefix.append(value)
        i += width
        if after == "+":
            break
    if prefix:
        head = prefix[0]
        accepted = {head}
        if rule.ignorecase and chr(head).isascii() and chr(head).isalpha():
            accepted |= {ord(chr(head).lower()), ord(chr(head).upper())}
        return bytes(prefix), frozenset(accepted)
    return b"", _first_atom_bytes(rule)


def _only_plain_groups(pattern: str) -> bool:
    return all(pattern.startswith(("(?:", "(?="), m.start()) for m in re.finditer(r"\(\?", pattern))


def _has_top_level_alternation(pattern: str) -> bool:
    if "|" not in pattern:
        return False
    depth = 0
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return True
        i += 1
    return False


_ATOM_CACHE: dict[tuple[str, bool], frozenset[int]] = {}


def _first_atom_bytes(rule: MatchRule) -> frozenset[int]:
    """Bytes the first atom after ``^`` accepts (a class or an escape), else all bytes."""
    pattern = rule.pattern
    atom = ""
    if pattern.startswith("^["):
        end = 2
        if pattern[end : end + 1] == "^":
            end += 1
        if pattern[end : end + 1] == "]":
            end += 1
        while end < len(pattern) and pattern[end] != "]":
            end += 2 if pattern[end] == "\\" else 1
        atom = pattern[1 : end + 1]
    elif pattern.startswith("^\\") and len(pattern) > 2 and pattern[2] in "dDsSwW":
        atom = pattern[1:3]
    if not atom or pattern[1 + len(atom) : 2 + len(atom)] in ("?", "*", "{", ""):
        return _ALL_BYTES
    key = (atom, rule.ignorecase)
    cached = _ATOM_CACHE.get(key)
    if cached is None:
        try:
            regex = re.compile(
                translate_pcre(atom).encode("latin-1"), re.IGNORECASE if rule.ignorecase else 0
            )
        except (UnsupportedPatternError, re.error):
            cached = _ALL_BYTES
        else:
            cached = frozenset(b for b in range(256) if regex.fullmatch(bytes([b])))
        _ATOM_CACHE[key] = cached
    return cached
