"""Where the shared conformance captures live, for the capture and fingerprint tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()


def fixtures() -> Path:
    """``../shared/fixtures`` from the repo root; fails under CI=true when it is missing."""
    if not (FIXTURES / "ja4" / "pcap").is_dir():
        message = f"conformance fixtures not found at {FIXTURES}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: they must be present)")
        pytest.skip(message)
    return FIXTURES


def pcap(name: str) -> Path:
    """Path of one fixture capture."""
    return fixtures() / "ja4" / "pcap" / name


def all_pcaps() -> list[str]:
    """Names of every fixture capture (empty when the fixtures are absent)."""
    folder = FIXTURES / "ja4" / "pcap"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def p0f_entries(log: Path) -> list[dict[str, str]]:
    """Every line of a p0f ``-o`` log as its ``key=value`` fields (``mod``, ``cli``, ...)."""
    return [
        dict(field.split("=", 1) for field in line.split("] ", 1)[1].split("|"))
        for line in log.read_text().splitlines()
        if "] " in line
    ]
