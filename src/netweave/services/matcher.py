"""Match response bytes against a probe's match lines, as nmap's ``testMatch`` does.

Patterns are compiled lazily, one by one, the first time a subject gets past their
prefilter, and kept. The prefilter of a line (the literal prefix of an anchored pattern,
literals every match contains, the bytes a subject may start with) skips most lines without
running a regex; lines are still tried in file order, so the result is the one nmap gives.
Each probe's lines are indexed by prefix and first byte, and the literals of all its lines
are looked for in a subject at once (Aho-Corasick, ``ahocorasick_rs``), so skipping a
line costs no Python work per line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

from ahocorasick_rs import BytesAhoCorasick, Implementation

from netweave.services.first_bytes import ALL_BYTES, first_bytes
from netweave.services.pcre import UnsupportedPatternError, compile_pcre
from netweave.services.probes_file import ProbeDatabase
from netweave.services.records import MatchRule, Probe, ServiceMatch
from netweave.services.templates import fill_templates

__all__ = ["DEFAULT_SUBJECT_CAP", "Matcher", "PatternFailure", "Prefilter", "prefilter"]

# (prefix, needles, accepted first bytes sorted): see prefilter()
Prefilter = tuple[bytes, tuple[bytes, ...], bytes]

DEFAULT_SUBJECT_CAP: Final = 16384
_ALL_BYTES: Final = ALL_BYTES
_MAX_PREFIX: Final = 24
_MIN_NEEDLE: Final = 3
_MAX_NEEDLES: Final = 3
_CACHE_LIMIT: Final = 4096
_MAX_GROUP_DEPTH: Final = 16
_LOOKAROUNDS: Final = ("(?=", "(?!", "(?<=", "(?<!")
_REPEATS: Final = ("?", "*", "+", "{")
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
    any_of: tuple[bytes, ...] = ()  # or else: it must contain one of these (branch_needles)


_NOT_YET: Final = object()
_FIRST: Final = itemgetter(0)


# needle id -> (lines needing only that needle, (line, its other needle ids) for lines
# needing several, filed under the one fewest lines of the probe need)
_Needs = dict[int, tuple[tuple[int, ...], tuple[tuple[int, tuple[int, ...]], ...]]]


@dataclass(frozen=True, slots=True)
class _Group:
    """Lines one prefilter key selects: ``free`` ones need nothing more before the regex,
    the others are in ``needs`` under a needle they need."""

    free: tuple[int, ...]
    needs: _Needs


class _GroupBuilder:
    __slots__ = ("free", "needs")

    def __init__(self) -> None:
        self.free: list[int] = []
        self.needs: dict[int, tuple[list[int], list[tuple[int, tuple[int, ...]]]]] = {}

    def add(self, position: int, needle_ids: tuple[int, ...]) -> None:
        if not needle_ids:
            self.free.append(position)
            return
        alone, more = self.needs.setdefault(needle_ids[0], ([], []))
        if len(needle_ids) == 1:
            alone.append(position)
        else:
            more.append((position, needle_ids[1:]))

    def build(self) -> _Group:
        needs = {nid: (tuple(alone), tuple(more)) for nid, (alone, more) in self.needs.items()}
        return _Group(tuple(self.free), needs)


class _ProbeIndex:
    """The match lines of one probe, indexed so a subject reaches few of them.

    A line with a literal prefix sits under that prefix (lower-cased for case-insensitive
    lines) and is selected when the subject starts with it; a line without one sits under
    each first byte it accepts, or with the lines that accept any byte. The needles of all
    lines are found in a subject by one Aho-Corasick pass (one more over the lower-cased
    subject for case-insensitive lines), so a line is kept only when its prefix and needles
    are there, exactly the checks the prefilter defines, without a Python loop per line.
    Regexes are compiled one by one the first time a subject reaches them;
    ``regexes[i]`` is the compiled pattern, None if it cannot compile, or _NOT_YET.
    """

    __slots__ = (
        "_any_byte",
        "_by_first_byte",
        "_exact_find",
        "_exact_max",
        "_exact_stems",
        "_folded_find",
        "_folded_max",
        "_folded_stems",
        "_groups_by_head",
        "_head",
        "_repeats",
        "entries",
        "regexes",
    )

    def __init__(self, entries: list[_Entry], first: list[bytes]) -> None:
        self.entries = entries
        self.regexes: list[object] = [_NOT_YET] * len(entries)
        exact_needles: dict[bytes, int] = {}
        folded_needles: dict[bytes, int] = {}
        any_byte = _GroupBuilder()
        by_first_byte: dict[int, _GroupBuilder] = {}
        exact: dict[bytes, _GroupBuilder] = {}
        folded: dict[bytes, _GroupBuilder] = {}
        uses = Counter((e.fold, n) for e in entries for n in set(e.needles))
        self._repeats = False
        for position, (entry, accepted) in enumerate(zip(entries, first, strict=True)):
            fold = entry.fold
            ids = exact_needles if not fold else folded_needles
            # An empty needle is in every subject: nothing to check. The needle fewest
            # lines need comes first: a line needing several is filed under it.
            needles = sorted({n for n in entry.needles if n}, key=lambda n: (uses[fold, n], n))
            needle_ids = tuple(ids.setdefault(n, len(ids)) for n in needles)
            if fold:
                needle_ids = tuple(-1 - nid for nid in needle_ids)  # folded ids are negative
            if entry.any_of:  # filed under each branch's needle: it may come out twice
                for needle in entry.any_of:
                    nid = ids.setdefault(needle, len(ids))
                    any_byte.add(position, (-1 - nid if fold else nid,))
                self._repeats = True
            elif entry.prefix:
                table = folded if fold else exact
                table.setdefault(entry.prefix, _GroupBuilder()).add(position, needle_ids)
            elif len(accepted) == 256:
                any_byte.add(position, needle_ids)
            else:
                for byte in accepted:
                    by_first_byte.setdefault(byte, _GroupBuilder()).add(position, needle_ids)
        self._any_byte = any_byte.build()
        empty = _GroupBuilder().build()
        self._by_first_byte = tuple(
            by_first_byte[b].build() if b in by_first_byte else empty for b in range(256)
        )
        self._exact_stems, self._exact_max = _stems(exact)
        self._folded_stems, self._folded_max = _stems(folded)
        self._exact_find = _NeedleFinder(exact_needles, False) if exact_needles else None
        self._folded_find = _NeedleFinder(folded_needles, True) if folded_needles else None
        self._head = max(self._exact_max, self._folded_max, 1)
        self._groups_by_head: dict[bytes, tuple[_Group, ...]] = {}

    def candidates(self, subject: bytes) -> list[int]:
        """Positions of the lines whose prefilter ``subject`` (non-empty) passes, in order."""
        head = subject[: self._head]
        groups = self._groups_by_head.get(head)
        if groups is None:
            groups = self._groups(head)
        found: list[int] = []
        present: set[int] | None = None
        for group in groups:
            found += group.free
            needs = group.needs
            if not needs:
                continue
            if present is None:
                present = self._needles_in(subject)
            if len(present) <= len(needs):  # walk the smaller of the two
                hits = [needs[nid] for nid in present if nid in needs]
            else:
                hits = [hit for nid, hit in needs.items() if nid in present]
            for alone, more in hits:
                found += alone
                for position, others in more:
                    if present.issuperset(others):
                        found.append(position)
        if self._repeats:
            return sorted(set(found))
        found.sort()
        return found

    def _groups(self, head: bytes) -> tuple[_Group, ...]:
        """The groups a subject starting with ``head`` selects (kept per head: the leading
        bytes of a protocol's messages repeat)."""
        found = [self._any_byte, self._by_first_byte[head[0]]]
        if self._exact_stems:
            found += _stem_groups(self._exact_stems, head[: self._exact_max])
        if self._folded_stems:
            found += _stem_groups(self._folded_stems, head[: self._folded_max].lower())
        groups = tuple(group for group in found if group.free or group.needs)
        if len(self._groups_by_head) >= _CACHE_LIMIT:
            self._groups_by_head.clear()
        self._groups_by_head[head] = groups
        return groups

    def _needles_in(self, subject: bytes) -> set[int]:
        """Ids of the needles ``subject`` contains (folded ones negative, see __init__)."""
        present = self._exact_find(subject) if self._exact_find is not None else set()
        if self._folded_find is not None:
            present |= self._folded_find(subject.lower())
        return present


def _run_unit(needle: bytes) -> bytes | None:
    """The unit ``needle`` repeats, if it is a run of one byte or of ``\\r\\n`` / ``\\n\\r``."""
    if len(set(needle)) == 1:
        return needle[:1]
    unit = needle[:2]
    if unit in (b"\r\n", b"\n\r") and (unit * len(needle))[: len(needle)] == needle:
        return unit
    return None


def _stems(table: dict[bytes, _GroupBuilder]) -> tuple[dict[bytes, tuple[_Group, ...]], int]:
    """Every leading part of every prefix -> the groups of the prefixes it starts with
    (shortest first, itself included); and the longest prefix's length."""
    groups = {prefix: builder.build() for prefix, builder in table.items()}
    parts = sorted({prefix[:k] for prefix in table for k in range(1, len(prefix) + 1)}, key=len)
    stems: dict[bytes, tuple[_Group, ...]] = {}
    for part in parts:
        own = (groups[part],) if part in groups else ()
        stems[part] = stems.get(part[:-1], ()) + own
    return stems, max(map(len, table), default=0)


def _stem_groups(stems: dict[bytes, tuple[_Group, ...]], head: bytes) -> tuple[_Group, ...]:
    """The groups of every prefix ``head`` starts with. The stems are closed under taking
    a leading part, so the longest stem ``head`` starts with is found by bisection."""
    low, high = 0, len(head)
    while low < high:
        middle = (low + high + 1) // 2
        if head[:middle] in stems:
            low = middle
        else:
            high = middle - 1
    return stems[head[:low]] if low else ()


class _NeedleFinder:
    """Which of a probe's needles (``needle -> id``) a subject holds.

    One Aho-Corasick pass (``ahocorasick_rs``, overlapping matches) finds most of them.
    Runs of one byte (``\\0\\0\\0``, 32 spaces) and of line breaks (``\\r\\n\\r\\n``) are
    left out of it: a long run of those in a subject would yield one match per such needle
    per byte (ms for 16 KiB of zeros); for them a few ``in`` tests find the longest run
    present, by bisection over their lengths (a run present means every shorter run of
    the same unit is).
    """

    __slots__ = ("_ids", "_runs", "_search")

    def __init__(self, needles: dict[bytes, int], negate: bool) -> None:
        def final(nid: int) -> int:
            return -1 - nid if negate else nid  # folded needles have negative ids

        plain: list[tuple[bytes, int]] = []
        runs: dict[bytes, list[tuple[bytes, int]]] = {}
        for needle, nid in needles.items():
            unit = _run_unit(needle)
            if unit is None:
                plain.append((needle, final(nid)))
            else:
                runs.setdefault(unit, []).append((needle, final(nid)))
        self._ids = [nid for _, nid in plain]
        # per unit, its needles shortest first: each is the start of the next
        self._runs = tuple(tuple(sorted(found, key=lambda n: len(n[0]))) for found in runs.values())
        self._search: Callable[..., list[tuple[int, int, int]]] | None = None
        if plain:
            # a DFA searches ~25% faster but takes ~20x longer to build (0.2 s for GetRequest)
            automaton = BytesAhoCorasick(
                [needle for needle, _ in plain], implementation=Implementation.ContiguousNFA
            )
            self._search = automaton.find_matches_as_indexes

    def __call__(self, subject: bytes) -> set[int]:
        found: set[int] = set()
        if self._search is not None:
            ids = self._ids
            # matches are (needle index, start, end), one per occurrence (overlapping too)
            found = {ids[i] for i in set(map(_FIRST, self._search(subject, True)))}
        for by_length in self._runs:
            low, high = 0, len(by_length)
            while low < high:
                middle = (low + high + 1) // 2
                if by_length[middle - 1][0] in subject:
                    low = middle
                else:
                    high = middle - 1
            found.update(nid for _, nid in by_length[:low])
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
        if not subject:
            return None
        index = self._index(probe)
        for position in index.candidates(subject):
            regex = index.regexes[position]
            if regex is _NOT_YET:
                regex = index.regexes[position] = self._compile(index.entries[position].rule)
            if not isinstance(regex, re.Pattern):
                continue
            found = regex.search(subject)
            if found is None:
                continue
            rule = index.entries[position].rule
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
                unfiltered = not prefix and not needles and len(accepted) == 256
                any_of = branch_needles(rule) if unfiltered else ()
                entries.append(_Entry(rule, prefix, needles, fold, any_of))
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
    over the pattern text (C speed): classes are replaced by a marker that breaks literal
    runs, groups by their contents or that marker (see _group_mark), then runs of literal
    tokens not followed by ``? * {`` are found.
    """
    flat = _flatten(rule.pattern)
    if flat is None or _OPEN_OR_BAR_RE.search(flat):  # unbalanced, or a top-level "|"
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
    return b"", needles, first_bytes(rule)


def branch_needles(rule: MatchRule) -> tuple[bytes, ...]:
    """For a pattern alternating at the top level (``^a…|b…``): a literal each branch
    needs, so a subject any branch matches holds at least one of them (lower-cased for a
    case-insensitive line). Empty when a branch has no literal of _MIN_NEEDLE bytes, or
    the pattern does not alternate or is not understood."""
    flat = _flatten(rule.pattern)
    if flat is None or "(" in flat or "|" not in flat:
        return ()
    found: list[bytes] = []
    for branch in flat.split("|"):
        runs = [m.group(0) for m in _RUN_RE.finditer(branch) if m.group(0)]
        longest = _decode_run(max(runs, key=len)) if runs else b""
        if len(longest) < _MIN_NEEDLE:
            return ()
        found.append(longest.lower() if rule.ignorecase else longest)
    return tuple(dict.fromkeys(found))


def _flatten(pattern: str) -> str | None:
    """The pattern with every escape standing for a byte as U+0100+byte, other escapes
    and classes as a run break, ``{n,m}`` as ``*`` and groups replaced (_group_mark);
    None when it holds a construct this does not follow."""
    flat = _ESCAPE_TOKEN_RE.sub(_literal_escape_or_mark, pattern.replace("\\\\", "\x01"))
    flat = _CLASS_RE.sub("\x01", flat)
    # escapes and classes are gone: a "(?" left opens a group (``\(?`` was a literal)
    if "(?" in flat and not _only_plain_groups(flat):
        return None
    flat = _COUNTED_RE.sub("*", flat)  # {n,m} -> *: a quantifier, not the literal "n,m"
    for _ in range(_MAX_GROUP_DEPTH):
        flat, count = _GROUP_RE.subn(_group_mark, flat)
        if not count:
            return flat
    return None


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


def _group_mark(m: re.Match[str]) -> str:
    """What an innermost group becomes in the flattened pattern.

    A lookaround matches no bytes: it goes, and the literals around it join (``a(?!b)c``
    matches only text holding "ac"). A group without alternation that is not repeated
    stands for its contents (``a(b)c`` matches "abc"). Any other group breaks a run.
    """
    text = m.group(0)
    if text.startswith(_LOOKAROUNDS):
        return ""
    inner = text[3:-1] if text.startswith("(?:") else text[1:-1]
    if "|" in inner or m.string[m.end() : m.end() + 1] in _REPEATS:
        return "\x01"
    return inner


def _only_plain_groups(pattern: str) -> bool:
    allowed = ("(?:", *_LOOKAROUNDS)
    return all(pattern.startswith(allowed, m.start()) for m in re.finditer(r"\(\?", pattern))
