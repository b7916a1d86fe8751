"""`netweave probe` without servers: argument errors, damaged probes files, Exclude."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from netweave.services.cli import parse_target
from netweave.services.probes_file import DEFAULT_PROBES_PATH

NETWEAVE = str(Path(sys.executable).with_name("netweave"))
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "schemas" / "service-record.schema.json").read_text()
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NETWEAVE, "probe", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_parse_target() -> None:
    assert (parse_target("127.0.0.1:22").host, parse_target("127.0.0.1:22").port) == (
        "127.0.0.1",
        22,
    )
    assert parse_target("[::1]:8443").host == "::1"
    for bad in ("127.0.0.1", "host:0", "host:70000", "host:22/sctp", ":22"):
        with pytest.raises(ValueError, match=r"HOST:PORT|protocol"):
            parse_target(bad)


def test_bad_target_is_one_clear_error() -> None:
    out = _run("localhost")
    assert out.returncode == 2 and "'localhost' is not HOST:PORT" in out.stderr


def test_damaged_probes_file_is_reported_with_line_and_count(tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.write_text(
        "Probe TCP NULL q||\n"
        "match ssh m|^SSH-| p/x/\n"
        "match broken m|^SSH-\n"
        "Probe TCP GetRequest q|GET / HTTP/1.0\\r\\n\\r\\n|\n"
        "match recursive m|^(?R)|\n"
    )
    out = _run("--check-probes", "--probes-file", str(probes))
    assert out.returncode == 0, out.stderr
    assert "2 probes, 2 match and 0 softmatch lines, 1 damaged line(s) skipped" in out.stdout
    assert "1 pattern(s) Python re cannot run" in out.stdout
    assert "skipped line 3:" in out.stdout
    assert "cannot run line 5 (recursive)" in out.stdout


def test_missing_probes_file_is_one_clear_error(tmp_path: Path) -> None:
    out = _run("--probes-file", str(tmp_path / "nope"), "127.0.0.1:1")
    assert out.returncode == 2
    assert "cannot read nmap service probes file" in out.stderr


@pytest.mark.skipif(not DEFAULT_PROBES_PATH.exists(), reason="nmap-service-probes missing")
def test_excluded_port_is_not_probed() -> None:
    out = _run("--json", "--verbose", "127.0.0.1:9100")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    jsonschema.validate(record, SCHEMA)
    assert record["service"] is None and "Exclude" in record["error"]
    assert "probe NULL" not in out.stderr
