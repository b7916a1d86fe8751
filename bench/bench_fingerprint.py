"""Fingerprint speed: records per second on one core, and replay with fingerprints on vs off.

Uses the same 1,000,000-packet capture as bench_capture.py (generated in /tmp if absent).
  * fingerprint records/s: Fingerprinter (p0f with /etc/p0f/p0f.fp, JA4T/JA4TS, JA4, JA4S)
    over the capture's events, timed alone;
  * replay throughput: read_capture alone vs read_capture + fingerprints (goal: at most
    20% slower with fingerprints on).
Run: .venv/bin/python bench/bench_fingerprint.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_capture import capture_file, timed_call
from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB, load_p0f_database
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions


def main() -> None:
    path = capture_file()
    db = load_p0f_database(DEFAULT_P0F_DB) if DEFAULT_P0F_DB.exists() else None
    options = FingerprintOptions(p0f_db=db)
    capture = read_capture(path, counters=False)  # also loads the compiled kernels
    events = capture.events()
    packets = capture.packets
    records = sum(1 for _r in Fingerprinter(options).run(events))

    def fingerprints_only() -> None:
        for _r in Fingerprinter(options).run(events):
            pass

    def replay_off() -> None:
        read_capture(path, counters=False)

    def replay_on() -> None:
        for _r in Fingerprinter(options).run(read_capture(path, counters=False).events()):
            pass

    fp_wall, fp_cpu = timed_call(fingerprints_only, 3)
    off_wall, off_cpu = timed_call(replay_off, 3)
    on_wall, on_cpu = timed_call(replay_on, 3)
    print(
        f"capture: {path} ({packets} packets, {len(events)} events); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"fingerprint records: {records} in {fp_cpu:.3f} CPU-s = {records / fp_cpu:,.0f} "
        f"records per CPU-second on one core (wall {records / fp_wall:,.0f}/s); "
        f"p0f {'on' if db else 'off (no /etc/p0f/p0f.fp)'}, JA4T/JA4TS/JA4/JA4S on"
    )
    print(
        f"replay, fingerprints off: wall {off_wall:.3f} s, CPU {off_cpu:.3f} s "
        f"= {packets / off_cpu:,.0f} packets/CPU-s"
    )
    print(
        f"replay, fingerprints on:  wall {on_wall:.3f} s, CPU {on_cpu:.3f} s "
        f"= {packets / on_cpu:,.0f} packets/CPU-s"
    )
    print(
        f"cost of fingerprints: {(on_cpu / off_cpu - 1) * 100:.1f}% CPU, "
        f"{(on_wall / off_wall - 1) * 100:.1f}% wall (goal <= 20%)"
    )


if __name__ == "__main__":
    main()
