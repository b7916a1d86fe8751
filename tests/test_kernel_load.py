"""Loading real programs on this kernel: the audit, the verifier, globals, BTF layouts."""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import struct
from pathlib import Path

import pytest

from netweave.audit import AuditLog
from netweave.kernel import AuditRefused, BpfObject, LayoutError, ObjectError, VerifierError
from netweave.kernel.helpers import HELPER_NAMES
from netweave.kernel.object import embedded_bytes

XDP_DROP, XDP_PASS = 1, 2


def udp_frame(dport: int, *, v6: bool = False) -> bytes:
    """An Ethernet frame carrying a UDP datagram to ``dport`` (checksums left zero)."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + 4, 0) + b"ping"
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, b"\xfd" + bytes(15),
                         b"\xfd" + bytes(14) + b"\x01")  # fmt: skip
        return bytes(12) + b"\x86\xdd" + ip + udp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return bytes(12) + b"\x08\x00" + ip + udp


def test_xdp_program_drops_only_its_port(test_objects: Path, audit_log: AuditLog) -> None:
    with BpfObject.from_file(test_objects / "test_xdp_drop.o") as obj:
        obj.set_rodata(drop_port=5353)
        obj.load()
        prog = obj.programs["xdp_drop_udp_port"]
        assert prog.test_run(udp_frame(5353)).retval == XDP_DROP
        assert prog.test_run(udp_frame(5353, v6=True)).retval == XDP_DROP
        assert prog.test_run(udp_frame(53)).retval == XDP_PASS
        counter = obj.map("dropped").lookup(bytes(4))
        assert counter is not None and int.from_bytes(counter, "little") == 2
        run = prog.test_run(udp_frame(5353), repeat=1000)
        assert run.retval == XDP_DROP and run.duration_ns > 0
    loads = [e for e in audit_log.entries() if e["action"] == "load"]
    assert [(e["object"], e["target"]) for e in loads] == [("test_xdp_drop", "xdp_drop_udp_port")]
    digest = hashlib.sha256((test_objects / "test_xdp_drop.o").read_bytes()).hexdigest()
    assert loads[0]["digest"] == digest


def test_globals_can_only_be_set_before_load(test_objects: Path) -> None:
    with BpfObject.from_file(test_objects / "test_xdp_drop.o") as obj:
        with pytest.raises(ObjectError, match="no const volatile global 'nope'"):
            obj.set_rodata(nope=1)
        obj.load()
        with pytest.raises(ObjectError, match="loaded"):
            obj.set_rodata(drop_port=1)


def test_audit_refuses_probe_write_user(test_objects: Path, audit_log: AuditLog) -> None:
    obj = BpfObject.from_file(test_objects / "test_write_user.o")
    with obj, pytest.raises(AuditRefused) as refused:
        obj.load()
    err = refused.value
    assert err.program == "scribble"
    assert err.call == "bpf_probe_write_user"
    assert f"instruction {err.index} calls bpf_probe_write_user" in str(err)
    assert not [e for e in audit_log.entries() if e["action"] == "load"]


def test_audit_names_the_exact_instruction(test_objects: Path) -> None:
    with BpfObject.from_file(test_objects / "test_write_user.o") as obj:
        insns = obj.programs["scribble"].insns()
        with pytest.raises(AuditRefused) as refused:
            obj.load()
    code, regs, _, imm = struct.unpack_from("<BBhi", insns, refused.value.index * 8)
    assert (code, regs >> 4, imm) == (0x85, 0, 36)


def test_audit_finds_refused_helper_in_subprogram(test_objects: Path) -> None:
    with BpfObject.from_file(test_objects / "test_hidden_call.o") as obj:
        with pytest.raises(AuditRefused, match="bpf_send_signal"):
            obj.load()
        assert obj.programs["hidden"].fd < 0


def test_verifier_rejection_carries_the_verifiers_reason(test_objects: Path) -> None:
    obj = BpfObject.from_file(test_objects / "test_rejected.o")
    with obj, pytest.raises(VerifierError) as rejected:
        obj.load()
    assert rejected.value.program == "unchecked_read"
    assert "invalid access to packet" in rejected.value.log
    assert "invalid access to packet" in str(rejected.value)


class TestRecord(ctypes.Structure):
    """The Python side of ``struct nw_test_rec`` in tests/bpf/test_tc_records.bpf.c."""

    __test__ = False
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("ts_ns", ctypes.c_uint64),
    ]


def test_record_layout_checked_against_btf(test_objects: Path) -> None:
    class Drifted(ctypes.Structure):  # sport and dport swapped
        _fields_ = [TestRecord._fields_[i] for i in (0, 1, 2, 3, 5, 4, 6, 7, 8)]

    class Short(ctypes.Structure):
        _fields_ = TestRecord._fields_[:-1]

    with BpfObject.from_file(test_objects / "test_tc_records.o") as obj:
        obj.check_record("nw_test_rec", TestRecord)
        with pytest.raises(LayoutError, match="member sport at C offset 16, Python offset 18"):
            obj.check_record("nw_test_rec", Drifted)
        with pytest.raises(LayoutError, match="C size 32"):
            obj.check_record("nw_test_rec", Short)
        with pytest.raises(LayoutError, match="not in the object's BTF"):
            obj.check_record("no_such_struct", TestRecord)


def test_packaged_objects_are_checked_against_their_digest(tmp_path: Path, monkeypatch) -> None:
    data, digest = embedded_bytes("probe")
    assert hashlib.sha256(data).hexdigest() == digest
    fake = tmp_path / "objects"
    shutil.copytree(Path(__file__).parent.parent / "src/netweave/kernel/objects", fake)
    (fake / "probe.o").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setattr("netweave.kernel.object.resources.files", lambda _pkg: fake)
    with pytest.raises(ObjectError, match="does not match its manifest digest"):
        embedded_bytes("probe")
    with pytest.raises(ObjectError, match="not built into the package"):
        embedded_bytes("no_such_object")


def test_helper_table_matches_installed_uapi_header() -> None:
    header = Path("/usr/include/linux/bpf.h").read_text()
    start = header.index("#define __BPF_FUNC_MAPPER(FN)")
    mapper = header[start : header.index("\n\n", start)]
    found = re.findall(r"\tFN\((\w+)", mapper)
    assert len(found) > 150, "too few FN(name) entries in <linux/bpf.h>"
    common = min(len(found), len(HELPER_NAMES))
    assert list(HELPER_NAMES[:common]) == found[:common]


def test_closing_a_tp_btf_link_detaches_it() -> None:
    with BpfObject.embedded("probe") as obj:
        for prog in obj.programs.values():
            prog.autoload = prog.name == "probe_tp_btf"
        obj.load()
        prog = obj.programs["probe_tp_btf"]
        first = prog.attach()
        first.close()
        # A program can be attached to one tracepoint once: this fails if the first stayed.
        second = prog.attach()
        second.close()
