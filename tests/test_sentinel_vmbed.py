"""The VM bed's building blocks that run without booting: kernel extraction, module order,
and the verdict rule (marker line and results file must agree)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from netweave.sentinel.vmbed.boot import _exit_code
from netweave.sentinel.vmbed.build import VmBedError, extract_vmlinux, module_dependencies
from netweave.sentinel.vmbed.guest_init import EXIT_MARKER, INIT_SCRIPT

ELF = b"\x7fELF\x02\x01\x01" + bytes(200)


def test_the_elf_kernel_is_found_after_the_setup_code_and_decompressed() -> None:
    bzimage = b"MZ" + bytes(5000) + lzma.compress(ELF, format=lzma.FORMAT_XZ) + b"\0" * 64
    assert extract_vmlinux(bzimage, Path("vmlinuz")) == ELF


def test_a_bzimage_without_a_payload_is_refused_naming_the_file() -> None:
    with pytest.raises(VmBedError, match="vmlinuz-x: no xz or zstd payload"):
        extract_vmlinux(b"MZ" + bytes(100), Path("vmlinuz-x"))


def test_a_payload_that_is_not_an_elf_kernel_is_refused() -> None:
    bzimage = b"MZ" + lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    with pytest.raises(VmBedError, match="did not decompress to an ELF kernel"):
        extract_vmlinux(bzimage, Path("vmlinuz"))


def test_a_corrupt_xz_payload_names_the_byte_offset() -> None:
    payload = bytearray(lzma.compress(ELF * 20, format=lzma.FORMAT_XZ))
    payload[40:60] = bytes(20)
    with pytest.raises(VmBedError, match="xz payload at byte 10 is corrupt"):
        extract_vmlinux(b"MZ" + bytes(8) + bytes(payload), Path("vmlinuz"))


def test_module_dependencies_come_from_modinfo(tmp_path: Path) -> None:
    ko = tmp_path / "9p.ko"
    ko.write_bytes(b"\x7fELF junk\0license=GPL\0depends=9pnet,netfs\0intree=Y\0")
    assert module_dependencies(ko) == ["9pnet", "netfs"]
    ko.write_bytes(b"\x7fELF\0depends=\0")
    assert module_dependencies(ko) == []


def test_the_verdict_needs_the_marker_and_the_results_file_to_agree(tmp_path: Path) -> None:
    console = f"boot noise\n{EXIT_MARKER} rc=0\n[ 9.1] reboot: Power down\n"
    assert _exit_code(console, tmp_path) is None  # no rc file: the share never got it
    (tmp_path / "rc").write_text("0\n")
    assert _exit_code(console, tmp_path) == 0
    (tmp_path / "rc").write_text("1\n")
    assert _exit_code(console, tmp_path) is None  # disagreement is not a pass
    (tmp_path / "rc").write_text("1\n")
    assert _exit_code(f"{EXIT_MARKER} rc=1\n", tmp_path) == 1
    assert _exit_code("kernel panic, no marker\n", tmp_path) is None


def test_the_guest_init_mounts_and_loads_what_the_tests_need() -> None:
    for needed in ("mount -t bpf", "mount -t 9p", "insmod", "poweroff -f", EXIT_MARKER):
        assert needed in INIT_SCRIPT
