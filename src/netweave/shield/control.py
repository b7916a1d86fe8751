"""The shield's control plane: attach, load (atomic swap), dry run, status, detach.

Pins of one interface (``<pin root>/<iface>[@netns]/``)::

    link          the XDP bpf_link (the attachment survives every process)
    flags, stats  shared by every instance: the dry-run switch and totals by outcome
    g<N>/         one instance: prog, v4_l1, v4_chunks, v6_rules, counters, rules, base

A new rule set is loaded as a new instance ``g<N+1>`` and swapped in with
``bpf_link_update``: each packet runs either the old program with the old maps or the
new one with the new maps. The instance the link runs is found by program id, so a
process killed at any point leaves a state the next one can take over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from netweave import netns
from netweave.audit import default_log
from netweave.kernel import KernelError, Link, Map, ensure_mounted
from netweave.kernel.errors import AuditRefused, ObjectError
from netweave.kernel.maps import NCPUS
from netweave.shield.compile import compile_ruleset
from netweave.shield.feeds import Feed
from netweave.shield.instance import (
    PROGRAM,
    SHARED_MAPS,
    Instance,
    link_prog_id,
    memlock,
)
from netweave.shield.records import RuleHits, ShieldStats
from netweave.shield.ruleset import Protected, RuleSet, build_ruleset, rule_text
from netweave.shield.state import ShieldPaths, ShieldState, iface_key

log = logging.getLogger(__name__)
RETIRE_WAIT = 0.05  # seconds for runs of the old program to finish after a swap


class ShieldError(RuntimeError):
    """A shield operation failed; the message says what and why."""


@contextlib.contextmanager
def _exclusive(paths: ShieldPaths, key: str) -> Iterator[None]:
    """One process at a time changes an interface's shield (attach, swap, detach)."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with (paths.state_dir / f".{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class SwapResult:
    """The outcome of a load on one interface."""

    key: str
    generation: int
    rules: int
    carried: int
    seconds: float


# What loading and attaching raise (VerifierError, AttachError, AuditRefused are KernelErrors).
KERNEL_ERRORS = (KernelError, ObjectError, AuditRefused, OSError, ValueError)


