"""Where a shield keeps its pins and its small state file, and what the file holds."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netweave.kernel import BPFFS

DEFAULT_PINS = BPFFS / "netweave" / "shield"
DEFAULT_STATE = Path("/var/lib/netweave/shield")


@dataclass(frozen=True, slots=True)
class ShieldPaths:
    """Pin root on bpffs (one folder per interface) and the folder of state files."""

    pin_root: Path = DEFAULT_PINS
    state_dir: Path = DEFAULT_STATE

    @classmethod
    def from_env(cls) -> ShieldPaths:
        """``$NETWEAVE_SHIELD_PINS`` and ``$NETWEAVE_SHIELD_STATE`` or the defaults."""
        return cls(
            Path(os.environ.get("NETWEAVE_SHIELD_PINS", str(DEFAULT_PINS))),
            Path(os.environ.get("NETWEAVE_SHIELD_STATE", str(DEFAULT_STATE))),
        )

    def pins(self, key: str) -> Path:
        """The pin folder of one interface."""
        return self.pin_root / key

    def state(self, key: str) -> Path:
        """The state file of one interface."""
        return self.state_dir / f"{key}.json"

    def interfaces(self) -> list[str]:
        """Every interface with a state file."""
        if not self.state_dir.is_dir():
            return []
        return sorted(p.stem for p in self.state_dir.glob("*.json"))


def iface_key(iface: str, netns: str | None) -> str:
    """The name of an interface's pins and state: ``eth0`` or ``eth0@NETNS``."""
    return f"{iface}@{Path(netns).name}" if netns else iface


@dataclass(frozen=True, slots=True)
class ShieldState:
    """What a shield remembers about one interface besides its pins."""

    key: str
    iface: str
    netns: str | None
    ifindex: int = 0
    mode: str = "auto"
    xdp_mode: str = ""
    bypass: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    generation: int = 0
    error: str = ""
    conflicts: tuple[str, ...] = field(default_factory=tuple)

    def save(self, paths: ShieldPaths) -> None:
        """Write the state file atomically."""
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        target = paths.state(self.key)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(target)

    @classmethod
    def read(cls, paths: ShieldPaths, key: str) -> ShieldState | None:
        """The saved state of ``key``, or None when there is none."""
        try:
            raw = json.loads(paths.state(key).read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ValueError(f"shield state {paths.state(key)} is not valid JSON: {e}") from e
        for name in ("bypass", "allow", "sources", "conflicts"):
            raw[name] = tuple(raw.get(name, ()))
        return cls(**raw)
