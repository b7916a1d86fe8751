"""Capture replay speed: netweave's capture-file backend against p0f -r and tshark, same file.

Generates a 1,000,000-packet Ethernet/IPv4/TCP capture (10,000 full TLS-like conversations)
in /tmp unless NETWEAVE_BENCH_PCAP names one, then reports packets per second of:
  * netweave read_capture (all events: handshakes, first payloads, flows, counters),
    cold (first call in the process, including loading compiled kernels) and warm;
  * p0f -r FILE (p0f 3.09b: SYN/SYN-ACK fingerprints, flow tracking);
  * tshark -r FILE -T fields -e tcp.flags.
Run: .venv/bin/python bench/bench_capture.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synth_capture import write_capture

PACKETS = 1_000_000


def capture_file() -> Path:
    named = os.environ.get("NETWEAVE_BENCH_PCAP")
    if named:
        return Path(named)
    path = Path("/tmp/netweave-bench-1m.pcap")
    if not path.exists():
        write_capture(path, flows=PACKETS // 100, packets_per_flow=100)
    return path


def timed(command: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    path = capture_file()
    start = time.perf_counter()
    from netweave.capture.pcapfile import read_capture

    cold = read_capture(path)
    cold_s = time.perf_counter() - start
    packets = cold.packets
    warm_s = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        read_capture(path)
        warm_s = min(warm_s, time.perf_counter() - start)
    print(f"capture: {path} ({packets} packets, {path.stat().st_size / 1e6:.0f} MB)")
    print(f"netweave read_capture warm: {warm_s:.3f} s = {packets / warm_s:,.0f} packets/s")
    print(f"netweave read_capture cold (incl. imports, kernel load): {cold_s:.3f} s = "
          f"{packets / cold_s:,.0f} packets/s")  # fmt: skip
    print(f"  events: {len(cold.handshakes)} handshakes, {len(cold.payloads)} first payloads, "
          f"{len(cold.counters)} flows")  # fmt: skip
    if shutil.which("p0f") and Path("/etc/p0f/p0f.fp").exists():
        log = Path("/tmp/netweave-bench-p0f.log")
        log.unlink(missing_ok=True)
        p0f_s = timed(["sh", "-c", f"rm -f {log}; p0f -r {path} -f /etc/p0f/p0f.fp -o {log}"], 3)
        print(f"p0f -r: {p0f_s:.3f} s = {packets / p0f_s:,.0f} packets/s")
        print(f"ratio netweave warm / p0f: {p0f_s / warm_s:.2f}x p0f's rate "
              f"(cold: {p0f_s / cold_s:.2f}x)")  # fmt: skip
    if shutil.which("tshark"):
        tshark_s = timed(["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.flags"], 1)
        print(f"tshark -r -T fields -e tcp.flags: {tshark_s:.3f} s = "
              f"{packets / tshark_s:,.0f} packets/s")  # fmt: skip
        print(f"ratio netweave warm / tshark: {tshark_s / warm_s:.1f}x tshark's rate")


if __name__ == "__main__":
    main()
