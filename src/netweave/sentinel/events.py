"""File-integrity events: the kernel's ``struct nw_fim_event`` decoded into records.

The layout lives once in ``bpf/sentinel.h``; :class:`FimEventC` mirrors it and is checked
against the loaded object's BTF (size and every field offset) before anything is decoded.
A record of the wrong size is counted and dropped, never decoded.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from dataclasses import dataclass


class Operation(enum.IntEnum):
    """What a process tried to do (``enum nw_fim_op``)."""

    OPEN_WRITE = 1
    SETATTR = 2
    TRUNCATE = 3
    UNLINK = 4
    RMDIR = 5
    RENAME = 6
    LINK = 7
    CREATE = 8
    MAP_WRITE = 9
    HANDSHAKE = 10
    LINK_OPEN = 11
    PTRACE = 12
    PIN_WRITE = 13
    # Reported by the fanotify fallback only (it sees what happened, not attempts).
    MODIFY = 100
    CLOSE_WRITE = 101
    DELETE = 102
    MOVED_FROM = 103
    MOVED_TO = 104


class Mode(enum.IntEnum):
    """How a rule acts: deny and report, or report and allow."""

    ENFORCE = 1
    MONITOR = 2


class Verdict(enum.IntEnum):
    """What the kernel decided (``enum nw_fim_verdict``); OBSERVED for fanotify reports."""

    ALLOW = 0
    DENY = 1
    OBSERVED = 2


class FimEventC(ctypes.Structure):
    """``struct nw_fim_event`` as laid out by clang for BPF (little-endian, no implicit padding)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("rule_ino", ctypes.c_uint64),
        ("dev", ctypes.c_uint32),
        ("rule_dev", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("op", ctypes.c_uint16),
        ("verdict", ctypes.c_uint8),
        ("mode", ctypes.c_uint8),
        ("pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("exe", ctypes.c_char * 32),
        ("name", ctypes.c_char * 64),
    ]


_LAYOUT = struct.Struct("<QQQIIIIIIHBBI16s32s64s")
EVENT_SIZE = _LAYOUT.size
assert ctypes.sizeof(FimEventC) == EVENT_SIZE


@dataclass(frozen=True, slots=True)
class FimEvent:
    """One file-integrity decision or observation.

    ``dev`` is the kernel's ``s_dev`` ((major << 20) | minor). ``name`` is the entry the
    operation named (for MAP_WRITE, the map's name and ``ino`` its id). ``path`` is filled in
    by the policy when it knows the inode; empty otherwise.
    """

    ts_ns: int
    pid: int
    tgid: int
    uid: int
    comm: str
    exe: str
    op: Operation
    verdict: Verdict
    mode: Mode
    rule_id: int
    dev: int
    ino: int
    rule_dev: int
    rule_ino: int
    name: str
    path: str = ""

    def to_json(self) -> dict[str, object]:
        """The event as a flat JSON object (audit log detail, API)."""
        return {
            "ts_ns": self.ts_ns,
            "pid": self.pid,
            "tgid": self.tgid,
            "uid": self.uid,
            "comm": self.comm,
            "exe": self.exe,
            "op": self.op.name.lower(),
            "verdict": self.verdict.name.lower(),
            "mode": self.mode.name.lower(),
            "rule_id": self.rule_id,
            "dev": self.dev,
            "ino": self.ino,
            "name": self.name,
            "path": self.path,
        }


class EventDecodeError(ValueError):
    """A kernel record that cannot be an ``nw_fim_event``; the message says why."""


def decode(record: bytes) -> FimEvent:
    """Decode one ring-buffer record; raises EventDecodeError on a wrong size or field value."""
    if len(record) != EVENT_SIZE:
        raise EventDecodeError(f"fim event is {len(record)} bytes, expected {EVENT_SIZE}")
    (ts, ino, rule_ino, dev, rule_dev, pid, tgid, uid, rule_id, op, verdict, mode, _pad, comm,
     exe, name) = _LAYOUT.unpack(record)  # fmt: skip
    try:
        operation = Operation(op)
        decided = Verdict(verdict)
        how = Mode(mode)
    except ValueError as e:
        raise EventDecodeError(f"fim event has an unknown field value: {e}") from None
    return FimEvent(
        ts_ns=ts,
        pid=pid,
        tgid=tgid,
        uid=uid,
        comm=_text(comm),
        exe=_text(exe),
        op=operation,
        verdict=decided,
        mode=how,
        rule_id=rule_id,
        dev=dev,
        ino=ino,
        rule_dev=rule_dev,
        rule_ino=rule_ino,
        name=_text(name),
    )


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
