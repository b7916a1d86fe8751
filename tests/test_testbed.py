"""The test bed itself: namespaces talk over veth, and teardown leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from netweave import netns

from testbed import TestBed, leftovers


def test_ping_across_veth_ipv4_and_ipv6(testbed: TestBed) -> None:
    a = testbed.add_ns("a")
    b = testbed.add_ns("b")
    link = testbed.link(a, b)
    out4 = testbed.run(a, ["ping", "-c", "1", "-W", "2", link.ipv4_b]).stdout
    out6 = testbed.run(a, ["ping", "-6", "-c", "1", "-W", "2", link.ipv6_b]).stdout
    assert "1 received" in out4
    assert "1 received" in out6
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
        bed.start(a, "sleeper", ["sh", "-c", "sleep 300 & sleep 300"])
        (bed.tmp / "scratch").write_text("x")
        (Path("/sys/fs/bpf") / f"{bed.prefix}-pins").mkdir()
        subprocess.run(
            ["bpftool", "map", "create", f"/sys/fs/bpf/{bed.prefix}-map", "type", "array",
             "key", "4", "value", "4", "entries", "1", "name", "nwt_probe"],
            check=True,
        )  # fmt: skip
        assert len(leftovers(bed.prefix)) >= 5
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
