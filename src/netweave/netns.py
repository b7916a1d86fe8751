"""Run code inside another network namespace without moving the caller.

Python 3.11 has no ``os.setns``, so libc's ``setns`` is called through ctypes. A network
namespace is per thread: :func:`enter` starts a dedicated worker thread, switches only that
thread into the target namespace, and runs the functions you hand it there. The calling
thread never changes namespace, and the worker ends when the ``with`` block ends, so no
thread is ever left behind in the wrong namespace.

Sockets are bound to the namespace they were created in, so a socket made by
``ns.call(socket.socket, ...)`` keeps working in that namespace from any thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["NamespaceWorker", "NetnsError", "enter", "namespace_file", "netns_inode", "run_in"]

CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetnsError(OSError):
    """A network namespace could not be opened or entered."""


def netns_inode(path: str | Path) -> int:
    """Return the inode number that identifies the network namespace at ``path``.

    ``path`` is a namespace file such as ``/proc/1234/ns/net`` or ``/run/netns/NAME``.
    Raises :class:`NetnsError` when the file cannot be read.
    """
    try:
        return Path(path).stat().st_ino
    except OSError as exc:
        raise NetnsError(
            exc.errno, f"cannot stat network namespace {path}: {exc.strerror}"
        ) from exc


def _libc_setns() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_setns = _libc_setns()


def namespace_file(target: str | Path | int) -> str:
    """Map a namespace name, path or PID to a namespace file path."""
    if isinstance(target, int):
        return f"/proc/{target}/ns/net"
    text = str(target)
    if "/" in text:
        return text
    return f"/run/netns/{text}"


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: threading.Event
    result: Any = None
    error: BaseException | None = None


class NamespaceWorker:
    """A thread living in one network namespace; :meth:`call` runs functions on it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"netns:{path}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` inside the namespace and return its result.

        Exceptions raised by ``fn`` are re-raised in the caller.
        """
        if not self._thread.is_alive():
            raise NetnsError(0, f"namespace worker for {self.path} has stopped")
        job = _Job(fn, args, kwargs, threading.Event())
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the worker thread (it takes its namespace with it)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._start_error = NetnsError(
                exc.errno, f"cannot open network namespace {self.path}: {exc.strerror}"
            )
            self._ready.set()
            return
        try:
            if _setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                self._start_error = NetnsError(
                    err, f"setns into {self.path} failed: {os.strerror(err)}"
                )
                self._ready.set()
                return
        finally:
            os.close(fd)
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args, **job.kwargs)
            except BaseException as exc:  # handed back to the caller
                job.error = exc
            job.done.set()


@contextmanager
def enter(netns: str | Path | int) -> Iterator[NamespaceWorker]:
    """Yield a worker that runs code inside ``netns``; the caller's thread never moves.

    ``netns`` is a name under ``/run/netns`` (as made by ``ip netns add``), a path to a
    namespace file, or a PID (its ``/proc/PID/ns/net``). Raises :class:`NetnsError` when the
    namespace cannot be opened or entered.
    """
    worker = NamespaceWorker(namespace_file(netns))
    try:
        yield worker
    finally:
        worker.close()


def run_in(netns: str | Path | int | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one function inside ``netns`` on a short-lived worker thread and return its result.

    ``None`` means the caller's own namespace: ``fn`` runs directly on the calling thread.
    """
    if netns is None:
        return fn(*args, **kwargs)
    with enter(netns) as worker:
        return worker.call(fn, *args, **kwargs)
