"""Append-only JSON-lines audit log, each entry chained to the one before by SHA-256.

Every entry carries ``seq`` (its 1-based position), ``prev`` (the SHA-256 of the previous
line's bytes, 64 zeros for the first) and ``hash`` (the SHA-256 of the entry's own canonical
JSON without ``hash``). An edited entry fails its own hash; a removed, inserted or reordered
one breaks ``seq`` or ``prev``. A sidecar ``.head`` file records the last ``seq`` and line
hash so a cut-off tail is found too. Appends hold an exclusive ``flock`` and are fsynced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(os.environ.get("NETWEAVE_AUDIT_LOG", "/var/lib/netweave/audit.jsonl"))
GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One kernel change: what was done to which object, by which process, when."""

    action: str
    object: str
    target: str = ""
    digest: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`: ``bad_line`` is 1-based, 0 when all is well."""

    entries: int
    bad_line: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when every entry is intact and in place."""
        return self.bad_line == 0


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class AuditLog:
    """An audit log file; safe to share between threads and processes."""

    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._lock = threading.Lock()

    def append(self, entry: AuditEntry) -> dict[str, Any]:
        """Append ``entry``, flushed and fsynced; returns the record as written."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, self.path.open("a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                seq, prev = self._tail(f)
                record: dict[str, Any] = {
                    "seq": seq + 1,
                    "time": time.time(),
                    "pid": os.getpid(),
                    "action": entry.action,
                    "object": entry.object,
                    "target": entry.target,
                    "digest": entry.digest,
                    "detail": entry.detail,
                    "prev": prev,
                }
                record["hash"] = hashlib.sha256(_canonical(record)).hexdigest()
                line = _canonical(record) + b"\n"
                f.seek(0, os.SEEK_END)
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                self._write_head(record["seq"], hashlib.sha256(line.rstrip(b"\n")).hexdigest())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return record

    def record(
        self, action: str, obj: str, target: str = "", digest: str = "", **detail: Any
    ) -> None:
        """Shorthand for :meth:`append` with the entry's fields as arguments."""
        self.append(AuditEntry(action, obj, target, digest, dict(detail)))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, parsed, in file order."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line]

    def verify(self) -> VerifyResult:
        """Check the whole chain; name the first line that was edited, removed, added or moved."""
        if not self.path.exists():
            return VerifyResult(0)
        lines = self.path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        prev = GENESIS
        for no, raw in enumerate(lines, start=1):
            problem = self._check_line(raw, no, prev)
            if problem:
                return VerifyResult(no - 1, no, problem)
            prev = hashlib.sha256(raw).hexdigest()
        head = self._read_head()
        if head is not None and (head[0] != len(lines) or head[1] != prev):
            if head[0] > len(lines):
                reason = f"entries after line {len(lines)} were removed (head says {head[0]})"
            else:
                reason = "the last entry does not match the recorded head"
            return VerifyResult(len(lines), max(len(lines), 1), reason)
        return VerifyResult(len(lines))

    @staticmethod
    def _check_line(raw: bytes, no: int, prev: str) -> str:
        try:
            record = json.loads(raw)
        except ValueError:
            return "not valid JSON"
        if not isinstance(record, dict) or "hash" not in record:
            return "not an audit entry"
        claimed = record.pop("hash")
        if hashlib.sha256(_canonical(record)).hexdigest() != claimed:
            return "entry was edited (its hash does not match its content)"
        if record.get("seq") != no:
            return f"entry out of place (seq {record.get('seq')} at line {no})"
        if record.get("prev") != prev:
            return "chain broken (prev does not match the line before)"
        return ""

    @staticmethod
    def _tail(f: Any) -> tuple[int, str]:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0, GENESIS
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start).rstrip(b"\n")
            cut = data.rfind(b"\n")
            if cut >= 0 or start == 0:
                last = data[cut + 1 :]
                break
            chunk *= 4
        seq = int(json.loads(last)["seq"])
        return seq, hashlib.sha256(last).hexdigest()

    def _write_head(self, seq: int, line_hash: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        with tmp.open("w") as h:
            h.write(f"{seq} {line_hash}\n")
            h.flush()
            os.fsync(h.fileno())
        tmp.replace(self.head_path)

    def _read_head(self) -> tuple[int, str] | None:
        try:
            seq, digest = self.head_path.read_text().split()
            return int(seq), digest
        except (OSError, ValueError):
            return None


_default: AuditLog | None = None


def default_log() -> AuditLog:
    """The process-wide audit log (``$NETWEAVE_AUDIT_LOG`` or /var/lib/netweave/audit.jsonl)."""
    global _default
    if _default is None:
        _default = AuditLog(os.environ.get("NETWEAVE_AUDIT_LOG", str(DEFAULT_PATH)))
    return _default


def set_default_log(log: AuditLog) -> None:
    """Make ``log`` the process-wide audit log (tests and the agent's config use this)."""
    global _default
    _default = log
