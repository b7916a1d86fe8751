"""Match response bytes against a probe's match lines, as nmap's ``testMatch`` does.

Patterns are compiled lazily, one by one, the first time a subject gets past their
prefilter, and kept. The prefilter of a line (the literal prefix of an anchored pattern, a
literal every match contains, the bytes a subject may start with) skips most lines without
running a regex; lines are still tried in file order, so the result is the one nmap gives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from netweave.services.pcre import UnsupportedPatternError, compile_pcre, translate_pcre
from netweave.services.probes_file import ProbeDatabase
from netweave.services.records import MatchRule, Probe, ServiceMatch
from netweave.services.templates import fill_templates

__all__ = ["DEFAULT_SUBJECT_CAP", "Matcher", "PatternFailure", "Prefilter", "prefilter"]

# (prefix, needles, accepted first bytes sorted): see prefilter()
Prefilter = tuple[bytes, tuple[bytes, ...], bytes]

DEFAULT_SUBJECT_CAP: Final = 16384
_ALL_BYTES: Final = bytes(range(256))
_MAX_PREFIX: Final = 24
_MIN_NEEDLE: Final = 3
_MAX_NEEDLES: Final = 1
_KEY_BYTES: Final = 4
_CACHE_LIMIT: Final = 4096
_MAX_GROUP_DEPTH: Final = 16
_CLASS_RE: Final = re.compile(r"(?<!\\)\[\^?\]?(?:\\.|\[:\^?\w+:\]|[^\]\\])*\]", re.S)
_GROUP_RE: Final = re.compile(r"(?<!\\)\((?:[^()\\]|\\.)*\)", re.S)
_OPEN_OR_BAR_RE: Final = re.compile(r"(?<!\\)[(|]")
_ESCAPE_TOKEN_RE: Final = re.compile(r"\\(x[0-9a-fA-F]{2}|0[0-7]{0,2}|.)", re.S)
_COUNTED_RE: Final = re.compile(r"(?<!\\)\{\d+(?:,\d*)?\}")
_LIT: Final = "[A-Za-z0-9 !\"#%&',\\-/:;<=>@_`~\x80-\u01ff]"
_RUN_RE: Final = re.compile(rf"(?:{_LIT}(?![?*{{+]))*{_LIT}(?![?*{{])", re.S)
_MAX_NEEDLE: Final = 32
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
    needles: tuple[bytes, ...]  # the subject must contain each (lower-cased when fold)
    fold: bool


_NOT_YET: Final = object()


class _ProbeIndex:
    """The match lines of one probe, bucketed by the leading bytes a subject must have.

    Lines with a literal prefix are keyed by its first 1-4 bytes (lower-cased for
    case-insensitive lines); the others by the first bytes they accept. ``candidates``
    merges the buckets a subject's first 4 bytes select, in file order, and caches that.
    Regexes are compiled one by one the first time the prefilter lets a subject reach
    them; ``regexes[i]`` is the compiled pattern, None if it cannot compile, or _NOT_YET.
    """

    __slots__ = ("_by_first_byte", "_cache", "_exact", "_folded", "entries", "regexes")

    def __init__(self, entries: list[_Entry], first: list[bytes]) -> None:
        self.entries = entries
        self.regexes: list[object] = [_NOT_YET] * len(entries)
        buckets: list[list[int]] = [[] for _ in range(256)]
        self._exact: dict[bytes, list[int]] = {}
        self._folded: dict[bytes, list[int]] = {}
        for index, (entry, accepted) in enumerate(zip(entries, first, strict=True)):
            if entry.prefix:
                table = self._folded if entry.fold else self._exact
                table.setdefault(entry.prefix[:_KEY_BYTES], []).append(index)
                continue
            for byte in accepted:
                buckets[byte].append(index)
        self._by_first_byte = tuple(tuple(b) for b in buckets)
        self._cache: dict[bytes, tuple[int, ...]] = {}

    def candidates(self, subject: bytes) -> tuple[int, ...]:
        """Positions of the lines that may match ``subject`` (non-empty), in file order."""
        key = subject[:_KEY_BYTES]
        found = self._cache.get(key)
        if found is not None:
            return found
        merged = set(self._by_first_byte[key[0]])
        lowered = key.lower()
        for k in range(1, len(key) + 1):
            merged.update(self._exact.get(key[:k], ()))
            merged.update(self._folded.get(lowered[:k], ()))
        found = tuple(sorted(merged))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found


class Matcher:
    """Matches responses against the probes of one :class:`ProbeDatabase`.

    Not thread-safe (it fills its regex cache on first use of each probe).
    """

    def __init__(
        self,
        db: ProbeDatabase,
        subject_cap: int = DEFAULT_SUBJECT_CAP,
        prefilters: Mapping[int, Prefilter] | None = None,
    ) -> None:
        self.db = db
        self.subject_cap = subject_cap
        self._prefilters = prefilters or {}
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
        for position in index.candidates(subject):
            entry = index.entries[position]
            if entry.fold:
                if folded is None:
                    folded = subject.lower()
                haystack = folded
            else:
                haystack = subject
            if entry.prefix and not haystack.startswith(entry.prefix):
                continue
            if entry.needles and not all(needle in haystack for needle in entry.needles):
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
            first: list[bytes] = []
            for rule in probe.matches:
                known = self._prefilters.get(rule.line)
                prefix, needles, accepted = known if known is not None else prefilter(rule)
                fold = rule.ignorecase
                if fold:
                    prefix, needles = prefix.lower(), tuple(n.lower() for n in needles)
                entries.append(_Entry(rule, prefix, needles, fold))
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


def prefilter(rule: MatchRule) -> Prefilter:
    """(prefix, needles, first bytes): what any subject the pattern matches must satisfy.

    ``prefix``: literal bytes an anchored pattern starts with; ``needles``: the longest
    literal runs outside groups (every match contains each, as the pattern has no top-level
    alternation), at most _MAX_NEEDLES of them; ``first bytes``: the bytes a subject
    may start with. Conservative: empty / all bytes whenever unsure. Done with regexes
    over the pattern text (C speed): classes and groups are replaced by a marker that
    breaks literal runs, then runs of literal tokens not followed by ``? * {`` are found.
    """
    pattern = rule.pattern
    if "(?" in pattern and not _only_plain_groups(pattern):
        return b"", (), _ALL_BYTES
    flat = _ESCAPE_TOKEN_RE.sub(_literal_escape_or_mark, pattern.replace("\\\\", "\x01"))
    flat = _CLASS_RE.sub("\x01", flat)
    flat = _COUNTED_RE.sub("*", flat)  # {n,m} -> *: a quantifier, not the literal "n,m"
    for _ in range(_MAX_GROUP_DEPTH):
        flat, count = _GROUP_RE.subn("\x01", flat)
        if not count:
            break
    else:
        return b"", (), _ALL_BYTES
    if _OPEN_OR_BAR_RE.search(flat):  # unbalanced, or alternation at the top level
        return b"", (), _ALL_BYTES
    anchored = flat.startswith("^")
    runs = [(m.start(), m.group(0)) for m in _RUN_RE.finditer(flat) if m.group(0)]
    prefix = _decode_run(runs[0][1]) if anchored and runs and runs[0][0] == 1 else b""
    skip_first = 1 if prefix else 0
    longest = sorted((text for _, text in runs[skip_first:]), key=len, reverse=True)
    decoded = (_decode_run(text) for text in longest[:_MAX_NEEDLES])
    needles = tuple(n for n in decoded if len(n) >= _MIN_NEEDLE)
    if not anchored:
        return b"", needles, _ALL_BYTES
    if prefix:
        head = prefix[0]
        accepted = {head}
        if rule.ignorecase and 0x41 <= (head | 0x20) - 0x20 <= 0x5A:
            accepted |= {head | 0x20, head & ~0x20}
        return prefix[:_MAX_PREFIX], needles, bytes(sorted(accepted))
    return b"", needles, _first_atom_bytes(rule)


def _literal_escape_or_mark(m: re.Match[str]) -> str:
    """An escape standing for one byte becomes that byte as U+0100+byte (never a
    metacharacter); any other escape (\\d, \\b, \\012, \\x{..}) becomes a run break."""
    token = m.group(1)
    if token[0] == "x" and len(token) == 3:
        return chr(0x100 + int(token[1:], 16))
    if token == "0":
        return chr(0x100)
    if token in _ESCAPED_BYTES:
        return chr(0x100 + _ESCAPED_BYTES[token])
    if len(token) == 1 and not token.isalnum() and ord(token) < 0x100:
        return chr(0x100 + ord(token))
    return "\x01"


def _decode_run(text: str) -> bytes:
    """The bytes a literal run stands for (at most _MAX_NEEDLE of them)."""
    return bytes(ord(c) - 0x100 if ord(c) >= 0x100 else ord(c) for c in text[:_MAX_NEEDLE])


def _only_plain_groups(pattern: str) -> bool:
    return all(pattern.startswith(("(?:", "(?="), m.start()) for m in re.finditer(r"\(\?", pattern))


_ATOM_CACHE: dict[tuple[str, bool], bytes] = {}


def _first_atom_bytes(rule: MatchRule) -> bytes:
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
            cached = bytes(b for b in range(256) if regex.fullmatch(bytes([b])))
        _ATOM_CACHE[key] = cached
    return cached
