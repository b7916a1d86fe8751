"""What the sentinel can do on this host: enforce with BPF LSM, or only monitor."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from netweave.kernel import BpfObject
from netweave.sentinel.lsm import PIN_DIR

LSM_LIST = Path("/sys/kernel/security/lsm")


@dataclass(frozen=True, slots=True)
class Status:
    """Whether BPF LSM works here, which sentinel links are pinned, and why not if not."""

    lsm_available: bool
    reason: str
    pinned_links: tuple[str, ...]

    @property
    def enforcing(self) -> bool:
        """True when the kernel is enforcing the sentinel's rules right now (pinned links)."""
        return self.lsm_available and bool(self.pinned_links)

    def summary(self) -> str:
        """One plain line for a person."""
        if not self.lsm_available:
            return (
                f"monitoring, not enforcing: BPF LSM is unavailable ({self.reason}); the "
                "fanotify fallback reports writes and deletions of watched paths but cannot "
                "stop them"
            )
        if self.pinned_links:
            return (
                f"enforcing: {len(self.pinned_links)} sentinel LSM programs attached and "
                f"pinned under {PIN_DIR}"
            )
        return (
            "not enforcing: BPF LSM is available but no sentinel is attached "
            "(start it with `netweave sentinel`)"
        )

    def to_json(self) -> dict[str, object]:
        """The status as JSON (``netweave sentinel status --json``)."""
        return {
            "version": 1,
            "lsm_available": self.lsm_available,
            "enforcing": self.enforcing,
            "mode": "enforcing" if self.enforcing else "monitoring, not enforcing",
            "reason": self.reason,
            "pinned_links": list(self.pinned_links),
        }


def examine(pin_dir: Path = PIN_DIR) -> Status:
    """Probe BPF LSM by really loading and attaching a tiny LSM program, and list pins."""
    available, reason = probe_lsm()
    pinned: tuple[str, ...] = ()
    with suppress(OSError):
        pinned = tuple(sorted(p.name for p in pin_dir.iterdir() if p.name.startswith("link_")))
    return Status(available, reason, pinned)


def probe_lsm() -> tuple[bool, str]:
    """(True, "") when an LSM program loads and attaches here, else (False, the reason)."""
    with suppress(OSError):
        active = LSM_LIST.read_text().strip()
        if "bpf" not in active.split(","):
            return False, f"bpf is not in the active LSMs ({active}); boot with lsm=...,bpf"
    try:
        with BpfObject.embedded("probe") as obj:
            for prog in obj.programs.values():
                prog.autoload = prog.name == "probe_lsm"
            obj.load()
            obj.programs["probe_lsm"].attach().close()
    except Exception as e:  # any failure means "not available", with the kernel's reason
        return False, f"{type(e).__name__}: {e}".splitlines()[0]
    return True, ""
