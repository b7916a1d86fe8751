"""Sentinel enforcement, run INSIDE the VM bed (Debian 6.1, lsm=...,bpf) by test_sentinel_vm.py.

This process is the agent: it loads the sentinel once (each load costs seconds under
emulation) and performs the handshake. Everything the tests try as "another process" is a
real root shell command (busybox, bpftool, python3) started from here: a child process is
never the agent. Files live on the guest's tmpfs. Only pytest 7 and the standard library
are in the guest, so this file uses nothing else.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netweave.audit import AuditLog, set_default_log
from netweave.kernel import Map
from netweave.sentinel.events import FimEvent, Mode, Operation, Verdict
from netweave.sentinel.lsm import HANDSHAKE, PIN_DIR, LsmSentinel
from netweave.sentinel.policy import Policy, Rule

WORK = Path("/tmp/sentinel")
# `netweave sentinel` without importing every other subcommand (numpy, the agent...): the
# same typer app, and each import costs seconds under emulation.
SENTINEL_CLI = ["python3", "-c", "from netweave.sentinel.cli import app; app()"]
AUDIT = Path("/tmp/sentinel-audit/audit.jsonl")


@pytest.fixture(scope="module")
def sentinel() -> Iterator[LsmSentinel]:
    """The sentinel, loaded, attached, pinned and handshaken once for the whole module."""
    log = AuditLog(AUDIT)
    set_default_log(log)
    WORK.mkdir(parents=True, exist_ok=True)
    agent = LsmSentinel.start(Policy.of([]).resolve(), pin_dir=PIN_DIR)
    yield agent
    agent.close()


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> Path:
    """A fresh directory with files and a subdirectory, named after the test."""
    root = WORK / request.node.name
    (root / "sub").mkdir(parents=True)
    (root / "a.conf").write_text("alpha\n")
    (root / "b.conf").write_text("beta\n")
    (root / "sub" / "c.conf").write_text("gamma\n")
    return root


def protect(agent: LsmSentinel, *rules: tuple[Path, Mode]) -> None:
    agent.install(Policy.of([Rule(p, m, "test") for p, m in rules]).resolve())
    agent.poll(0.0)  # start each test with no stale events


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )


def contents(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (p.read_text() if p.is_file() else "<dir>")
        for p in sorted(root.rglob("*"))
    }


def fim_entries(op: str, verdict: str) -> list[dict[str, object]]:
    """The audit log's file-integrity entries with this operation and verdict."""
    return [
        e["detail"]
        for e in AuditLog(AUDIT).entries()
        if e["action"] == "fim" and e["detail"]["op"] == op and e["detail"]["verdict"] == verdict
    ]


def events_of(agent: LsmSentinel) -> list[FimEvent]:
    return agent.poll(0.5)


def test_root_rm_rf_of_protected_directory_fails_and_leaves_every_file(
    sentinel: LsmSentinel, tree: Path
) -> None:
    before = contents(tree)
    protect(sentinel, (tree, Mode.ENFORCE))
    result = sh(f"id -u; rm -rf {tree}")
    assert result.stdout.strip() == "0"  # really root
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr
    assert contents(tree) == before
    events = events_of(sentinel)
    denied = {e.path for e in events if e.op is Operation.UNLINK and e.verdict is Verdict.DENY}
    assert str(tree / "a.conf") in denied
    assert str(tree / "sub" / "c.conf") in denied
    assert all(e.comm == "rm" and e.uid == 0 for e in events if e.op is Operation.UNLINK)
    logged = {d["path"] for d in fim_entries("unlink", "deny")}
    assert str(tree / "a.conf") in logged


def test_writing_a_protected_file_fails(sentinel: LsmSentinel, tree: Path) -> None:
    target = tree / "a.conf"
    protect(sentinel, (tree, Mode.ENFORCE))
    assert sh(f"echo x > {target}").returncode != 0
    assert sh(f"echo x >> {target}").returncode != 0
    assert sh(f"chmod 777 {target}").returncode != 0
    assert sh(f"echo new > {tree}/new.conf").returncode != 0
    assert target.read_text() == "alpha\n"
    assert oct(target.stat().st_mode & 0o777) != oct(0o777)
    assert not (tree / "new.conf").exists()
    ops = {(e.op, e.verdict, e.path) for e in events_of(sentinel)}
    assert (Operation.OPEN_WRITE, Verdict.DENY, str(target)) in ops
    assert (Operation.SETATTR, Verdict.DENY, str(target)) in ops
    assert (Operation.CREATE, Verdict.DENY, str(tree / "new.conf")) in ops
    assert str(target) in {d["path"] for d in fim_entries("open_write", "deny")}


