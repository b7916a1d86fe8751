"""The audit log: hash-chained entries, and `netweave audit verify` naming the first bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netweave.audit import AuditLog
from netweave.cli import app


def _filled(path: Path, n: int = 6) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.record("map_update", "shield", "blocklist", "ab" * 32, key=f"{i:08x}")
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def test_entries_are_chained_and_complete(tmp_path: Path) -> None:
    log = _filled(tmp_path / "a.jsonl")
    entries = log.entries()
    assert [e["seq"] for e in entries] == list(range(1, 7))
    assert {"time", "pid", "action", "object", "target", "digest", "prev", "hash"} <= set(
        entries[0]
    )
    assert entries[0]["prev"] == "0" * 64
    assert log.verify().ok and log.verify().entries == 6


def _tamper_edit(lines: list[bytes]) -> list[bytes]:
    rec = json.loads(lines[2])
    rec["target"] = "allowlist"
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return lines


@pytest.mark.parametrize(
    ("tamper", "bad_line"),
    [
        (_tamper_edit, 3),
        (lambda ls: ls[:3] + ls[4:], 4),  # line 4 removed: the entry now at line 4 is out of place
        (lambda ls: [*ls[:2], ls[1], *ls[2:]], 3),  # a copy of line 2 inserted as line 3
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2),  # lines 2 and 3 swapped
        (lambda ls: ls[:-2], 4),  # the last two removed: the tail no longer matches the head
    ],
    ids=["edited", "removed", "inserted", "reordered", "truncated"],
)
def test_verify_names_the_first_bad_line(tmp_path: Path, tamper, bad_line: int) -> None:
    log = _filled(tmp_path / "a.jsonl")
    log.path.write_bytes(b"".join(tamper(_lines(log))))
    result = log.verify()
    assert not result.ok
    assert result.bad_line == bad_line, result.reason


def test_cli_verify_reports_the_line(tmp_path: Path) -> None:
    log = _filled(tmp_path / "a.jsonl")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--log", str(log.path)])
    assert ok.exit_code == 0 and "6 entries, chain intact" in ok.output
    log.path.write_bytes(b"".join(_tamper_edit(_lines(log))))
    bad = runner.invoke(app, ["audit", "verify", "--log", str(log.path)])
    assert bad.exit_code == 1
    assert "line 3: entry was edited" in bad.output


def test_appends_continue_the_chain_across_instances(tmp_path: Path) -> None:
    _filled(tmp_path / "a.jsonl", 3)
    again = _filled(tmp_path / "a.jsonl", 2)
    assert [e["seq"] for e in again.entries()] == [1, 2, 3, 4, 5]
    assert again.verify().ok