class Shield:
    """The shield of one interface, through its pins and state file."""

    def __init__(self, key: str, paths: ShieldPaths) -> None:
        self.key = key
        self.paths = paths
        self.dir = paths.pins(key)

    # -- attach ---------------------------------------------------------------------------
    @classmethod
    def attach(
        cls,
        iface: str,
        *,
        paths: ShieldPaths,
        mode: str = "auto",
        netns_name: str | None = None,
        protected: Protected = Protected(),
    ) -> Shield:
        """Attach the shield (no block rules yet) to ``iface``; fail open on any error.

        On failure nothing stays attached, the reason is saved for ``status`` and logged,
        and :class:`ShieldError` is raised.
        """
        key = iface_key(iface, netns_name)
        with _exclusive(paths, key):
            return cls._attach(
                key, iface=iface, paths=paths, mode=mode, netns_name=netns_name, protected=protected
            )

    @classmethod
    def _attach(
        cls,
        key: str,
        *,
        iface: str,
        paths: ShieldPaths,
        mode: str,
        netns_name: str | None,
        protected: Protected,
    ) -> Shield:
        shield = cls(key, paths)
        state = ShieldState(
            key, iface, netns_name, mode=mode, bypass=protected.bypass, allow=protected.allow
        )
        if (shield.dir / "link").exists():
            raise ShieldError(f"shield is already attached to {key}; detach it first")
        inst: Instance | None = None
        link: Link | None = None
        try:
            ensure_mounted()
            target = netns_name or "/proc/self/ns/net"
            ifindex = netns.run_in(target, socket.if_nametoindex, iface)
            inst = Instance.load(compile_ruleset(build_ruleset([], protected)))
            shield.dir.mkdir(parents=True, exist_ok=True)
            for name, m in inst.shared().items():
                m.pin(shield.dir / name)
            inst.pin(shield.dir / "g1")
            if inst.obj is None:
                raise ObjectError("freshly loaded shield instance has no object")
            prog = inst.obj.programs[PROGRAM]
            link = netns.run_in(target, prog.attach_xdp, ifindex, mode)
            link.pin(shield.dir / "link")
            state = replace(state, ifindex=ifindex, xdp_mode=prog.xdp_mode, generation=1)
        except KERNEL_ERRORS as e:
            if link is not None:
                with contextlib.suppress(KernelError):
                    link.detach()
                link.close()
            shield._remove_pins()
            reason = f"attach to {key} failed, traffic left untouched (fail-open): {e}"
            log.error("%s", reason)
            replace(state, error=reason).save(paths)
            default_log().record("shield_fail_open", "shield", key, reason=str(e))
            raise ShieldError(reason) from e
        finally:
            if link is not None:
                link.close()
            if inst is not None:
                inst.close()
        state.save(paths)
        default_log().record(
            "shield_attach", "shield", key, ifindex=state.ifindex, mode=state.xdp_mode,
            bypass=list(protected.bypass), allow=list(protected.allow),
        )  # fmt: skip
        return shield

    # -- reading the pins -----------------------------------------------------------------
    def state(self) -> ShieldState:
        """The saved state; ShieldError when the interface has none."""
        st = ShieldState.read(self.paths, self.key)
        if st is None:
            raise ShieldError(f"no shield on {self.key} (see `netweave shield status`)")
        return st

    @property
    def attached(self) -> bool:
        """True when the link pin exists."""
        return (self.dir / "link").exists()

    def _generations(self) -> dict[int, Path]:
        return {
            int(p.name[1:]): p for p in self.dir.glob("g*") if p.is_dir() and p.name[1:].isdigit()
        }

    def current(self, link: Link) -> tuple[int, Instance]:
        """The generation number and instance the link runs now."""
        running = link_prog_id(link.fd)
        for gen, folder in sorted(self._generations().items(), reverse=True):
            try:
                inst = Instance.from_pins(folder)
            except KernelError:
                continue  # a half-pinned instance of a killed process
            if inst.prog_id == running:
                return gen, inst
            inst.close()
        raise ShieldError(f"shield on {self.key}: no pinned instance runs program {running}")

    def link(self) -> Link:
        """The pinned XDP link, re-opened (the caller closes it)."""
        if not self.attached:
            raise ShieldError(f"shield is not attached to {self.key}")
        return Link.from_pin(self.dir / "link")

    # -- load / swap ----------------------------------------------------------------------
    def load(self, feeds: Sequence[Feed], *, dry_run: bool | None = None) -> SwapResult:
        """Swap in the rule set of ``feeds`` atomically; the old one stays on any failure."""
        state = self.state()
        ruleset = build_ruleset(feeds, Protected(state.bypass, state.allow))
        return self.swap(ruleset, dry_run=dry_run)

    def swap(self, ruleset: RuleSet, *, dry_run: bool | None = None) -> SwapResult:
        """Load ``ruleset`` as a new instance and switch the link to it in one step."""
        with _exclusive(self.paths, self.key):
            return self._swap(ruleset, dry_run)

    def _swap(self, ruleset: RuleSet, dry_run: bool | None) -> SwapResult:
        started = time.perf_counter()
        state = self.state()
        link = self.link()
        try:
            gen, old = self.current(link)
            shared = {name: Map.from_pin(self.dir / name) for name in SHARED_MAPS}
            new_gen = max(self._generations()) + 1
            try:
                new = Instance.load(compile_ruleset(ruleset), shared)
            except KERNEL_ERRORS as e:
                reason = f"load on {self.key} failed, previous rule set stays in force: {e}"
                log.error("%s", reason)
                replace(state, error=reason).save(self.paths)
                default_log().record("shield_load_failed", "shield", self.key, reason=str(e))
                raise ShieldError(reason) from e
            try:
                new.pin(self.dir / f"g{new_gen}")
                if dry_run is not None:
                    self._set_flag(shared["flags"], dry_run)
                link.update(new.prog_fd, PROGRAM)
                time.sleep(RETIRE_WAIT)
                carried = self._carry(old, new)
            finally:
                new.close()
                for m in shared.values():
                    m.close()
            old.close()
            for g, folder in self._generations().items():
                if g != new_gen:
                    self._unpin_tree(folder)
        finally:
            link.close()
        seconds = time.perf_counter() - started
        conflicts = tuple(c.describe() for c in ruleset.conflicts)
        replace(
            state, sources=ruleset.sources, generation=new_gen, error="", conflicts=conflicts
        ).save(self.paths)
        default_log().record(
            "shield_swap", "shield", self.key, generation=new_gen, previous=gen,
            rules=ruleset.block_count, listed=ruleset.listed, sources=list(ruleset.sources),
            carried=carried, dry_run=dry_run,
        )  # fmt: skip
        return SwapResult(self.key, new_gen, ruleset.block_count, carried, seconds)

    @staticmethod
    def _carry(old: Instance, new: Instance) -> int:
        """Give rules present in both sets their old totals; returns how many carried."""
        totals = old.totals()
        live = np.flatnonzero(totals.reshape(len(totals), 4).any(axis=1))
        live = live[live > 0]
        if not len(live):
            return 0
        where = match_rules(old.rule_table()[live], new.rule_table())
        found = where >= 0
        base = np.zeros((new.rule_count + 1, 2, 2), dtype=np.uint64)
        base[where[found]] = totals[live[found]]
        new.set_base(base)
        return int(found.sum())

    # -- run-time switches ----------------------------------------------------------------
    def set_dry_run(self, on: bool) -> None:
        """Switch dry run on (count, pass) or off (drop) without reloading."""
        if not self.attached:
            raise ShieldError(f"shield is not attached to {self.key}")
        with Map.from_pin(self.dir / "flags") as flags:
            self._set_flag(flags, on)

    def _set_flag(self, flags: Map, on: bool) -> None:
        flags.update(bytes(4), int(on).to_bytes(4, "little") + bytes(4), audit=False)
        default_log().record("shield_mode", "shield", self.key, dry_run=on)

    def dry_run(self) -> bool:
        """Whether dry run is on."""
        with Map.from_pin(self.dir / "flags") as flags:
            value = flags.lookup(bytes(4))
        return bool(value and int.from_bytes(value[:4], "little"))

    # -- counters and status --------------------------------------------------------------
    def counters(self) -> tuple[RuleHits, ...]:
        """Packets and bytes of every rule of the running set, in rule id order."""
        table, totals = self._table_and_totals()
        both = totals.sum(axis=1)
        return tuple(
            RuleHits(rule_text(table[i]), bool(table[i]["allow"]), int(both[i, 0]), int(both[i, 1]))
            for i in range(1, len(table))
        )

    def stats(self) -> ShieldStats:
        """Packets by outcome: dropped, would-drop and allowed by the rules of the running
        set (counts of rules that stayed through swaps included); bypassed since attach."""
        table, totals = self._table_and_totals()
        allow = table["allow"].astype(bool)
        with Map.from_pin(self.dir / "stats") as m:
            raw = m.lookup(bytes(4)) or bytes(8 * NCPUS)
        return ShieldStats(
            dropped=int(totals[~allow, 0, 0].sum()),
            would_drop=int(totals[~allow, 1, 0].sum()),
            bypassed=int(np.frombuffer(raw, np.uint64).sum()),
            allowed=int(totals[allow, :, 0].sum()),
        )

    def _table_and_totals(self) -> tuple[npt.NDArray[np.void], npt.NDArray[np.uint64]]:
        with self.link() as link:
            _, inst = self.current(link)
        try:
            return inst.rule_table(), inst.totals()
        finally:
            inst.close()

    def map_bytes(self) -> int:
        """Kernel-accounted memory of every map of the running instance plus shared maps."""
        with self.link() as link:
            _, inst = self.current(link)
        try:
            total = inst.memory_bytes()
        finally:
            inst.close()
        for name in SHARED_MAPS:
            with Map.from_pin(self.dir / name) as m:
                total += memlock(m.fd)
        return total

    # -- detach ---------------------------------------------------------------------------
    def detach(self) -> None:
        """Detach the program and remove every pin and the state file; audited."""
        with _exclusive(self.paths, self.key):
            self._detach()

    def _detach(self) -> None:
        if self.attached:
            link = Link.from_pin(self.dir / "link")
            try:
                link.detach()
            except KernelError as e:  # the device (or its namespace) is gone already
                log.warning("shield on %s: detach: %s; removing the pins anyway", self.key, e)
            finally:
                link.close()
        self._remove_pins()
        self.paths.state(self.key).unlink(missing_ok=True)
        default_log().record("shield_detach", "shield", self.key)

    def _remove_pins(self) -> None:
        if self.dir.exists():
            self._unpin_tree(self.dir)

    @staticmethod
    def _unpin_tree(folder: Path) -> None:
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink()
        folder.rmdir()
        default_log().record("unpin", str(folder), "shield")


