"""Monitoring where BPF LSM is missing: fanotify (through ctypes) reports what happened.

fanotify cannot deny an unlink, so this is monitoring, not enforcing. Each directory the
policy touches gets a mark for writes to its entries (FAN_MODIFY, FAN_CLOSE_WRITE) and for
changes of its names (FAN_CREATE, FAN_DELETE, FAN_MOVED_FROM/TO), reported with the
directory's file handle and the entry's name (FAN_REPORT_DFID_NAME). Handles are matched
against the ones taken when the marks were added, so no privileged handle lookup is needed.
The agent's own writes are left out (its audit log may live in a watched directory).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from netweave.sentinel.events import FimEvent, Mode, Operation, Verdict
from netweave.sentinel.lsm import audit_event
from netweave.sentinel.policy import Resolved, kernel_dev

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_REPORT_DFID_NAME = 0x400 | 0x800
FAN_MARK_ADD = 0x1
FAN_MODIFY = 0x2
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
AT_FDCWD = -100
MAX_HANDLE_SZ = 128
INFO_DFID_NAME = 2
INFO_DFID = 3

WATCH_MASK = (
    FAN_MODIFY
    | FAN_CLOSE_WRITE
    | FAN_MOVED_FROM
    | FAN_MOVED_TO
    | FAN_CREATE
    | FAN_DELETE
    | FAN_DELETE_SELF
    | FAN_EVENT_ON_CHILD
    | FAN_ONDIR
)
_OPS = (
    (FAN_MODIFY, Operation.MODIFY),
    (FAN_CLOSE_WRITE, Operation.CLOSE_WRITE),
    (FAN_CREATE, Operation.CREATE),
    (FAN_DELETE, Operation.DELETE),
    (FAN_DELETE_SELF, Operation.DELETE),
    (FAN_MOVED_FROM, Operation.MOVED_FROM),
    (FAN_MOVED_TO, Operation.MOVED_TO),
)
_META = struct.Struct("<IBBHQii")
_INFO_HDR = struct.Struct("<BBH")
_HANDLE_HDR = struct.Struct("<Ii")
UNKNOWN_UID = 0xFFFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]


class FileHandle(ctypes.Structure):
    """``struct file_handle`` with room for the largest handle."""

    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


class FanotifyUnavailable(OSError):  # noqa: N818 - reads as the condition it reports
    """fanotify cannot watch here (no CAP_SYS_ADMIN, or the kernel lacks FID reporting)."""


@dataclass(frozen=True, slots=True)
class RawNotice:
    """One decoded fanotify record: the event bits, the reporting pid, directory and name."""

    mask: int
    pid: int
    fd: int
    handle: bytes
    name: str


class FanotifyMonitor:
    """Watches the directories of a resolved policy and reports changes as FimEvents."""

    def __init__(self, resolved: Resolved) -> None:
        fd = _libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        if fd < 0:
            err = ctypes.get_errno()
            raise FanotifyUnavailable(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd
        self.own_pid = os.getpid()
        self.resolved = resolved
        self.dirs: dict[bytes, Path] = {}
        #: Directories fanotify cannot watch (a file system without file handles, e.g. bpffs).
        self.unwatched: dict[Path, str] = {}
        self._rules: dict[str, tuple[int, Mode]] = {}
        self._dir_rules: dict[str, tuple[int, Mode]] = {}
        self._poll = select.epoll()
        self._poll.register(fd, select.EPOLLIN)
        try:
            self._mark_policy()
        except BaseException:
            self.close()
            raise

    def poll(self, timeout: float | None = 0.0) -> list[FimEvent]:
        """Changes to watched paths since the last call (waiting up to ``timeout``), audited."""
        events = list(self._read())
        if not events and timeout != 0.0:
            self._poll.poll(-1 if timeout is None else timeout)
            events = list(self._read())
        for event in events:
            audit_event(event)
        return events

    def close(self) -> None:
        """Stop watching."""
        if self.fd >= 0:
            self._poll.close()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FanotifyMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mark_policy(self) -> None:
        for inode in self.resolved.inodes:
            path = Path(inode.path)
            self._rules.setdefault(inode.path, (inode.rule_id, inode.mode))
            if path.is_dir() and not path.is_symlink():
                self._dir_rules.setdefault(inode.path, (inode.rule_id, inode.mode))
                self._mark(path)
            else:
                self._mark(path.parent)

    def _mark(self, directory: Path) -> None:
        if directory in self.unwatched:
            return
        try:
            handle = dir_handle(directory)
        except FanotifyUnavailable as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            self.unwatched[directory] = "its file system has no file handles"
            return
        if handle in self.dirs:
            return
        ret = _libc.fanotify_mark(self.fd, FAN_MARK_ADD, WATCH_MASK, AT_FDCWD, bytes(directory))
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno.EOPNOTSUPP, errno.ENODEV, errno.EXDEV):
                self.unwatched[directory] = f"fanotify cannot mark it ({os.strerror(err)})"
                return
            raise FanotifyUnavailable(err, f"fanotify_mark {directory}: {os.strerror(err)}")
        self.dirs[handle] = directory

    def _read(self) -> Iterator[FimEvent]:
        for _ in range(1024):  # bounded: at most 1024 reads of up to 64 KiB per poll
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                return
            for notice in parse_notices(buf):
                if notice.fd >= 0:  # FID mode reports none; close any the kernel sent anyway
                    os.close(notice.fd)
                if notice.pid != self.own_pid:
                    yield from self._to_events(notice)

    def _to_events(self, notice: RawNotice) -> Iterator[FimEvent]:
        directory = self.dirs.get(notice.handle)
        if directory is None:
            return
        path = str(directory / notice.name) if notice.name else str(directory)
        rule = self._rules.get(path) or self._dir_rules.get(str(directory))
        if rule is None:
            return  # a sibling of a protected file in the same directory
        dev, ino = _stat_key(path)
        who = _process(notice.pid)
        for bit, op in _OPS:
            if notice.mask & bit:
                yield FimEvent(
                    ts_ns=time.time_ns(),
                    pid=notice.pid,
                    tgid=notice.pid,
                    uid=who[0],
                    comm=who[1],
                    exe=who[2],
                    op=op,
                    verdict=Verdict.OBSERVED,
                    mode=Mode.MONITOR,
                    rule_id=rule[0],
                    dev=dev,
                    ino=ino,
                    rule_dev=0,
                    rule_ino=0,
                    name=notice.name,
                    path=path,
                )


def parse_notices(buf: bytes) -> Iterator[RawNotice]:
    """Decode fanotify records (FID mode); a truncated or malformed tail is ignored.

    Pure: the caller owns (and must close) any event fd a record carries.
    """
    off = 0
    while off + _META.size <= len(buf):
        event_len, _vers, _res, meta_len, mask, fd, pid = _META.unpack_from(buf, off)
        if event_len < _META.size or off + event_len > len(buf) or meta_len < _META.size:
            return
        handle, name = b"", ""
        info = off + meta_len
        end = off + event_len
        while info + _INFO_HDR.size <= end:
            info_type, _pad, info_len = _INFO_HDR.unpack_from(buf, info)
            if info_len < _INFO_HDR.size or info + info_len > end:
                break
            if info_type in (INFO_DFID_NAME, INFO_DFID):
                h_at = info + _INFO_HDR.size + 8  # after the 8-byte fsid
                if h_at + _HANDLE_HDR.size <= info + info_len:
                    size, kind = _HANDLE_HDR.unpack_from(buf, h_at)
                    body = h_at + _HANDLE_HDR.size
                    handle = struct.pack("<i", kind) + buf[body : body + size]
                    if info_type == INFO_DFID_NAME:
                        raw = buf[body + size : info + info_len]
                        name = raw.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
            info += info_len
        yield RawNotice(mask, pid, fd, handle, name)
        off += event_len


def dir_handle(directory: Path) -> bytes:
    """The file handle of ``directory`` as fanotify reports it (type, then handle bytes)."""
    fh = FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    ret = _libc.name_to_handle_at(
        AT_FDCWD, bytes(directory), ctypes.byref(fh), ctypes.byref(mount_id), 0
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise FanotifyUnavailable(err, f"name_to_handle_at {directory}: {os.strerror(err)}")
    return struct.pack("<i", fh.handle_type) + bytes(fh.f_handle[: fh.handle_bytes])


def _stat_key(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return kernel_dev(st.st_dev), st.st_ino


def _process(pid: int) -> tuple[int, str, str]:
    """(uid, comm, exe basename) of ``pid``; a process gone meanwhile is normal, not an error."""
    uid, comm, exe = UNKNOWN_UID, "", ""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        exe = Path(f"/proc/{pid}/exe").readlink().name
    except (OSError, ValueError, IndexError):
        pass
    return uid, comm, exe