def test_truncating_a_protected_file_fails(sentinel: LsmSentinel, tree: Path) -> None:
    target = tree / "b.conf"
    protect(sentinel, (target, Mode.ENFORCE))
    script = f"import os; os.truncate({str(target)!r}, 0)"
    result = subprocess.run(["python3", "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "PermissionError" in result.stderr
    assert target.read_text() == "beta\n"
    assert any(e.op is Operation.TRUNCATE for e in events_of(sentinel))
    assert str(target) in {d["path"] for d in fim_entries("truncate", "deny")}


def test_moving_a_protected_file_away_or_in_fails(sentinel: LsmSentinel, tree: Path) -> None:
    target = tree / "a.conf"
    outside = WORK / "outside.conf"
    outside.write_text("outside\n")
    protect(sentinel, (tree, Mode.ENFORCE))
    assert sh(f"mv {target} {WORK}/elsewhere.conf").returncode != 0
    assert sh(f"mv {outside} {tree}/").returncode != 0
    assert sh(f"ln {target} {WORK}/hardlink.conf").returncode != 0
    assert sh(f"mv {tree}/sub {WORK}/sub-moved").returncode != 0
    assert target.read_text() == "alpha\n"
    assert not (WORK / "elsewhere.conf").exists()
    assert not (WORK / "hardlink.conf").exists()
    assert not (tree / "outside.conf").exists()
    assert (tree / "sub" / "c.conf").exists()
    ops = {(e.op, e.path) for e in events_of(sentinel) if e.verdict is Verdict.DENY}
    assert (Operation.RENAME, str(target)) in ops
    assert (Operation.LINK, str(target)) in ops
    assert str(target) in {d["path"] for d in fim_entries("rename", "deny")}


def test_the_agent_and_its_threads_can_still_write(sentinel: LsmSentinel, tree: Path) -> None:
    protect(sentinel, (tree, Mode.ENFORCE))
    (tree / "a.conf").write_text("agent\n")
    (tree / "created.conf").write_text("agent made this\n")
    (tree / "b.conf").rename(tree / "b-renamed.conf")
    written: list[str] = []

    def from_thread() -> None:
        (tree / "sub" / "c.conf").write_text("thread\n")
        written.append("ok")

    worker = threading.Thread(target=from_thread)
    worker.start()
    worker.join(timeout=30)
    assert written == ["ok"]
    assert (tree / "a.conf").read_text() == "agent\n"
    assert (tree / "sub" / "c.conf").read_text() == "thread\n"
    # A child of the agent is another process: the mark is not inherited across fork/exec.
    child = subprocess.run(
        ["python3", "-c", f"open({str(tree / 'a.conf')!r}, 'w').write('child')"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode != 0
    assert (tree / "a.conf").read_text() == "agent\n"
    assert not any(
        e.comm.startswith("python") and e.tgid == os.getpid() for e in events_of(sentinel)
    )


def test_another_process_cannot_claim_the_agent_identity(sentinel: LsmSentinel) -> None:
    script = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"print(libc.prctl({HANDSHAKE}, 0, 0, 0, 0), ctypes.get_errno())"
    )
    result = subprocess.run(["python3", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["-1", "1"]  # EPERM
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(HANDSHAKE, 0, 0, 0, 0) == -1  # accepted once only, even for the agent
    denied = [e for e in events_of(sentinel) if e.op is Operation.HANDSHAKE]
    assert [e.verdict for e in denied] == [Verdict.DENY, Verdict.DENY]
    assert libc.prctl(15, b"still-works", 0, 0, 0) == 0  # PR_SET_NAME: prctl is unharmed
    assert Path("/proc/self/comm").read_text().strip() == "still-works"


def test_bpftool_cannot_write_the_agents_pinned_maps(sentinel: LsmSentinel) -> None:
    pinned = PIN_DIR / "protected_inodes"
    key = " ".join(["01"] * 16)
    value = "01 00 00 00 09 00 00 00"
    result = sh(f"bpftool map update pinned {pinned} key hex {key} value hex {value}")
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr
    assert sentinel.protected_inodes.lookup(bytes([1] * 16)) is None
    # A map of another part of netweave (the shield pins its maps the same way).
    shield = Path("/sys/fs/bpf/netweave/shield_test")
    made = sh(f"bpftool map create {shield} type hash key 4 value 4 entries 8 name shield_test")
    assert made.returncode == 0, made.stderr
    assert str(shield) in sentinel.protect_pinned_maps()
    with Map.from_pin(shield) as shield_map:
        blocked = sh(f"bpftool map update pinned {shield} key 1 0 0 0 value 2 0 0 0")
        assert blocked.returncode != 0
        assert "Operation not permitted" in blocked.stderr
        assert shield_map.lookup(b"\x01\0\0\0") is None
    by_id = sh(
        f"bpftool map update id {sentinel.protected_inodes.id} key hex {key} value hex {value}"
    )
    assert by_id.returncode != 0
    assert "Operation not permitted" in by_id.stderr
    events = events_of(sentinel)
    pin_writes = {e.path for e in events if e.op is Operation.PIN_WRITE}
    assert str(pinned) in pin_writes  # through the pin: refused on the protected bpffs inode
    denied = [e for e in events if e.op is Operation.MAP_WRITE]
    assert {e.name for e in denied} >= {"protected_inode", "shield_test"}  # 15-char names
    assert {d["name"] for d in fim_entries("map_write", "deny")} >= {"shield_test"}


def test_other_processes_cannot_unlink_the_pins(sentinel: LsmSentinel) -> None:
    pins = sorted(p.name for p in PIN_DIR.iterdir())
    assert "link_nw_file_open" in pins
    result = sh(f"rm -rf {PIN_DIR}; rm -f {PIN_DIR}/link_nw_inode_unlink")
    assert result.returncode != 0
    assert sorted(p.name for p in PIN_DIR.iterdir()) == pins
    # rm needs write access to the pin directory: refused there, before any unlink is tried.
    denied = {e.op for e in events_of(sentinel) if e.verdict is Verdict.DENY}
    assert Operation.PIN_WRITE in denied


def test_other_processes_cannot_detach_the_sentinels_links(
    sentinel: LsmSentinel, tree: Path
) -> None:
    protect(sentinel, (tree, Mode.ENFORCE))
    link_id = sentinel.link_ids()[0]
    by_id = sh(f"bpftool link detach id {link_id}")
    assert by_id.returncode != 0
    by_pin = sh(f"bpftool link detach pinned {PIN_DIR}/link_nw_inode_unlink")
    assert by_pin.returncode != 0
    assert "Operation not permitted" in by_id.stderr + by_pin.stderr
    assert sh(f"rm -rf {tree}").returncode != 0  # every hook still attached
    assert (tree / "a.conf").read_text() == "alpha\n"
    ops = {e.op for e in events_of(sentinel) if e.verdict is Verdict.DENY}
    assert {Operation.LINK_OPEN, Operation.PIN_WRITE, Operation.UNLINK} <= ops


def test_other_processes_cannot_ptrace_or_write_the_agents_memory(sentinel: LsmSentinel) -> None:
    me = os.getpid()
    script = (
        "import sys\n"
        "for pid in sys.argv[1:]:\n"
        "    try:\n"
        "        open(f'/proc/{pid}/mem', 'rb').close(); print(pid, 'open')\n"
        "    except PermissionError:\n"
        "        print(pid, 'denied')\n"
    )
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        out = subprocess.run(
            ["python3", "-c", script, str(me), str(bystander.pid)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
    finally:
        bystander.kill()
        bystander.wait()
    assert out == [str(me), "denied", str(bystander.pid), "open"]
    assert Path(f"/proc/{me}/exe").exists()  # reading (ps, /proc) is not attaching
    traced = [e for e in events_of(sentinel) if e.op is Operation.PTRACE]
    assert traced and all(e.ino == me for e in traced)


def test_a_monitor_only_rule_logs_and_allows(sentinel: LsmSentinel, tree: Path) -> None:
    target = tree / "a.conf"
    protect(sentinel, (tree, Mode.MONITOR))
    assert sh(f"echo changed > {target}").returncode == 0
    assert target.read_text() == "changed\n"
    assert sh(f"rm {tree}/b.conf").returncode == 0
    events = events_of(sentinel)
    seen = {(e.op, e.verdict, e.mode, e.path) for e in events}
    assert (Operation.OPEN_WRITE, Verdict.ALLOW, Mode.MONITOR, str(target)) in seen
    assert (Operation.UNLINK, Verdict.ALLOW, Mode.MONITOR, str(tree / "b.conf")) in seen
    logged = fim_entries("unlink", "allow")
    assert str(tree / "b.conf") in {d["path"] for d in logged}
    assert all(d["mode"] == "monitor" for d in logged)


def test_the_audit_log_holds_every_case_and_its_chain_is_intact(sentinel: LsmSentinel) -> None:
    log = AuditLog(AUDIT)
    assert log.verify().ok
    actions = {e["action"] for e in log.entries()}
    assert {"load", "attach", "pin", "sentinel_handshake", "fim"} <= actions
    ops = {
        (e["detail"]["op"], e["detail"]["verdict"]) for e in log.entries() if e["action"] == "fim"
    }
    for case in [("unlink", "deny"), ("open_write", "deny"), ("rename", "deny"),
                 ("map_write", "deny"), ("open_write", "allow"), ("truncate", "deny")]:  # fmt: skip
        assert case in ops


def test_an_agent_thread_that_execs_another_program_is_no_longer_the_agent(tree: Path) -> None:
    # A second agent (its own instance, pinned so exec's closing of its fds keeps it attached)
    # writes as the agent, then execs a shell in the same task: the shell is refused.
    script = f"""
import os
from pathlib import Path
from netweave.audit import AuditLog, set_default_log
from netweave.sentinel.events import Mode
from netweave.sentinel.lsm import LsmSentinel
from netweave.sentinel.policy import Policy, Rule
set_default_log(AuditLog("/tmp/exec-audit/audit.jsonl"))
tree = Path({str(tree)!r})
policy = Policy.of([Rule(tree, Mode.ENFORCE, "t")]).resolve()
LsmSentinel.start(policy, pin_dir=Path("/sys/fs/bpf/netweave/exec-test"))
(tree / "a.conf").write_text("written by the agent\\n")
os.execv("/bin/sh", ["sh", "-c", "echo after-exec > {tree}/a.conf"])
"""
    result = subprocess.run(
        ["python3", "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode != 0, result.stderr
    assert "Operation not permitted" in result.stderr
    assert (tree / "a.conf").read_text() == "written by the agent\n"


# Last on purpose: the agent started here dies, and its pinned programs keep enforcing.
def test_the_cli_agent_enforces_and_its_pinned_links_outlive_it(
    sentinel: LsmSentinel, tree: Path
) -> None:
    site = os.environ.get("NETWEAVE_GUEST_SITE", "")
    if not site:
        pytest.skip("no virtualenv inside the share: typer cannot be imported in the guest")
    policy = WORK / "cli-policy.toml"
    policy.write_text(f'defaults = false\n[[protect]]\npath = "{tree}"\nmode = "enforce"\n')
    log = Path("/tmp/cli-audit/audit.jsonl")
    env = {**os.environ, "PYTHONPATH": f"/share/src:{site}", "NETWEAVE_AUDIT_LOG": str(log)}
    pins = Path("/sys/fs/bpf/netweave/cli-sentinel")
    command = [
        *SENTINEL_CLI,
        "--policy", str(policy), "--pin-dir", str(pins), "--duration", "300",
    ]  # fmt: skip
    agent = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert agent.stderr is not None
        seen: list[str] = []
        for _ in range(200):  # libbpf's own lines may come first
            line = agent.stderr.readline()
            seen.append(line)
            if not line or "netweave sentinel:" in line:
                break
        assert "enforcing" in seen[-1], "".join(seen)
        assert sh(f"rm -rf {tree}").returncode != 0
        assert sh(f"echo x > {tree}/a.conf").returncode != 0
        assert agent.stdout is not None
        reported: set[tuple[str, str, str]] = set()
        for _ in range(100):  # the agent prints one JSON line per decision, within a second
            line = agent.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            reported.add((event["op"], event["verdict"], event["path"]))
            if ("open_write", "deny", str(tree / "a.conf")) in reported:
                break
    finally:
        agent.kill()
        agent.communicate(timeout=60)
    assert ("unlink", "deny", str(tree / "a.conf")) in reported
    assert ("open_write", "deny", str(tree / "a.conf")) in reported
    # The agent is gone (SIGKILL); its pinned links still deny.
    assert sh(f"rm -rf {tree}; echo y > {tree}/b.conf").returncode != 0
    assert contents(tree)["b.conf"] == "beta\n"
    assert sorted(p.name for p in pins.iterdir() if p.name.startswith("link_"))
    assert any(e["action"] == "fim" for e in AuditLog(log).entries())
    status = subprocess.run(
        [*SENTINEL_CLI, "status"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert status.stdout.startswith("enforcing:"), status.stdout + status.stderr
