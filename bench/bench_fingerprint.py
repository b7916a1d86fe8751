"""Fingerprint speed: records per second on one core, and replay with fingerprints on vs off.

Uses the same 1,000,000-packet capture as bench_capture.py (generated in /tmp if absent).
  * fingerprint records/s: fingerprint_capture (p0f with /etc/p0f/p0f.fp, JA4T/JA4TS, JA4,
    JA4S: what ``netweave fingerprint`` runs) over a capture already read, timed alone; and
    Fingerprinter.run over the capture's events (the record-by-record path);
  * replay throughput: read_capture alone vs read_capture + fingerprint_capture, both as
    ``netweave fingerprint`` runs them (goal: at most 20% slower with fingerprints on).
Each figure is the best CPU time of 5 runs; off and on runs alternate.
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
from netweave.fingerprint.columnar import fingerprint_capture
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions


def main() -> None:
    path = capture_file()
    db = load_p0f_database(DEFAULT_P0F_DB) if DEFAULT_P0F_DB.exists() else None
    options = FingerprintOptions(p0f_db=db)
    capture = read_capture(path, counters=False)  # also loads the compiled kernels
    events = capture.events()
    packets = capture.packets
    records = len(fingerprint_capture(capture, options))  # loads the fingerprint kernels
    if records != sum(1 for _r in Fingerprinter(options).run(events)):
        raise SystemExit("fingerprint_capture and Fingerprinter.run disagree")

    def fingerprints_only() -> None:
        fingerprint_capture(capture, options)

    def record_by_record() -> None:
        for _r in Fingerprinter(options).run(events):
            pass

    def replay_off() -> None:
        read_capture(path, counters=False)

    def replay_on() -> None:
        fingerprint_capture(read_capture(path, counters=False), options)

    fp_wall, fp_cpu = timed_call(fingerprints_only, 5)
    run_wall, run_cpu = timed_call(record_by_record, 3)
    off_wall = off_cpu = on_wall = on_cpu = float("inf")
    for _ in range(5):
        wall, cpu = timed_call(replay_off, 1)
        off_wall, off_cpu = min(off_wall, wall), min(off_cpu, cpu)
        wall, cpu = timed_call(replay_on, 1)
        on_wall, on_cpu = min(on_wall, wall), min(on_cpu, cpu)
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
        f"  record by record (Fingerprinter.run over events): {records / run_cpu:,.0f} "
        f"records per CPU-second (wall {records / run_wall:,.0f}/s)"
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
