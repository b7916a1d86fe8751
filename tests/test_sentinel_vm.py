"""The sentinel's enforcement tests, run inside the VM bed (Debian 6.1 kernel, BPF LSM on).

One session fixture builds the bed (cached under /var/cache/netweave-vmbed) and boots it
once; inside, pytest runs tests/vmguest/vm_test_*.py against the project's own code over
9p and writes a JUnit report back. Each guest test then appears here as its own test, so a
failure names the guest test and carries its message.
"""

from __future__ import annotations

import ast
import shutil
import sysconfig
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from netweave.sentinel.vmbed import VmRun, boot, build_bed, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
GUEST_DIR = REPO / "tests" / "vmguest"
GUEST_FILE = GUEST_DIR / "vm_test_sentinel.py"
GUEST_PYTEST = (
    "cd /share && PYTHONPATH=/share/src NETWEAVE_GUEST_SITE={site} "
    "python3 -m pytest -p no:cacheprovider --noconftest "
    "-o addopts= -o 'python_files=vm_test_*.py' -q -rfE --durations=5 "
    "--junitxml=$VMBED_RUN/junit.xml tests/vmguest"
)


def _guest_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


def _guest_site() -> str:
    """The virtualenv's site-packages as the guest sees it (the guest's Python is the same
    3.11), so guest tests can run the real CLI with typer; empty when it is not in the share."""
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not site.is_relative_to(REPO):
        return "''"
    return f"/share/{site.relative_to(REPO)}"


@dataclass(frozen=True, slots=True)
class GuestOutcome:
    """One guest test's result as the guest's JUnit report states it."""

    outcome: str
    message: str


@dataclass(frozen=True, slots=True)
class GuestSession:
    """The VM run and the per-test outcomes read from its report."""

    run: VmRun
    outcomes: dict[str, GuestOutcome]


def _read_junit(report: Path) -> dict[str, GuestOutcome]:
    outcomes: dict[str, GuestOutcome] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "") + "\n" + (child.text or "")
        outcomes[name] = GuestOutcome(outcome, message)
    return outcomes


@pytest.fixture(scope="session")
def guest() -> GuestSession:
    """Build (or reuse) the bed and run the guest suite once per session."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the VM bed cannot run here: {reason}")
    if not (REPO / "src" / "netweave" / "kernel" / "objects" / "sentinel.o").exists():
        pytest.fail("sentinel.o is not built: run `make bpf` first")
    image = build_bed()
    run = boot(image, REPO, GUEST_PYTEST.format(site=_guest_site()), timeout_s=420)
    report = run.run_dir / "junit.xml"
    outcomes = _read_junit(report) if report.exists() else {}
    session = GuestSession(run, outcomes)
    if run.passed:
        shutil.rmtree(run.run_dir, ignore_errors=True)
    return session


def test_the_vm_boots_and_reports_a_verdict(guest: GuestSession) -> None:
    assert not guest.run.timed_out, f"the VM timed out:\n{guest.run.console[-4000:]}"
    assert guest.run.exit_code is not None, f"no exit marker:\n{guest.run.console[-4000:]}"
    assert guest.run.duration_s < 600


@pytest.mark.parametrize("name", _guest_tests(GUEST_FILE))
def test_in_vm(guest: GuestSession, name: str) -> None:
    result = guest.outcomes.get(name)
    assert result is not None, (
        f"guest test {name} did not run; console tail:\n{guest.run.console[-4000:]}"
    )
    assert result.outcome == "passed", f"guest test {name} {result.outcome}:\n{result.message}"
