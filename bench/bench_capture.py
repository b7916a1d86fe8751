"""Capture replay speed: netweave's capture-file backend against p0f -r and tshark, same file.

Generates a 1,000,000-packet Ethernet/IPv4/TCP capture (10,000 full TLS-like conversations)
in /tmp unless NETWEAVE_BENCH_PCAP names one, then reports packets per second of:
  * netweave read_capture (all events: handshakes, first payloads, flows, counters, as the
    columns replay and fingerprints take), cold (first call in the process, including
    loading compiled kernels) and warm; and warm with every event record built too
    (``events()`` and ``counters``, what a caller wanting objects pays);
  * p0f -r FILE (p0f 3.09b: SYN/SYN-ACK fingerprints, flow tracking);
  * tshark -r FILE -T fields -e tcp.flags.
Run: .venv/bin/python bench/bench_capture.py
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synth_capture import write_capture

PACKETS = 1_000_000
RUNS = 3


def capture_file() -> Path:
    named = os.environ.get("NETWEAVE_BENCH_PCAP")
    if named:
        return Path(named)
    path = Path("/tmp/netweave-bench-1m.pcap")
    if not path.exists():
        write_capture(path, flows=PACKETS // 100, packets_per_flow=100)
    return path


def timed(command: list[str], runs: int = RUNS) -> tuple[float, float]:
    """Best wall and best CPU (user + system) seconds of ``command`` over ``runs`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best_wall = min(best_wall, time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_cpu = min(best_cpu, cpu)
    return best_wall, best_cpu


def timed_call(function: Callable[[], object], runs: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``function()`` in this process."""
    best_wall = best_cpu = float("inf")
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        function()
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    path = capture_file()
    start, cpu = time.perf_counter(), time.process_time()
    from netweave.capture.pcapfile import read_capture

    cold = read_capture(path)
    cold_wall, cold_cpu = time.perf_counter() - start, time.process_time() - cpu
    packets = cold.packets
    warm_wall, warm_cpu = timed_call(lambda: read_capture(path), 3)

    def with_records() -> None:
        capture = read_capture(path)
        capture.events()
        capture.counters  # noqa: B018 - built on first use: that is what is timed

    records_wall, records_cpu = timed_call(with_records, 3)
    print(
        f"capture: {path} ({packets} packets, {path.stat().st_size / 1e6:.0f} MB); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"  events: {len(cold.handshakes)} handshakes, {len(cold.payloads)} first payloads, "
        f"{len(cold.counters)} flows"
    )

    def line(name: str, wall: float, cpu: float) -> None:
        print(
            f"{name:<44} wall {wall:7.3f} s = {packets / wall:>10,.0f} packets/s   "
            f"CPU {cpu:7.3f} s = {packets / cpu:>10,.0f} packets/CPU-s"
        )

    line("netweave read_capture (warm)", warm_wall, warm_cpu)
    line("netweave read_capture + event records (warm)", records_wall, records_cpu)
    line("netweave read_capture (cold: imports, kernels)", cold_wall, cold_cpu)
    if shutil.which("p0f") and Path("/etc/p0f/p0f.fp").exists():
        log = Path("/tmp/netweave-bench-p0f.log")
        p0f_wall, p0f_cpu = timed(
            ["sh", "-c", f"rm -f {log}; exec p0f -r {path} -f /etc/p0f/p0f.fp -o {log}"], 3
        )
        line("p0f -r", p0f_wall, p0f_cpu)
        print(
            f"netweave warm vs p0f -r: {p0f_wall / warm_wall:.2f}x p0f's rate (wall), "
            f"{p0f_cpu / warm_cpu:.2f}x (CPU); with event records {p0f_cpu / records_cpu:.2f}x"
            " (CPU)"
        )
    if shutil.which("tshark"):
        tshark_wall, tshark_cpu = timed(
            ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.flags"], 1
        )
        line("tshark -r -T fields -e tcp.flags", tshark_wall, tshark_cpu)
        print(f"netweave warm vs tshark: {tshark_wall / warm_wall:.1f}x tshark's rate (wall)")


if __name__ == "__main__":
    main()
