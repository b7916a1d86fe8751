"""`netweave doctor --json` agrees with independent witnesses of what this host supports."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from netweave.kernel import ensure_mounted

from testbed import TestBed


def _doctor(*args: str) -> str:
    cmd = [sys.executable, "-m", "netweave", "doctor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(_doctor("--json"))


def _available(report: dict, name: str) -> bool:
    return bool(report["features"][name]["available"])


def _bpftool_loads(obj: Path, tag: str) -> bool:
    pin = ensure_mounted() / f"nwt-doctor-witness-{tag}"
    try:
        return subprocess.run(["bpftool", "prog", "load", str(obj), str(pin)],
                              capture_output=True, check=False).returncode == 0  # fmt: skip
    finally:
        pin.unlink(missing_ok=True)


def test_every_feature_is_reported(report: dict) -> None:
    assert report["kernel"] == platform.release()
    expected = {"btf", "bpffs", "capabilities", "xdp_native", "xdp_generic", "tcx", "tc",
                "tp_btf", "ringbuf", "lsm", "fentry", "kprobes"}  # fmt: skip
    assert set(report["features"]) == expected
    missing = {n for n, f in report["features"].items() if not f["available"]}
    assert set(report["fallbacks"]) == missing
    for name in missing:
        assert report["fallbacks"][name], f"no fallback sentence for {name}"


def test_btf_kprobes_and_capabilities_match_the_kernel(report: dict) -> None:
    assert _available(report, "btf") == Path("/sys/kernel/btf/vmlinux").exists()
    kprobe_pmu = Path("/sys/bus/event_source/devices/kprobe").exists()
    assert _available(report, "kprobes") == kprobe_pmu
    cap_eff = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                   if ln.startswith("CapEff"))  # fmt: skip
    assert _available(report, "capabilities") == (int(cap_eff.split()[1], 16) >> 39 & 1 == 1)
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    assert _available(report, "ringbuf") == ((major, minor) >= (5, 8))
    assert _available(report, "tcx") == ((major, minor) >= (6, 6))


def test_lsm_and_fentry_match_bpftool(report: dict, test_objects: Path) -> None:
    assert _available(report, "lsm") == _bpftool_loads(test_objects / "test_lsm_only.o", "lsm")
    fentry = _bpftool_loads(test_objects / "test_fentry_only.o", "fentry")
    assert _available(report, "fentry") == fentry


def test_xdp_and_tc_match_iproute2(report: dict, testbed: TestBed, test_objects: Path) -> None:
    a, b = testbed.add_ns("a"), testbed.add_ns("b")
    link = testbed.link(a, b)
    obj = str(test_objects / "test_xdp_drop.o")
    for mode, feature in (("xdpgeneric", "xdp_generic"), ("xdpdrv", "xdp_native")):
        ok = testbed.run(a, ["ip", "link", "set", "dev", link.dev_a, mode, "obj", obj,
                             "sec", "xdp"], check=False).returncode == 0  # fmt: skip
        testbed.run(a, ["ip", "link", "set", "dev", link.dev_a, mode, "off"], check=False)
        assert _available(report, feature) == ok, mode
    testbed.run(a, ["tc", "qdisc", "add", "dev", link.dev_a, "clsact"])
    tc_ok = testbed.run(a, ["tc", "filter", "add", "dev", link.dev_a, "ingress", "bpf", "da",
                            "obj", str(test_objects / "test_tc_records.o"), "sec", "tc"],
                        check=False).returncode == 0  # fmt: skip
    assert _available(report, "tc") == tc_ok


def test_text_report_says_what_falls_back() -> None:
    out = _doctor()
    data = json.loads(_doctor("--json"))
    for name, sentence in data["fallbacks"].items():
        assert f"{name} unavailable: {sentence}." in out
