"""Fingerprint speed: records per second on one core, and replay with fingerprints on vs off.

Uses the same 1,000,000-packet capture as bench_capture.py (generated in /tmp if absent).
  * fingerprint records/s: fingerprint_capture (p0f with /etc/p0f/p0f.fp, JA4T/JA4TS, JA4,
    JA4S: what ``netweave fingerprint`` runs) over a capture already read, timed alone; and
    Fingerprinter.run over the capture's events (the record-by-record path);
  * replay throughput: read_capture alone vs read_capture + fingerprint_capture, both as
    ``netweave fingerprint`` runs them (goal: packets/s with fingerprints on at most 20%
    below packets/s without them).
Replay figures are CPU seconds, median of 7 runs; off and on runs alternate, and each "on"
run also times its two halves (read, fingerprints), so the cost is given both end to end
(median on / median off) and within the same runs (median of fingerprint CPU / read CPU),
which a shared machine disturbs less.
Run: .venv/bin/python bench/bench_fingerprint.py
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_capture import capture_file, timed_call
from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.columnar import fingerprint_capture
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB, load_p0f_database
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions

RUNS = 7


def main() -> None:
    path = capture_file()
    db = load_p0f_database(DEFAULT_P0F_DB) if DEFAULT_P0F_DB.exists() else None
    options = FingerprintOptions(p0f_db=db)
    capture = read_capture(path)  # also loads the compiled kernels
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

    fp_wall, fp_cpu = timed_call(fingerprints_only, 5)
    run_wall, run_cpu = timed_call(record_by_record, 3)
    off: list[float] = []
    on: list[float] = []
    same_run: list[float] = []
    for _ in range(RUNS):
        gc.collect()
        start = time.process_time()
        plain = read_capture(path)
        off.append(time.process_time() - start)
        del plain
        gc.collect()
        start = time.process_time()
        read = read_capture(path)
        middle = time.process_time()
        fingerprint_capture(read, options)
        end = time.process_time()
        del read
        on.append(end - start)
        same_run.append((end - middle) / (middle - start))
    off_cpu, on_cpu = statistics.median(off), statistics.median(on)
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
        f"replay, fingerprints off: median CPU {off_cpu:.3f} s = {packets / off_cpu:,.0f} "
        f"packets/CPU-s (runs: {' '.join(f'{v:.3f}' for v in off)})"
    )
    print(
        f"replay, fingerprints on:  median CPU {on_cpu:.3f} s = {packets / on_cpu:,.0f} "
        f"packets/CPU-s (runs: {' '.join(f'{v:.3f}' for v in on)})"
    )
    print(
        f"time added by fingerprints: {statistics.median(same_run) * 100:.1f}% within the same "
        f"runs (per run: {' '.join(f'{v * 100:.0f}%' for v in same_run)}), "
        f"{(on_cpu / off_cpu - 1) * 100:.1f}% end to end"
    )
    # The goal is on throughput: packets/s with fingerprints at most 20% below packets/s
    # without them, i.e. 1 - off_time / on_time <= 0.2.
    drop_same = 1 - 1 / (1 + statistics.median(same_run))
    print(
        f"replay throughput with fingerprints on: {drop_same * 100:.1f}% below off within the "
        f"same runs, {(1 - off_cpu / on_cpu) * 100:.1f}% end to end (goal: at most 20% below)"
    )


if __name__ == "__main__":
    main()
