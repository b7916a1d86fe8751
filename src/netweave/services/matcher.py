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
_MIN_NEEDLE: Final = 3
_MAX_GROUP_DEPTH: Final = 16
_CLASS_RE: Final = re.compile(r"(?<!\\)\[\^?\]?(?:\\.|\[:\^?\w+:\]|[^\]\\])*\]", re.S)
_GROUP_RE: Final = re.compile(r"(?<!\\)\((?:[^()\\]|\\.)*\)", re.S)
_OPEN_OR_BAR_RE: Final = re.compile(r"(?<!\\)[(|]")
_LIT: Final = (
    r"(?:[A-Za-z0-9 !\"#%&',\-/:;<=>@_`~\x80-\xff]|\\[^A-Za-z0-9]|\\[rntfae]"
    r"|\\x[0-9a-fA-F]{2}|\\0(?![0-7]))"
)
_RUN_RE: Final = re.compile(rf"(?:{_LIT}(?![?*{{+]))*{_LIT}(?![?*{{])", re.S)
_ESCAPE_RE: Final = re.compile(r"\\x[0-9a-fA-F]{2}|\\.", re.S)
_MAX_NEEDLE: Final = 32
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
    prefix: bytes  # the subject must start with this (lower-cased when fold)
    needle: bytes  # the subject must contain this (lower-cased when fold)
    fold: bool


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
            if entry.fold:
                if folded is None:
                    folded = subject.lower()
                haystack = folded
            else:
                haystack = subject
            if entry.prefix and not haystack.startswith(entry.prefix):
                continue
            if entry.needle and entry.needle not in haystack:
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
                prefix, needle, accepted = _prefilter(rule)
                fold = rule.ignorecase
                if fold:
                    prefix, needle = prefix.lower(), needle.lower()
                entries.append(_Entry(rule, prefix, needle, fold))
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


def _prefilter(rule: MatchRule) -> tuple[bytes, bytes, frozenset[int]]:
    """(prefix, needle, first bytes): what any subject the pattern matches must satisfy.

    ``prefix``: literal bytes an anchored pattern starts with; ``needle``: the longest
    literal run outside groups every match contains; ``first bytes``: the bytes a subject
    may start with. Conservative: empty / all bytes whenever unsure. Done with regexes
    over the pattern text (C speed): classes and groups are replaced by a marker that
    breaks literal runs, then runs of literal tokens not followed by ``? * {`` are found.
    """
    pattern = rule.pattern
    if "(?" in pattern and not _only_plain_groups(pattern):
        return b"", b"", _ALL_BYTES
    flat = _CLASS_RE.sub("\x01", pattern.replace("\\\\", "\x01"))
    for _ in range(_MAX_GROUP_DEPTH):
        flat, count = _GROUP_RE.subn("\x01", flat)
        if not count:
            break
    else:
        return b"", b"", _ALL_BYTES
    if _OPEN_OR_BAR_RE.search(flat):  # unbalanced, or alternation at the top level
        return b"", b"", _ALL_BYTES
    anchored = flat.startswith("^")
    runs = [(m.start(), m.group(0)) for m in _RUN_RE.finditer(flat) if m.group(0)]
    prefix = _decode_run(runs[0][1]) if anchored and runs and runs[0][0] == 1 else b""
    longest = max((text for _, text in runs), key=len, default="")
    needle = _decode_run(longest) if longest else b""
    if len(needle) < _MIN_NEEDLE or needle == prefix:
        needle = b""
    if not anchored:
        return b"", needle, _ALL_BYTES
    if prefix:
        head = prefix[0]
        accepted = {head}
        if rule.ignorecase and 0x41 <= (head | 0x20) - 0x20 <= 0x5A:
            accepted |= {head | 0x20, head & ~0x20}
        return prefix[:_MAX_PREFIX], needle, frozenset(accepted)
    return b"", needle, _first_atom_bytes(rule)


def _decode_run(text: str) -> bytes:
    """The bytes a run of literal tokens stands for (at most _MAX_NEEDLE of them)."""
    if "\\" in text:
        text = _ESCAPE_RE.sub(_unescape_token, text)
    return text[:_MAX_NEEDLE].encode("latin-1")


def _unescape_token(m: re.Match[str]) -> str:
    token = m.group(0)
    if token[1] == "x":
        return chr(int(token[2:], 16))
    if token == "\\0":
        return "\x00"
    return chr(_ESCAPED_BYTES.get(token[1], ord(token[1])))


def _only_plain_groups(pattern: str) -> bool:
    return all(pattern.startswith(("(?:", "(?="), m.start()) for m in re.finditer(r"\(\?", pattern))


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
