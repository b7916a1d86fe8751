"""Records the shield's control plane hands to its callers (status, CLI, tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleHits:
    """One rule (a CIDR; ``allow`` for allowlist entries) and what it matched."""

    rule: str
    allow: bool
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ShieldStats:
    """Packets by outcome since attach (unlisted sources pass uncounted)."""

    dropped: int
    would_drop: int
    bypassed: int
    allowed: int
