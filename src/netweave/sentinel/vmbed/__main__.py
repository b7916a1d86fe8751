"""``python -m netweave.sentinel.vmbed [--share DIR] [--timeout S] SCRIPT``: boot the bed once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from netweave.sentinel.vmbed.boot import boot
from netweave.sentinel.vmbed.build import DEFAULT_CACHE, build_bed


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the bed, run SCRIPT in it, print the console, return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m netweave.sentinel.vmbed")
    parser.add_argument("script", help="shell commands run as root in /share inside the guest")
    parser.add_argument("--share", type=Path, default=Path.cwd(), help="host dir seen as /share")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--timeout", type=float, default=480.0)
    parser.add_argument("--memory", type=int, default=512, help="guest memory in MiB")
    args = parser.parse_args(argv)
    started = time.monotonic()
    image = build_bed(args.cache, log=lambda m: print(m, file=sys.stderr))
    built = time.monotonic() - started
    run = boot(
        image, args.share.resolve(), args.script, timeout_s=args.timeout, memory_mb=args.memory
    )
    sys.stdout.write(run.console)
    print(
        f"vmbed: build {built:.1f}s, boot+run {run.duration_s:.1f}s, exit {run.exit_code}"
        f"{' (timed out)' if run.timed_out else ''}, run dir {run.run_dir}",
        file=sys.stderr,
    )
    return 0 if run.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
