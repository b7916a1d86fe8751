"""Parser of nmap's ``nmap-service-probes`` file (read where Debian installs it).

Every directive nmap knows is handled: ``Exclude``, ``Probe``, ``match``, ``softmatch``,
``ports``, ``sslports``, ``rarity``, ``fallback``, ``totalwaitms``, ``tcpwrappedms``. A line
nmap would refuse is reported as a :class:`ParseIssue` with its line number and skipped; the
rest of the file still loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from netweave.services.escapes import UnescapeError, cstring_unescape
from netweave.services.records import MatchRule, ParseIssue, Probe, Protocol, VersionTemplates

__all__ = [
    "DEFAULT_PROBES_PATH",
    "ProbeDatabase",
    "ProbesFileError",
    "assemble_database",
    "load_probes",
    "parse_match_line",
    "parse_probes_text",
]

DEFAULT_PROBES_PATH: Final = Path("/usr/share/nmap/nmap-service-probes")
DEFAULT_TOTALWAIT_MS: Final = 5000
_MAX_FALLBACKS: Final = 20
_TEMPLATE_KEYS: Final = ("p", "v", "i", "h", "o", "d")
_MODE_RE: Final = re.compile(r"\s*([A-Za-z:]*)")
_FLAGS_RE: Final = re.compile(r"[A-Za-z]*")


class ProbesFileError(OSError):
    """The probes file cannot be read at all (missing, unreadable, or holds no probe)."""


class _LineError(ValueError):
    """A damaged line; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ProbeDatabase:
    """All probes of one probes file, in file order, with fallbacks resolved by name."""

    path: str
    probes: tuple[Probe, ...]
    excluded_tcp: frozenset[int]
    excluded_udp: frozenset[int]
    issues: tuple[ParseIssue, ...]
    _by_name: dict[tuple[str, str], Probe] = field(repr=False, compare=False)
    _fallbacks: dict[tuple[str, str], tuple[Probe, ...]] = field(repr=False, compare=False)

    @property
    def null_probe(self) -> Probe | None:
        """The NULL probe (banner grab), if the file has one."""
        return self._by_name.get(("tcp", "NULL"))

    @property
    def match_count(self) -> int:
        """Number of ``match`` lines loaded."""
        return sum(1 for p in self.probes for m in p.matches if not m.soft)

    @property
    def softmatch_count(self) -> int:
        """Number of ``softmatch`` lines loaded."""
        return sum(1 for p in self.probes for m in p.matches if m.soft)

    def probe(self, protocol: Protocol, name: str) -> Probe | None:
        """The probe called ``name`` for ``protocol``, or None."""
        return self._by_name.get((protocol, name))

    def fallbacks(self, probe: Probe) -> tuple[Probe, ...]:
        """Probes whose match lines are tried, in order, on ``probe``'s response.

        As nmap's ``compileFallbacks``: the probe itself, its ``fallback`` probes, then (TCP
        only) the NULL probe. A fallback name missing for the probe's protocol is looked up
        in the other protocol (``DNSVersionBindReqTCP`` falls back to the UDP probe).
        """
        return self._fallbacks[(probe.protocol, probe.name)]

    def is_excluded(self, port: int, protocol: Protocol) -> bool:
        """True if the ``Exclude`` directive lists this port."""
        return port in (self.excluded_tcp if protocol == "tcp" else self.excluded_udp)


