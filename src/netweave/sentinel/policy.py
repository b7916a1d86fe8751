"""The sentinel's policy: which paths are protected, how, and the inodes that makes.

A policy file (TOML) lists rules::

    [[protect]]
    path = "/etc/ssh"          # a file, or a directory: it and everything below it
    mode = "enforce"           # or "monitor": report and allow

Rules are resolved to (device, inode) keys, the way the kernel programs match them: the
device as the kernel's ``s_dev`` ((major << 20) | minor, not userspace ``st_dev``). A
directory rule adds the directory and every inode below it (symlinks are not followed),
and the kernel also treats a protected directory as covering names created in it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from netweave.sentinel.events import FimEvent, Mode

#: Size of the kernel's protected-inode table (``protected_inodes`` in bpf/sentinel.bpf.c).
MAX_INODES = 65536

#: Protected unless a policy says ``defaults = false``: netweave's config and pins (enforced)
#: and its state directory (monitored: every netweave command appends to the audit log there,
#: whose hash chain already shows tampering).
DEFAULT_RULES: tuple[tuple[str, Mode], ...] = (
    ("/etc/netweave", Mode.ENFORCE),
    ("/sys/fs/bpf/netweave", Mode.ENFORCE),
    ("/var/lib/netweave", Mode.MONITOR),
)


class PolicyError(ValueError):
    """A policy file or rule is wrong; the message names the file, the rule and the fix."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One protected path and its mode; ``origin`` says where it was written."""

    path: Path
    mode: Mode
    origin: str = ""


@dataclass(frozen=True, slots=True)
class ProtectedInode:
    """A (device, inode) the kernel protects, the rule it came from, and its path."""

    dev: int
    ino: int
    rule_id: int
    mode: Mode
    path: str


@dataclass(frozen=True, slots=True)
class Policy:
    """An ordered list of rules; rule ids are 1-based positions."""

    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: Path, *, defaults: bool | None = None) -> Policy:
        """Read a TOML policy file; raises PolicyError naming the file and the bad entry."""
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as e:
            raise PolicyError(f"{path}: cannot read the policy file: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{path}: not valid TOML: {e}") from e
        entries = doc.get("protect", [])
        if not isinstance(entries, list):
            raise PolicyError(f"{path}: `protect` must be an array of tables ([[protect]])")
        rules = [_rule(path, i, entry) for i, entry in enumerate(entries)]
        use_defaults = doc.get("defaults", True) if defaults is None else defaults
        if not isinstance(use_defaults, bool):
            raise PolicyError(f"{path}: `defaults` must be true or false")
        return cls.of(rules, defaults=use_defaults)

    @classmethod
    def of(cls, rules: Iterable[Rule], *, defaults: bool = False) -> Policy:
        """A policy from rules, optionally after netweave's own default rules."""
        base = [Rule(Path(p), m, "default") for p, m in DEFAULT_RULES] if defaults else []
        return cls((*base, *rules))

    @property
    def enforcing(self) -> bool:
        """True when some rule asks for enforcement (so the sentinel must fail closed)."""
        return any(rule.mode is Mode.ENFORCE for rule in self.rules)

    def resolve(self, *, limit: int = MAX_INODES) -> Resolved:
        """Walk every rule's path into inode keys; missing default paths are skipped."""
        found: dict[tuple[int, int], ProtectedInode] = {}
        for rule_id, rule in enumerate(self.rules, start=1):
            if not rule.path.exists():
                if rule.origin == "default":
                    continue
                raise PolicyError(f"{rule.origin or 'policy'}: path {rule.path} does not exist")
            for entry in _walk(rule.path):
                try:
                    st = entry.lstat()
                except FileNotFoundError:
                    continue  # gone while walking: nothing left to protect
                key = (kernel_dev(st.st_dev), st.st_ino)
                if key not in found:
                    found[key] = ProtectedInode(key[0], key[1], rule_id, rule.mode, str(entry))
                if len(found) > limit:
                    raise PolicyError(
                        f"{rule.origin or 'policy'}: {rule.path} brings the protected inodes "
                        f"past {limit}, the kernel table's size; protect a smaller tree"
                    )
        return Resolved(self, tuple(found.values()))


@dataclass(frozen=True, slots=True)
class Resolved:
    """A policy resolved to inodes, able to name the path an event is about."""

    policy: Policy
    inodes: tuple[ProtectedInode, ...]

    def path_of(self, event: FimEvent) -> str:
        """The path ``event`` concerns, from the inodes this policy knows."""
        by_key = {(p.dev, p.ino): p.path for p in self.inodes}
        if event.ino and (event.dev, event.ino) in by_key:
            return by_key[(event.dev, event.ino)]
        parent = by_key.get((event.rule_dev, event.rule_ino))
        if parent is not None and event.name:
            return f"{parent.rstrip('/')}/{event.name}"
        return parent or event.name


def kernel_dev(st_dev: int) -> int:
    """The kernel's ``s_dev`` for a userspace ``st_dev``: (major << 20) | minor."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _rule(path: Path, index: int, entry: object) -> Rule:
    where = f"{path}: protect[{index}]"
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: must be a table with `path` and `mode`")
    target = entry.get("path")
    if not isinstance(target, str) or not target.startswith("/"):
        raise PolicyError(f"{where}: `path` must be an absolute path, got {target!r}")
    mode = entry.get("mode", "enforce")
    if mode not in ("enforce", "monitor"):
        raise PolicyError(f'{where}: `mode` must be "enforce" or "monitor", got {mode!r}')
    unknown = set(entry) - {"path", "mode"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return Rule(Path(target), Mode.ENFORCE if mode == "enforce" else Mode.MONITOR, where)


def _walk(root: Path) -> Iterable[Path]:
    yield root
    try:
        mode = root.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            yield Path(dirpath) / name
