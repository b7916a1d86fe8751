"""The test bed itself: namespaces talk over veth, and teardown leaves nothing behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netweave import netns

from testbed import TestBed, leftovers


def test_ping_across_veth_ipv4_and_ipv6(testbed: TestBed) -> None:
    a = testbed.add_ns("a")
    b = testbed.add_ns("b")
    link = testbed.link(a, b)
    out4 = testbed.run(a, ["ping", "-c", "2", "-i", "0.2", "-W", "2", link.ipv4_b]).stdout
    out6 = testbed.run(a, ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", link.ipv6_b]).stdout
    # ping exits 0 only when a reply came back; count them too.
    assert int(re.search(r"(\d+) received", out4).group(1)) >= 1  # type: ignore[union-attr]
    assert int(re.search(r"(\d+) received", out6).group(1)) >= 1  # type: ignore[union-attr]
    # The host namespace cannot reach the bed's addresses: they exist only inside it.
    assert testbed.ns_inode(a) != Path("/proc/self/ns/net").stat().st_ino


def test_setns_worker_runs_inside_and_caller_stays_home(testbed: TestBed) -> None:
    a = testbed.add_ns("a")
    b = testbed.add_ns("b")
    link = testbed.link(a, b)
    home = Path("/proc/thread-self/ns/net").stat().st_ino
    with netns.enter(testbed.ns_path(b)) as nb:
        listener = nb.call(socket.create_server, (link.ipv4_b, 0))
        seen = nb.call(lambda: Path("/proc/thread-self/ns/net").stat().st_ino)
        port = listener.getsockname()[1]
        with netns.enter(testbed.ns_path(a)) as na:
            client = na.call(socket.create_connection, (link.ipv4_b, port), 2.0)
        conn, peer = listener.accept()
        assert peer[0] == link.ipv4_a
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for sock in (client, conn, listener):
            sock.close()
    assert seen == testbed.ns_inode(b)
    assert Path("/proc/thread-self/ns/net").stat().st_ino == home


def test_setns_error_names_the_namespace() -> None:
    with pytest.raises(netns.NetnsError, match="nwt-does-not-exist"):
        netns.run_in("nwt-does-not-exist", os.getpid)


def test_teardown_leaves_nothing_after_an_exception() -> None:
    bed = TestBed()
    _mount_bpffs()
    with pytest.raises(RuntimeError, match="boom"), bed:
        a = bed.add_ns("a")
        b = bed.add_ns("b")
        bed.link(a, b)
        # A daemon that forks away from the process the bed started, plus a pin.
        bed.start(a, "sleeper", ["sh", "-c", "sleep 300 & sleep 300"], cgroup=bed.cgroup("c"))
        (bed.tmp / "scratch").write_text("x")
        (Path("/sys/fs/bpf") / f"{bed.prefix}-pins").mkdir()
        subprocess.run(
            ["bpftool", "map", "create", f"/sys/fs/bpf/{bed.prefix}-map", "type", "array",
             "key", "4", "value", "4", "entries", "1", "name", "nwt_probe"],
            check=True,
        )  # fmt: skip
        assert len(leftovers(bed.prefix)) >= 6
        raise RuntimeError("boom")
    assert leftovers(bed.prefix) == []
    sleepers = subprocess.run(
        ["pgrep", "-f", "sleep 300"], capture_output=True, text=True, check=False
    ).stdout.split()
    mine = [p for p in sleepers if _in_ns_named(int(p), bed.prefix)]
    assert mine == []


def test_teardown_kills_started_servers(testbed: TestBed) -> None:
    a = testbed.add_ns("a")
    server = testbed.start(a, "sleeper", ["sleep", "300"])
    assert server.process.poll() is None
    testbed.close()
    assert server.process.poll() is not None
    assert leftovers(testbed.prefix) == []


def _in_ns_named(pid: int, prefix: str) -> bool:
    try:
        ino = Path(f"/proc/{pid}/ns/net").stat().st_ino
    except OSError:
        return False
    return any(Path(p).stat().st_ino == ino for p in Path("/run/netns").glob(f"{prefix}-*"))


def _mount_bpffs() -> None:
    """Mount bpffs where netweave's loader would (it is not mounted at boot here)."""
    if not Path("/sys/fs/bpf").is_mount():
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)


def test_atexit_cleans_up_a_bed_nobody_closed(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from testbed import TestBed\n"
        "bed = TestBed()\n"
        "a = bed.add_ns('a')\n"
        "bed.link(a, bed.add_ns('b'))\n"
        "server = bed.start(a, 'sleeper', ['sleep', '300'])\n"
        "print(bed.prefix, server.pid, flush=True)\n"
        "raise SystemExit('crashed without closing the bed')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    prefix, pid = proc.stdout.split()
    assert prefix.startswith("nwt-")
    assert leftovers(prefix) == []
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(int(pid))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
