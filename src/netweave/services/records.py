"""Records of the nmap-service-probes engine: probes, match rules, parse issues, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MatchRule",
    "ParseIssue",
    "Probe",
    "Protocol",
    "ServiceMatch",
    "VersionTemplates",
]

Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True, slots=True)
class VersionTemplates:
    """The versioninfo of a match line: ``p/ v/ i/ h/ o/ d/`` and ``cpe:/.../`` templates."""

    product: str | None = None
    version: str | None = None
    info: str | None = None
    hostname: str | None = None
    ostype: str | None = None
    devicetype: str | None = None
    cpe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MatchRule:
    """One ``match`` or ``softmatch`` line; ``pattern`` is PCRE text, one char per byte."""

    line: int
    service: str
    pattern: str
    ignorecase: bool
    dotall: bool
    soft: bool
    templates: VersionTemplates


@dataclass(frozen=True, slots=True)
class Probe:
    """One ``Probe`` section of nmap-service-probes, with its directives and match lines."""

    protocol: Protocol
    name: str
    payload: bytes
    line: int
    ports: frozenset[int] = frozenset()
    sslports: frozenset[int] = frozenset()
    rarity: int = 5
    totalwait_ms: int = 5000
    tcpwrapped_ms: int | None = None
    fallback_names: tuple[str, ...] = ()
    matches: tuple[MatchRule, ...] = ()
    services: frozenset[str] = frozenset()
    no_payload: bool = False

    @property
    def is_null(self) -> bool:
        """True for the NULL probe (TCP, empty payload): it only listens for a banner."""
        return self.protocol == "tcp" and self.name == "NULL"

    def port_is_probable(self, port: int, tunnel: bool) -> bool:
        """True if ``port`` is in this probe's ``ports`` (or ``sslports`` inside TLS)."""
        return port in (self.sslports if tunnel else self.ports)


@dataclass(frozen=True, slots=True)
class ParseIssue:
    """A line of the probes file that was skipped, with why."""

    line: int
    message: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}: {self.text[:120]!r}"


@dataclass(frozen=True, slots=True)
class ServiceMatch:
    """What a response matched: the service and the filled-in version fields.

    ``probe`` names the probe whose match line hit (a fallback's name when a fallback
    matched), ``line`` is that match line's number in the probes file.
    """

    service: str
    soft: bool
    probe: str
    line: int
    product: str | None = None
    version: str | None = None
    info: str | None = None
    hostname: str | None = None
    ostype: str | None = None
    devicetype: str | None = None
    cpe: tuple[str, ...] = field(default=())
