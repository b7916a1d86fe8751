"""The sentinel on this host: policy, event records, fanotify monitoring, CLI and status.

BPF LSM does not load on this host's kernel, so here the sentinel monitors (fanotify) and
says so; enforcement itself is tested in the VM bed (test_sentinel_vm.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.audit import AuditLog, set_default_log
from netweave.kernel import BpfObject
from netweave.sentinel.events import (
    EVENT_SIZE,
    EventDecodeError,
    FimEventC,
    Mode,
    Operation,
    Verdict,
    decode,
)
from netweave.sentinel.fanotify import FanotifyMonitor, parse_notices
from netweave.sentinel.policy import Policy, PolicyError, Rule, kernel_dev
from netweave.sentinel.status import examine, probe_lsm

NETWEAVE = [str(Path(sys.executable).with_name("netweave"))]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify FID reporting needs root")


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    set_default_log(log)
    return log


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    root = tmp_path / "etc-app"
    (root / "conf.d").mkdir(parents=True)
    (root / "main.conf").write_text("a=1\n")
    (root / "conf.d" / "extra.conf").write_text("b=2\n")
    return root


def _poll_until(monitor: FanotifyMonitor, want: int, seconds: float = 5.0) -> list[object]:
    events: list[object] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(events) < want:
        events.extend(monitor.poll(0.2))
    return events


# -- fanotify fallback ---------------------------------------------------------------------
@needs_root
def test_fanotify_reports_writes_and_deletions_of_watched_paths(
    watched: Path, tmp_path: Path, audit: AuditLog
) -> None:
    bystander = tmp_path / "unwatched.conf"
    resolved = Policy.of([Rule(watched, Mode.MONITOR, "test")]).resolve()
    with FanotifyMonitor(resolved) as monitor:
        subprocess.run(
            ["sh", "-c", f"echo x >> {watched}/main.conf; rm {watched}/conf.d/extra.conf; "
             f"mv {watched}/main.conf {tmp_path}/stolen.conf; echo y > {bystander}"],
            check=True,
        )  # fmt: skip
        events = monitor.poll(2.0)
        events += monitor.poll(0.5)
    seen = {(e.op, e.path) for e in events}
    assert (Operation.MODIFY, str(watched / "main.conf")) in seen
    assert (Operation.CLOSE_WRITE, str(watched / "main.conf")) in seen
    assert (Operation.DELETE, str(watched / "conf.d" / "extra.conf")) in seen
    assert (Operation.MOVED_FROM, str(watched / "main.conf")) in seen
    assert all(e.verdict is Verdict.OBSERVED for e in events)
    assert str(bystander) not in {e.path for e in events}
    logged = {(e["detail"]["op"], e["detail"]["path"]) for e in audit.entries()}
    assert ("delete", str(watched / "conf.d" / "extra.conf")) in logged
    assert audit.verify().ok


@needs_root
def test_fanotify_watches_a_single_file_and_not_its_siblings(
    watched: Path, audit: AuditLog
) -> None:
    target = watched / "main.conf"
    sibling = watched / "sibling.conf"
    resolved = Policy.of([Rule(target, Mode.MONITOR, "test")]).resolve()
    with FanotifyMonitor(resolved) as monitor:
        sibling.write_text("not watched\n")
        subprocess.run(["sh", "-c", f"echo z > {target}"], check=True)
        events = monitor.poll(2.0)
    assert {e.path for e in events} == {str(target)}
    assert {e.op for e in events} >= {Operation.MODIFY, Operation.CLOSE_WRITE}
    assert all(e.pid != os.getpid() for e in events)


# -- policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[[protect]\npath = 1", "not valid TOML"),
        ('[[protect]]\npath = "relative/x"\n', "protect[0]: `path` must be an absolute path"),
        ('[[protect]]\npath = "/etc"\nmode = "deny"\n', 'protect[0]: `mode` must be "enforce"'),
        ('[[protect]]\npath = "/etc"\nowner = "x"\n', "protect[0]: unknown keys owner"),
        ('protect = "x"\n', "`protect` must be an array of tables"),
        ('defaults = "yes"\n', "`defaults` must be true or false"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_file_and_entry(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_a_missing_protected_path_is_an_error_naming_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text(f'[[protect]]\npath = "{tmp_path}/nope"\n')
    with pytest.raises(PolicyError, match=r"protect\[0\]: path .*/nope does not exist"):
        Policy.load(path).resolve()


def test_a_directory_rule_covers_every_inode_below_it_with_kernel_dev_keys(watched: Path) -> None:
    (watched / "link").symlink_to("/etc/passwd")
    resolved = Policy.of([Rule(watched, Mode.ENFORCE, "t")]).resolve()
    paths = {p.path for p in resolved.inodes}
    assert paths == {
        str(watched),
        str(watched / "main.conf"),
        str(watched / "conf.d"),
        str(watched / "conf.d" / "extra.conf"),
        str(watched / "link"),  # the link itself, not /etc/passwd
    }
    st_dev = watched.stat().st_dev
    assert {p.dev for p in resolved.inodes} == {(os.major(st_dev) << 20) | os.minor(st_dev)}
    assert kernel_dev(os.makedev(8, 1)) == (8 << 20) | 1
    assert kernel_dev(os.makedev(259, 3)) == (259 << 20) | 3


def test_a_tree_larger_than_the_kernel_table_is_refused(watched: Path) -> None:
    with pytest.raises(PolicyError, match="past 3"):
        Policy.of([Rule(watched, Mode.ENFORCE, "t")]).resolve(limit=3)


def test_defaults_protect_netweave_config_and_pins_and_enforcement_is_detected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text('[[protect]]\npath = "/tmp"\nmode = "monitor"\n')
    with_defaults = Policy.load(path)
    assert [(str(r.path), r.mode) for r in with_defaults.rules[:3]] == [
        ("/etc/netweave", Mode.ENFORCE),
        ("/sys/fs/bpf/netweave", Mode.ENFORCE),
        ("/var/lib/netweave", Mode.MONITOR),
    ]
    assert with_defaults.enforcing
    assert not Policy.load(path, defaults=False).enforcing


# -- kernel records ------------------------------------------------------------------------
def test_the_event_record_matches_the_objects_btf() -> None:
    with BpfObject.embedded("sentinel") as obj:
        obj.check_record("nw_fim_event", FimEventC)
    assert EVENT_SIZE == 168


def _record(op: int, verdict: int, mode: int, comm: bytes, name: bytes) -> bytes:
    return struct.pack(
        "<QQQIIIIIIHBBI16s32s64s", 5, 42, 7, 22, 22, 100, 99, 0, 3, op, verdict, mode, 0,
        comm, b"busybox", name,
    )  # fmt: skip


def test_a_record_decodes_into_an_event() -> None:
    event = decode(_record(4, 1, 1, b"rm", b"a.conf"))
    assert (event.op, event.verdict, event.mode) == (Operation.UNLINK, Verdict.DENY, Mode.ENFORCE)
    assert (event.pid, event.tgid, event.comm, event.exe, event.name) == (
        100, 99, "rm", "busybox", "a.conf",
    )  # fmt: skip
    assert (event.dev, event.ino, event.rule_ino) == (22, 42, 7)
    assert json.loads(json.dumps(event.to_json()))["op"] == "unlink"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_raises_only_event_decode_error(raw: bytes) -> None:
    with contextlib.suppress(EventDecodeError):
        decode(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=16),
    st.binary(max_size=64),
)
def test_records_of_the_right_size_decode_or_name_the_bad_field(
    op: int, verdict: int, mode: int, comm: bytes, name: bytes
) -> None:
    try:
        event = decode(_record(op, verdict, mode, comm, name))
    except EventDecodeError as e:
        assert "unknown field value" in str(e)
    else:
        assert event.op == op and event.verdict == verdict and event.mode == mode


# -- status and CLI ------------------------------------------------------------------------
def test_status_says_monitoring_not_enforcing_exactly_when_lsm_cannot_load() -> None:
    available, reason = probe_lsm()
    status = examine()
    assert status.lsm_available == available
    out = subprocess.run(
        [*NETWEAVE, "sentinel", "status"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    if not available:
        assert reason
        assert out.stdout.startswith("monitoring, not enforcing: BPF LSM is unavailable")
        assert json.loads(
            subprocess.run([*NETWEAVE, "sentinel", "status", "--json"], capture_output=True,
                           text=True, check=True).stdout
        )["mode"] == "monitoring, not enforcing"  # fmt: skip
    else:
        assert "monitoring, not enforcing" not in out.stdout


@needs_root
def test_sentinel_fails_closed_when_enforcement_is_configured_but_lsm_cannot_load(
    watched: Path, tmp_path: Path
) -> None:
    if probe_lsm()[0]:
        pytest.skip("BPF LSM works on this host: the fail-closed path cannot be reached here")
    policy = tmp_path / "sentinel.toml"
    policy.write_text(f'defaults = false\n[[protect]]\npath = "{watched}"\nmode = "enforce"\n')
    env = {**os.environ, "NETWEAVE_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    out = subprocess.run(
        [*NETWEAVE, "sentinel", "--policy", str(policy), "--duration", "1"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 3
    assert "refusing to start" in out.stderr
    assert "--allow-unprotected" in out.stderr


@needs_root
def test_sentinel_allow_unprotected_monitors_and_reports_changes(
    watched: Path, tmp_path: Path
) -> None:
    if probe_lsm()[0]:
        pytest.skip("BPF LSM works on this host: the sentinel would enforce, not monitor")
    policy = tmp_path / "sentinel.toml"
    policy.write_text(f'defaults = false\n[[protect]]\npath = "{watched}"\nmode = "enforce"\n')
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "NETWEAVE_AUDIT_LOG": str(log)}
    agent = subprocess.Popen(
        [*NETWEAVE, "sentinel", "--policy", str(policy), "--duration", "6",
         "--allow-unprotected"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert agent.stderr is not None
        line = agent.stderr.readline()  # libbpf's own lines come first
        deadline = time.monotonic() + 30
        while "monitoring, not enforcing" not in line and time.monotonic() < deadline:
            line = agent.stderr.readline()
        assert "monitoring, not enforcing" in line
        (watched / "main.conf").write_text("tampered\n")
        (watched / "conf.d" / "extra.conf").unlink()
        out, _ = agent.communicate(timeout=30)
    finally:
        agent.kill()
        agent.wait()
    events = [json.loads(x) for x in out.splitlines()]
    seen = {(e["op"], e["path"]) for e in events}
    assert ("close_write", str(watched / "main.conf")) in seen
    assert ("delete", str(watched / "conf.d" / "extra.conf")) in seen
    assert {e["verdict"] for e in events} == {"observed"}
    entries = AuditLog(log).entries()
    assert any(e["action"] == "fim" and e["detail"]["op"] == "delete" for e in entries)


@needs_root
def test_fanotify_names_directories_it_cannot_watch_instead_of_failing(watched: Path) -> None:
    from netweave.kernel import bpffs

    pins = bpffs.ensure_mounted() / f"nw-sentinel-test-{os.getpid()}"
    pins.mkdir()
    try:
        resolved = Policy.of(
            [Rule(pins, Mode.MONITOR, "test"), Rule(watched, Mode.MONITOR, "test")]
        ).resolve()
        with FanotifyMonitor(resolved) as monitor:
            assert monitor.unwatched == {pins: "its file system has no file handles"}
            assert watched in monitor.dirs.values()
    finally:
        pins.rmdir()


def _notice(mask: int, handle: bytes, name: bytes) -> bytes:
    fid = struct.pack("<Q", 7) + struct.pack("<Ii", len(handle), 1) + handle + name + b"\0"
    info = struct.pack("<BBH", 2, 0, 4 + len(fid)) + fid
    return struct.pack("<IBBHQii", 24 + len(info), 3, 0, 24, mask, -1, 4242) + info


def test_fanotify_records_decode_into_mask_pid_handle_and_name() -> None:
    buf = _notice(0x200, b"\xaa" * 8, b"gone.conf") + _notice(0x2, b"\xbb" * 8, b"x")
    notices = list(parse_notices(buf))
    assert [(n.mask, n.pid, n.fd, n.name) for n in notices] == [
        (0x200, 4242, -1, "gone.conf"),
        (0x2, 4242, -1, "x"),
    ]
    assert notices[0].handle == struct.pack("<i", 1) + b"\xaa" * 8
    assert list(parse_notices(buf[:30])) == []  # a cut record is dropped, not misread


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fanotify_parsing_of_arbitrary_bytes_never_raises(raw: bytes) -> None:
    for notice in parse_notices(raw):
        assert isinstance(notice.name, str)
