"""Socket-table snapshot vs ``ss -tanp`` on 10,000 and 50,000 established loopback connections.

Holder processes (each below this machine's RLIMIT_NOFILE hard limit) open the
connections inside a fresh network namespace, so the table holds only the benchmark's
sockets; then, on the same sockets in the same run, ``netweave``'s snapshot (sock_diag +
/proc/*/fd + classification, in a fresh Python process) and ``ss -tanp`` are each timed
(median of 3) with their peak RSS from ``wait4``. The figure is the time ratio
snapshot / ss (goal: <= 1). Also: state-change events folded into the outbound list per
second on one core (goal >= 50,000/s).

Run: ``.venv/bin/python bench/bench_sockets.py [--sizes 10000,50000]`` as root.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netweave.sockets.hostmap import HostMap
from netweave.sockets.records import StateChange, TcpState

PER_HOLDER = 9000  # 2 fds per connection: stays under a 20,000 hard limit
TIMEOUT = 120.0

SNAPSHOT_CHILD = """
import time
from netweave.sockets.snapshot import take_snapshot
t = time.perf_counter()
snap = take_snapshot("self")
first = time.perf_counter() - t
owned = sum(1 for s in snap.sockets if s.process is not None)
t = time.perf_counter()
snap = take_snapshot("self")
second = time.perf_counter() - t
print(first, second, len(snap.sockets), owned)
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(f"VmHWM={hwm}")
"""


def hold(count: int) -> None:
    """Child mode: open ``count`` loopback connections to an own listener, then wait."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    address = listener.getsockname()
    kept: list[socket.socket] = []
    deadline = time.monotonic() + TIMEOUT
    for _ in range(count):
        if time.monotonic() > deadline:
            sys.exit("holder: timed out opening connections")
        client = socket.create_connection(address)
        server, _ = listener.accept()
        kept += [client, server]
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin


def _timed(argv: list[str]) -> tuple[float, int, bytes]:
    """Run argv; return (seconds, peak RSS in KiB, stdout).

    The peak is the child's VmHWM sampled from /proc every 2 ms until it exits (rusage's
    ru_maxrss is not trustworthy on this VM). A child that prints ``VmHWM=<KiB>`` as its
    last line reports its own exact peak instead.
    """
    start = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out)
        status = Path(f"/proc/{proc.pid}/status")
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                match = re.search(r"VmHWM:\s+(\d+)", status.read_text())
                if match:
                    peak = max(peak, int(match.group(1)))
            except OSError:
                pass
            time.sleep(0.002)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        elapsed = time.perf_counter() - start
        out.seek(0)
        data = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    own = re.search(rb"VmHWM=(\d+)\s*$", data)
    if own:
        peak = int(own.group(1))
        data = data[: own.start()]
    return elapsed, peak, data


def measure(ns: str, connections: int) -> None:
    """Open ``connections`` in namespace ``ns``, time both tools, print one line each."""
    # Full paths: busybox would otherwise run its own "ip" applet.
    exec_ns = [shutil.which("ip") or "ip", "netns", "exec", ns]
    holders: list[subprocess.Popen[bytes]] = []
    try:
        left = connections
        while left > 0:
            count = min(left, PER_HOLDER)
            holders.append(
                subprocess.Popen(
                    [*exec_ns, sys.executable, __file__, "--hold", str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
            left -= count
        for holder in holders:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != b"ready":
                raise RuntimeError("a holder failed to open its connections")
        ours: list[tuple[float, float, float, int, int, int]] = []
        ss: list[tuple[float, int, int, int]] = []
        snapshot_cmd = [*exec_ns, sys.executable, "-c", SNAPSHOT_CHILD]
        ss_cmd = [*exec_ns, shutil.which("ss") or "ss", "-tanp"]
        for round_ in range(3):
            # Alternate who goes first: the first reader of /proc/*/fd warms the dentry cache.
            for which in ("ours", "ss") if round_ % 2 == 0 else ("ss", "ours"):
                if which == "ours":
                    wall, rss, out = _timed(snapshot_cmd)
                    first, second, sockets, owned = out.split()
                    # Process start to first table: the whole run minus the second call.
                    cold_first = wall - float(second)
                    ours.append(
                        (cold_first, float(first), float(second), rss, int(sockets), int(owned))
                    )
                else:
                    wall, rss, out = _timed(ss_cmd)
                    ss.append((wall, rss, out.count(b"\n") - 1, out.count(b"pid=")))
        cold = statistics.median(r[0] for r in ours)
        first = statistics.median(r[1] for r in ours)
        warm = statistics.median(r[2] for r in ours)
        ref = statistics.median(r[0] for r in ss)
        print(
            f"{connections:>6} conns: netweave take_snapshot {first:6.3f}s first call,"
            f" {warm:6.3f}s next call; fresh process to first table {cold:6.3f}s;"
            f" peak RSS {max(r[3] for r in ours) / 1024:.0f} MiB;"
            f" {ours[0][4]} sockets, {ours[0][5]} with a process"
        )
        print(
            f"{connections:>6} conns: ss -tanp {ref:6.3f}s; peak RSS"
            f" {max(r[1] for r in ss) / 1024:.0f} MiB; {ss[0][2]} lines, {ss[0][3]} pid= entries"
        )
        print(
            f"{connections:>6} conns: ratio take_snapshot/ss = {first / ref:.2f} (first call),"
            f" {warm / ref:.2f} (next call); fresh process/ss = {cold / ref:.2f}"
            "  (goal <= 1.00)"
        )
    finally:
        for holder in holders:
            if holder.stdin:
                holder.stdin.close()
        for holder in holders:
            try:
                holder.wait(30)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()


def events_per_second(count: int = 300_000) -> float:
    """Fold ``count`` state changes (opens, establishes, closes) into a HostMap; events/s."""
    base = time.monotonic_ns()
    close, syn, est = int(TcpState.CLOSE), int(TcpState.SYN_SENT), int(TcpState.ESTABLISHED)
    events: list[StateChange] = []
    for i in range(count // 3):
        dst = f"10.{(i >> 8) & 3}.{i & 255}.1"
        t = base + i * 1000
        events.append(StateChange(i, close, syn, 4, "10.9.0.1", dst, 0, 443, 4242, "curl", t))
        events.append(StateChange(i, syn, est, 4, "10.9.0.1", dst, 40000, 443, 0, "", t + 10))
        events.append(StateChange(i, est, close, 4, "10.9.0.1", dst, 40000, 443, 0, "", t + 20))
    host = HostMap()
    start = time.perf_counter()
    host.fold_events(events)
    elapsed = time.perf_counter() - start
    assert len(host.report().outbound) == 1024
    return len(events) / elapsed


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="10000,50000")
    args = parser.parse_args()
    if args.hold:
        hold(args.hold)
        return
    if os.geteuid() != 0:
        sys.exit("bench_sockets: needs root (it makes a network namespace)")
    for size in (int(s) for s in args.sizes.split(",")):
        # A fresh namespace per size: the previous size's TIME_WAIT sockets stay behind.
        ns = f"nwt-{secrets.token_hex(3)}-bench"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            measure(ns, size)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
            if Path(f"/run/netns/{ns}").exists():
                print(f"warning: could not remove namespace {ns}", file=sys.stderr)
    rate = events_per_second()
    print(f"events folded into the outbound list: {rate:,.0f}/s on one core (goal >= 50,000/s)")


if __name__ == "__main__":
    main()
