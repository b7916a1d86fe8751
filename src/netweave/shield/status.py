"""``netweave shield status``: what each interface's shield is doing, read from its pins."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from netweave.kernel import KernelError
from netweave.shield.control import Shield, ShieldError
from netweave.shield.instance import link_ifindex
from netweave.shield.records import RuleHits, ShieldStats
from netweave.shield.ruleset import rule_text
from netweave.shield.state import ShieldPaths, ShieldState


@dataclass(frozen=True, slots=True)
class ShieldStatus:
    """The state of one interface's shield."""

    key: str
    iface: str
    netns: str | None
    attached: bool
    xdp_mode: str
    dry_run: bool
    generation: int
    block_v4: int
    block_v6: int
    allow: int
    map_bytes: int
    stats: ShieldStats | None
    top: tuple[RuleHits, ...]
    sources: tuple[str, ...]
    bypass: tuple[str, ...]
    allowlist: tuple[str, ...]
    conflicts: tuple[str, ...]
    error: str


def status_of(paths: ShieldPaths, key: str, *, top: int = 10) -> ShieldStatus:
    """Read one interface's status; an unattached shield reports its last error."""
    state = ShieldState.read(paths, key)
    if state is None:
        raise ShieldError(f"no shield on {key}")
    shield = Shield(key, paths)
    empty = ShieldStatus(
        key, state.iface, state.netns, False, "", False, state.generation, 0, 0, 0, 0, None, (),
        state.sources, state.bypass, state.allow, state.conflicts, state.error,
    )  # fmt: skip
    if not shield.attached:
        return empty
    try:
        with shield.link() as link:
            if link_ifindex(link.fd) == 0:
                return replace(
                    empty,
                    error=f"the kernel detached the shield from {key} (interface gone); "
                    "run `netweave shield detach` to remove its pins",
                )
            gen, inst = shield.current(link)
        try:
            table, totals = inst.rule_table(), inst.totals().sum(axis=1)
        finally:
            inst.close()
        memory = shield.map_bytes()
        stats = shield.stats()
        dry = shield.dry_run()
    except (KernelError, ShieldError) as e:
        return replace(empty, error=f"cannot read pins of {key}: {e}")
    fam, allow = table["family"], table["allow"].astype(bool)
    order = np.argsort(-totals[:, 0].astype(np.int64), kind="stable")
    hits = tuple(
        RuleHits(rule_text(table[i]), bool(allow[i]), int(totals[i, 0]), int(totals[i, 1]))
        for i in order[:top]
        if i > 0 and totals[i, 0] > 0
    )
    return ShieldStatus(
        key, state.iface, state.netns, True, state.xdp_mode, dry, gen,
        int(((fam == 4) & ~allow).sum()), int(((fam == 6) & ~allow).sum()), int(allow.sum()),
        memory, stats, hits, state.sources, state.bypass, state.allow, state.conflicts,
        state.error,
    )  # fmt: skip


def render(s: ShieldStatus) -> str:
    """Human-readable lines for one interface."""
    where = f"{s.iface} (netns {s.netns})" if s.netns else s.iface
    if not s.attached:
        return f"{where}: not attached" + (f"\n  error: {s.error}" if s.error else "")
    mode = "dry run (counting, passing)" if s.dry_run else "enforcing"
    lines = [
        f"{where}: attached, XDP {s.xdp_mode}, {mode}, rule set #{s.generation}",
        f"  rules: {s.block_v4} IPv4 + {s.block_v6} IPv6 block, {s.allow} allow;"
        f" map memory {s.map_bytes / 2**20:.1f} MiB",
        "  packets: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in asdict(s.stats).items())
        if s.stats
        else "  packets: -",
    ]
    if s.bypass:
        lines.append("  bypass: " + ", ".join(s.bypass))
    if s.sources:
        lines.append("  feeds: " + ", ".join(s.sources))
    lines += [f"  warning: {c}" for c in s.conflicts]
    if s.error:
        lines.append(f"  last error: {s.error}")
    if s.top:
        lines.append("  top rules:")
        lines += [
            f"    {'allow ' if h.allow else ''}{h.rule}: {h.packets} packets, {h.bytes} bytes"
            for h in s.top
        ]
    return "\n".join(lines)
