"""Run code inside another network namespace without ever moving the caller.

Python 3.11 has no ``os.setns``; libc's is called through ctypes on a dedicated thread
that is thrown away afterwards, so no thread of the caller is left in the wrong namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str | int) -> Path:
    """The file naming a namespace: a name under /var/run/netns, a path, or a PID."""
    if isinstance(netns, int):
        return Path(f"/proc/{netns}/ns/net")
    return Path(netns) if netns.startswith("/") else NETNS_RUN_DIR / netns


def run_in_netns(netns: str | int, fn: Callable[[], T]) -> T:
    """Call ``fn`` on a fresh thread that has joined ``netns``; return its result or raise."""
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as e:  # handed to the caller's thread below
            errors.append(e)

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]
