"""The BPF filesystem: mount it when missing, and keep pins inside it."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")
_libc = ctypes.CDLL(None, use_errno=True)


def is_mounted(path: Path = BPFFS) -> bool:
    """True when a bpf filesystem is mounted exactly at ``path``."""
    target = str(path)
    with Path("/proc/self/mounts").open() as mounts:
        return any(
            len(f) > 2 and f[1] == target and f[2] == "bpf"
            for f in (line.split() for line in mounts)
        )


def ensure_mounted(path: Path = BPFFS) -> Path:
    """Mount bpffs at ``path`` unless it is there already; returns ``path``."""
    if not is_mounted(path):
        path.mkdir(parents=True, exist_ok=True)
        if _libc.mount(b"bpf", str(path).encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot mount bpffs at {path}: {os.strerror(err)}")
    return path


def pin_path(name: str, root: Path = BPFFS) -> Path:
    """Where a pin called ``name`` lives (``root``/netweave/``name``), its folder created."""
    ensure_mounted(root)
    full = root / "netweave" / name
    full.parent.mkdir(parents=True, exist_ok=True)
    return full