def load_probes(path: str | Path = DEFAULT_PROBES_PATH) -> ProbeDatabase:
    """Parse the probes file at ``path``.

    Raises :class:`ProbesFileError` if it cannot be read or contains no probe at all;
    damaged lines are listed in ``ProbeDatabase.issues`` instead of raising.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ProbesFileError(
            f"cannot read nmap service probes file {path}: {exc.strerror or exc}; "
            "install nmap (Debian package nmap-common) or pass --probes-file"
        ) from exc
    db = parse_probes_text(raw.decode("latin-1"), source=str(path))
    if not db.probes:
        raise ProbesFileError(f"{path}: no Probe directive found; is this nmap-service-probes?")
    return db


@dataclass(slots=True)
class _ProbeBuilder:
    protocol: Protocol
    name: str
    payload: bytes
    line: int
    no_payload: bool
    ports: set[int] = field(default_factory=set)
    sslports: set[int] = field(default_factory=set)
    rarity: int = 5
    totalwait_ms: int = DEFAULT_TOTALWAIT_MS
    tcpwrapped_ms: int | None = None
    fallback_names: tuple[str, ...] = ()
    matches: list[MatchRule] = field(default_factory=list)

    def build(self) -> Probe:
        return Probe(
            protocol=self.protocol,
            name=self.name,
            payload=self.payload,
            line=self.line,
            ports=frozenset(self.ports),
            sslports=frozenset(self.sslports),
            rarity=self.rarity,
            totalwait_ms=self.totalwait_ms,
            tcpwrapped_ms=self.tcpwrapped_ms,
            fallback_names=self.fallback_names,
            matches=tuple(self.matches),
            services=frozenset(m.service for m in self.matches),
            no_payload=self.no_payload,
        )


def parse_probes_text(text: str, source: str = "<text>") -> ProbeDatabase:
    """Parse the contents of a probes file (latin-1 text: one char per byte)."""
    issues: list[ParseIssue] = []
    builders: list[_ProbeBuilder] = []
    current: _ProbeBuilder | None = None
    damaged_probe_line = 0
    excluded_tcp: set[int] = set()
    excluded_udp: set[int] = set()
    exclude_seen = False

    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        directive, _, rest = line.partition(" ")
        try:
            if directive == "Probe":
                current = None
                current = _parse_probe_line(rest)
                current.line = lineno
                builders.append(current)
                continue
            if directive == "Exclude":
                if builders or damaged_probe_line:
                    raise _LineError("Exclude must come before every Probe")
                if exclude_seen:
                    raise _LineError("only one Exclude directive is allowed")
                tcp, udp = _parse_exclude(rest)
                excluded_tcp |= tcp
                excluded_udp |= udp
                exclude_seen = True
                continue
            if directive not in _PROBE_DIRECTIVES:
                raise _LineError(f"unknown directive {directive!r}")
            if current is None:
                if damaged_probe_line:
                    raise _LineError(f"belongs to the damaged Probe on line {damaged_probe_line}")
                raise _LineError(f"{directive} before any Probe")
            _apply_directive(current, directive, rest, lineno)
        except _LineError as exc:
            if directive == "Probe":
                damaged_probe_line = lineno
            issues.append(ParseIssue(lineno, str(exc), line))

    probes = tuple(b.build() for b in builders)
    return assemble_database(
        source, probes, frozenset(excluded_tcp), frozenset(excluded_udp), tuple(issues)
    )


def assemble_database(
    source: str,
    probes: tuple[Probe, ...],
    excluded_tcp: frozenset[int],
    excluded_udp: frozenset[int],
    issues: tuple[ParseIssue, ...],
) -> ProbeDatabase:
    """Build a :class:`ProbeDatabase` from parsed probes (resolves names and fallbacks)."""
    by_name: dict[tuple[str, str], Probe] = {}
    for probe in probes:
        by_name.setdefault((probe.protocol, probe.name), probe)
    fallbacks, fallback_issues = _compile_fallbacks(probes, by_name)
    all_issues = sorted((*issues, *fallback_issues), key=lambda issue: issue.line)
    return ProbeDatabase(
        path=source,
        probes=probes,
        excluded_tcp=excluded_tcp,
        excluded_udp=excluded_udp,
        issues=tuple(all_issues),
        _by_name=by_name,
        _fallbacks=fallbacks,
    )


_PROBE_DIRECTIVES: Final = frozenset(
    {"match", "softmatch", "ports", "sslports", "rarity", "fallback", "totalwaitms", "tcpwrappedms"}
)


def _apply_directive(probe: _ProbeBuilder, directive: str, rest: str, lineno: int) -> None:
    if directive in ("match", "softmatch"):
        probe.matches.append(parse_match_line(f"{directive} {rest}", lineno))
    elif directive == "ports":
        probe.ports |= _parse_ports(rest)
    elif directive == "sslports":
        probe.sslports |= _parse_ports(rest)
    elif directive == "rarity":
        value = _parse_int(rest, "rarity")
        if not 1 <= value <= 9:
            raise _LineError("rarity must be between 1 and 9")
        probe.rarity = value
    elif directive == "fallback":
        names = tuple(n for n in rest.replace(",", " ").split() if n)
        if not names:
            raise _LineError("fallback names no probe")
        if len(names) > _MAX_FALLBACKS - 2:
            raise _LineError(f"more than {_MAX_FALLBACKS - 2} fallbacks")
        probe.fallback_names = names
    else:
        value = _parse_int(rest, directive)
        if not 100 <= value <= 300000:
            raise _LineError(f"{directive} must be between 100 and 300000 milliseconds")
        if directive == "totalwaitms":
            probe.totalwait_ms = value
        else:
            probe.tcpwrapped_ms = value


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise _LineError(f"{what} needs an integer, got {text.strip()!r}") from None


def _parse_probe_line(rest: str) -> _ProbeBuilder:
    proto_text, _, rest = rest.partition(" ")
    if proto_text not in ("TCP", "UDP"):
        raise _LineError(f"invalid protocol {proto_text!r} (TCP or UDP)")
    protocol: Protocol = "tcp" if proto_text == "TCP" else "udp"
    if not rest[:1].isalnum():
        raise _LineError("bad probe name")
    name, sep, rest = rest.partition(" ")
    if not sep:
        raise _LineError("nothing after probe name")
    if not rest.startswith("q") or len(rest) < 2:
        raise _LineError("probe string must begin with 'q'")
    delimiter = rest[1]
    end = rest.find(delimiter, 2)
    if end < 0:
        raise _LineError("no ending delimiter for probe string")
    try:
        payload = cstring_unescape(rest[2:end])
    except UnescapeError as exc:
        raise _LineError(f"bad probe string escaping: {exc}") from None
    options = rest[end + 1 :].split()
    return _ProbeBuilder(protocol, name, payload, 0, no_payload="no-payload" in options)


def _parse_ports(text: str) -> set[int]:
    ports: set[int] = set()
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise _LineError('empty port; an example of a port list is "21-25,53,80"')
        low_text, dash, high_text = item.partition("-")
        try:
            low = int(low_text.strip(), 10)
            high = int(high_text.strip(), 10) if dash else low
        except ValueError:
            raise _LineError(f'bad port {item!r}; an example is "21-25,53,80"') from None
        if not 0 <= low <= high <= 65535:
            raise _LineError(f"port range {item!r} outside 0-65535")
        ports.update(range(low, high + 1))
    return ports


def _parse_exclude(text: str) -> tuple[set[int], set[int]]:
    tcp: set[int] = set()
    udp: set[int] = set()
    target = "both"
    for part in text.split(","):
        item = part.strip()
        for prefix, name in (("T:", "tcp"), ("U:", "udp"), ("S:", "sctp")):
            if item.upper().startswith(prefix):
                target = name
                item = item[2:]
        ports = _parse_ports(item)
        if target in ("tcp", "both"):
            tcp |= ports
        if target in ("udp", "both"):
            udp |= ports
    return tcp, udp


def parse_match_line(line: str, lineno: int = 0) -> MatchRule:
    """Parse one ``match``/``softmatch`` line the way nmap's ``InitMatch`` does.

    Raises ValueError naming what is wrong. The pattern is not compiled here.
    """
    text = line.lstrip()
    if text.startswith("softmatch "):
        soft, text = True, text[10:]
    elif text.startswith("match "):
        soft, text = False, text[6:]
    else:
        raise _LineError('must begin with "match" or "softmatch"')
    space = text.find(" ")
    if space <= 0:
        raise _LineError("could not find service name")
    service, text = text[:space], text[space:]
    first = _next_template(text)
    if first is None:
        raise _LineError("no m/pattern/ after the service name")
    mode, pattern, flags, text = first
    if mode != "m":
        raise _LineError("the pattern must begin with 'm'")
    bad_flags = set(flags) - {"i", "s"}
    if bad_flags:
        raise _LineError(f"illegal regexp option {''.join(sorted(bad_flags))!r}")
    values: dict[str, str] = {}
    cpes: list[str] = []
    while (item := _next_template(text)) is not None:
        mode, template, _flags, text = item
        if mode == "cpe:":
            cpes.append("cpe:/" + template)
        elif mode in _TEMPLATE_KEYS:
            values[mode] = template  # a repeated key replaces the earlier one, as in nmap
        else:
            raise _LineError(f"unknown template specifier {mode!r}")
    templates = VersionTemplates(
        product=values.get("p"),
        version=values.get("v"),
        info=values.get("i"),
        hostname=values.get("h"),
        ostype=values.get("o"),
        devicetype=values.get("d"),
        cpe=tuple(cpes),
    )
    return MatchRule(
        line=lineno,
        service=service,
        pattern=pattern,
        ignorecase="i" in flags,
        dotall="s" in flags,
        soft=soft,
        templates=templates,
    )


def _next_template(text: str) -> tuple[str, str, str, str] | None:
    """Read ``mode<d>body<d>flags`` from ``text``: (mode, body, flags, rest) or None at end."""
    head = _MODE_RE.match(text)
    assert head is not None  # the pattern matches the empty string
    i = head.end()
    mode = head.group(1)
    if i >= len(text):
        if mode:
            raise _LineError(f"template {mode!r} has no delimiter")
        return None
    delimiter = text[i]
    if delimiter.isspace():
        raise _LineError(f"template {mode!r} has no delimiter")
    end = text.find(delimiter, i + 1)
    if end < 0:
        raise _LineError(f"no closing {delimiter!r} for {mode or 'template'}{delimiter}...")
    flags = _FLAGS_RE.match(text, end + 1)
    assert flags is not None
    return mode, text[i + 1 : end], flags.group(0), text[flags.end() :]


def _compile_fallbacks(
    probes: tuple[Probe, ...], by_name: dict[tuple[str, str], Probe]
) -> tuple[dict[tuple[str, str], tuple[Probe, ...]], list[ParseIssue]]:
    issues: list[ParseIssue] = []
    null = by_name.get(("tcp", "NULL"))
    result: dict[tuple[str, str], tuple[Probe, ...]] = {}
    for probe in probes:
        key = (probe.protocol, probe.name)
        if key in result:
            continue
        if probe.is_null:
            result[key] = (probe,)
            continue
        chain = [probe]
        for name in probe.fallback_names:
            other: Protocol = "udp" if probe.protocol == "tcp" else "tcp"
            target = by_name.get((probe.protocol, name)) or by_name.get((other, name))
            if target is None:
                issues.append(
                    ParseIssue(probe.line, f"unknown fallback {name!r} ignored", probe.name)
                )
                continue
            chain.append(target)
        if probe.protocol == "tcp" and null is not None:
            chain.append(null)
        result[key] = tuple(chain)
    return result, issues
