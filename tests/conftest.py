"""Shared pytest fixtures: the network-namespace test bed."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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