def _v4_keys(table: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """An exact 64-bit identity of IPv4 rule records (address, length, allow)."""
    keys: npt.NDArray[np.uint64] = (
        table["addr"][:, 0].astype(np.uint64)
        | (table["plen"].astype(np.uint64) << np.uint64(32))
        | (table["allow"].astype(np.uint64) << np.uint64(40))
    )
    return keys


def match_rules(old: npt.NDArray[np.void], new: npt.NDArray[np.void]) -> npt.NDArray[np.int64]:
    """For each ``old`` record, the index of the same rule in ``new`` or -1."""
    out = np.full(len(old), -1, dtype=np.int64)
    old4, new4 = old["family"] == 4, new["family"] == 4
    new4_idx = np.flatnonzero(new4)
    if len(new4_idx) and old4.any():
        keys = _v4_keys(new[new4_idx])
        order = np.argsort(keys)
        sorted_keys = keys[order]
        want = _v4_keys(old[old4])
        pos = np.minimum(np.searchsorted(sorted_keys, want), len(order) - 1)
        hit = sorted_keys[pos] == want
        out[np.flatnonzero(old4)[hit]] = new4_idx[order[pos[hit]]]
    old6 = np.flatnonzero(old["family"] == 6)
    if len(old6):
        index = {new[i].tobytes(): i for i in np.flatnonzero(new["family"] == 6)}
        for i in old6:
            out[i] = index.get(old[i].tobytes(), -1)
    return out
