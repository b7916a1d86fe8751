"""Per-process overhead of the CLI: ``netweave replay FILE`` against ``p0f -r FILE``, as processes.

Times (best of RUNS, CPU = user + system of the child, and wall) of:
  * ``python -c "import netweave.cli"`` and ``netweave --help`` (no subcommand stack);
  * ``netweave replay -q [--no-labels]`` and ``p0f -r`` on a 10-packet capture (start-up cost)
    and on a 100,000-packet capture (1,000 TLS-like conversations);
  * the edge table ``netweave replay`` prints, for 100,000 edges, in this process.
Ratios are against p0f in the same run. Run under the shared lock:
  flock /tmp/netweave-bench.lock .venv/bin/python bench/bench_startup.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_capture import RUNS, timed
from synth_capture import write_capture

P0F_DB = Path("/etc/p0f/p0f.fp")


def line(name: str, wall: float, cpu: float, reference: float | None = None) -> None:
    ratio = f"   {cpu / reference:5.1f}x p0f's CPU" if reference else ""
    print(f"  {name:<44} CPU {cpu:6.3f} s   wall {wall:6.3f} s{ratio}")


def edge_table_seconds(count: int) -> float:
    """CPU seconds of the edge table of ``count`` edges (best of 3)."""
    from netweave.graph.cli import edge_table
    from netweave.graph.model import Edge

    edges = [
        Edge(f"10.1.{i // 250 % 250}.{i % 250}", f"10.9.0.{i % 50}", (80, 443, 5432)[i % 3],
             "tcp", 1 + i % 7, 10, 440 + i, 10, 1360 * (i % 1000), 0, 0, i % 5 == 0)
        for i in range(count)
    ]  # fmt: skip
    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        edge_table(edges)
        best = min(best, time.process_time() - cpu)
    return best


def main() -> None:
    python = sys.executable
    netweave = [python, "-m", "netweave"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {RUNS}")
    wall, cpu = timed([python, "-c", "pass"])
    line("python -c pass", wall, cpu)
    wall, cpu = timed([python, "-c", "import netweave.cli"])
    line("python -c 'import netweave.cli'", wall, cpu)
    wall, cpu = timed([*netweave, "--help"])
    line("netweave --help", wall, cpu)
    have_p0f = shutil.which("p0f") is not None and P0F_DB.exists()
    with tempfile.TemporaryDirectory(prefix="nw-bench-") as tmp:
        for name, flows in (("10 packets", 1), ("100,000 packets", 1000)):
            path = Path(tmp) / f"{flows}.pcap"
            write_capture(path, flows=flows, packets_per_flow=10 if flows == 1 else 100)
            subprocess.run([*netweave, "replay", "-q", str(path)], capture_output=True, check=True)
            print(f"capture of {name}:")
            reference = None
            if have_p0f:
                log = Path(tmp) / "p0f.log"
                wall, reference = timed(
                    ["sh", "-c", f"rm -f {log}; exec p0f -r {path} -f {P0F_DB} -o {log}"]
                )
                line("p0f -r", wall, reference)
            for args in (["-q", "--no-labels"], ["-q"]):
                wall, cpu = timed([*netweave, "replay", *args, str(path)])
                line(f"netweave replay {' '.join(args)}", wall, cpu, reference)
    print(f"edge table of 100,000 edges (in process): CPU {edge_table_seconds(100_000):.3f} s")


if __name__ == "__main__":
    main()
