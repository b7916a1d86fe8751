"""Fingerprint speed: records per second on one core, and replay with fingerprints on vs off.

Uses the same 1,000,000-packet capture as bench_capture.py (generated in /tmp if absent).
  * fingerprint records/s: Fingerprinter (p0f with /etc/p0f/p0f.fp, JA4T/JA4TS, JA4, JA4S)
    over the capture's events, timed alone;
  * replay throughput: read_capture alone vs read_capture + fingerprints (goal: at most
    20% slower with fingerprints on).
Run: .venv/bin/python bench/bench_fingerprint.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_capture import capture_file
from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB, load_p0f_database
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions


def main() -> None:
    path = capture_file()
    db = load_p0f_database(DEFAULT_P0F_DB) if DEFAULT_P0F_DB.exists() else None
    options = FingerprintOptions(p0f_db=db)
    read_capture(path)  # load compiled kernels once
    best_off = best_on = best_fp = float("inf")
    records = 0
    packets = 0
    for _ in range(3):
        start = time.perf_counter()
        capture = read_capture(path, counters=False)
        best_off = min(best_off, time.perf_counter() - start)
        packets = capture.packets
        events = capture.events()
        start = time.perf_counter()
        records = sum(1 for _r in Fingerprinter(options).run(events))
        best_fp = min(best_fp, time.perf_counter() - start)
        start = time.perf_counter()
        capture = read_capture(path, counters=False)
        for _r in Fingerprinter(options).run(capture.events()):
            pass
        best_on = min(best_on, time.perf_counter() - start)
    print(f"capture: {path} ({packets} packets, {len(events)} events)")
    print(f"fingerprint records: {records} in {best_fp:.3f} s = {records / best_fp:,.0f} records/s "
          f"(p0f {'on' if db else 'off: no /etc/p0f/p0f.fp'}, JA4T/JA4TS/JA4/JA4S on)")  # fmt: skip
    print(f"replay without fingerprints: {best_off:.3f} s = {packets / best_off:,.0f} packets/s")
    print(f"replay with fingerprints:    {best_on:.3f} s = {packets / best_on:,.0f} packets/s")
    print(f"slowdown with fingerprints on: {(best_on / best_off - 1) * 100:.1f}% (goal <= 20%)")


if __name__ == "__main__":
    main()
