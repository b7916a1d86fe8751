"""Benchmark of the XDP shield against an empty program and the kernel LPM trie (same run).

Run as root: ``python bench/bench_shield.py [CIDRS]`` (same as ``netweave bench shield``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from netweave.shield.bench import run

if __name__ == "__main__":
    cidrs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(asdict(run(cidrs)), indent=1))
