"""Shared pytest fixtures: the network-namespace test bed."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netweave.audit import AuditLog, default_log, set_default_log
from netweave.kernel import ensure_mounted

from testbed import TestBed


def _bed_capable() -> str | None:
    """Why this machine cannot build a test bed, or None when it can."""
    if os.geteuid() != 0:
        return "the test bed needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create namespaces"
    if shutil.which("ip") is None:
        return "the test bed needs iproute2's `ip`"
    return None


@pytest.fixture
def testbed() -> Iterator[TestBed]:
    """A fresh test bed, torn down after the test whether it passed or failed."""
    reason = _bed_capable()
    if reason is not None:
        pytest.skip(reason)
    bed = TestBed()
    try:
        yield bed
    finally:
        bed.close()


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    """Every test writes kernel changes to its own audit log, never the host's."""
    log = AuditLog(tmp_path / "audit.jsonl")
    previous = default_log()
    set_default_log(log)
    try:
        yield log
    finally:
        set_default_log(previous)


@pytest.fixture(scope="session")
def test_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding tests/bpf/*.bpf.c compiled by ``make bpf-tests``."""
    out = tmp_path_factory.mktemp("bpf-objects")
    subprocess.run(["make", "-s", "-C", str(REPO), "bpf-tests", f"TEST_OBJDIR={out}"], check=True)
    return out


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A fresh folder on bpffs for a test's pins, removed with everything in it afterwards."""
    root = ensure_mounted() / f"nwt-pins-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        for pin in root.iterdir():
            pin.unlink()
        root.rmdir()
