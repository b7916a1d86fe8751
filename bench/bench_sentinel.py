"""Cost of the sentinel's LSM programs on open/write syscalls, measured inside the VM bed.

Run on the host (as root): ``.venv/bin/python bench/bench_sentinel.py``. It compiles a tiny
static C loop (so Python's own overhead does not hide the syscalls), boots the bed once,
and inside measures open+write+close and plain write rates on tmpfs:

1. without any sentinel program (the reference, same boot);
2. with the sentinel attached and 10,000 protected inodes, on a file no rule covers
   (every open still runs the file_open program and one hash lookup);
3. with a monitor-only rule on the benchmark file itself (every open reports an event);
4. without the programs again, after detaching, to show the run's noise.

The guest is emulated (TCG), so absolute rates are 10-15x below a real machine; the
ratios are what to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 20000
ROUNDS = 5

FSBENCH_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    const char *path = argv[1];
    long n = atol(argv[2]), i;
    char buf[64] = {0};
    double t0 = now();
    for (i = 0; i < n; i++) {
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf) { perror(path); return 1; }
        close(fd);
    }
    double t1 = now();
    int fd = open(path, O_WRONLY);
    if (fd < 0) { perror(path); return 1; }
    double t2 = now();
    for (i = 0; i < n; i++)
        if (pwrite(fd, buf, sizeof buf, 0) != sizeof buf) { perror("pwrite"); return 1; }
    double t3 = now();
    close(fd);
    printf("%.0f %.0f\n", n / (t1 - t0), n / (t3 - t2));
    return 0;
}
"""


def main() -> int:
    """Host: build the helper, boot the bed, print the guest's figures. Guest: measure."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--guest", action="store_true", help="(inside the VM) run the rounds")
    parser.add_argument("--helper", type=Path, help="(inside the VM) the compiled loop")
    args = parser.parse_args()
    if args.guest:
        return guest(args.helper)
    return host()


def host() -> int:
    """Compile the loop, boot the bed once, print what the guest measured."""
    from netweave.sentinel.vmbed import boot, build_bed, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_sentinel: skipped: the VM bed cannot run here: {reason}")
        return 0
    if not (REPO / "src/netweave/kernel/objects/sentinel.o").exists():
        print("bench_sentinel: sentinel.o is not built: run `make bpf`", file=sys.stderr)
        return 1
    work = REPO / ".vmbed" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "fsbench.c"
    source.write_text(FSBENCH_C)
    cc = shutil.which("clang-19") or shutil.which("cc") or "cc"
    subprocess.run([cc, "-O2", "-static", str(source), "-o", str(work / "fsbench")], check=True)
    image = build_bed()
    script = (
        "cd /share && PYTHONPATH=/share/src NETWEAVE_AUDIT_LOG=/tmp/bench-audit.jsonl "
        "python3 bench/bench_sentinel.py --guest --helper /share/.vmbed/bench/fsbench"
    )
    run = boot(image, REPO, script, timeout_s=480)
    figures = [line for line in run.console.splitlines() if line.startswith(("  ", "bench"))]
    print("\n".join(figures))
    print(f"bench_sentinel: VM boot + run {run.duration_s:.1f} s, guest exit {run.exit_code}")
    if run.passed:
        shutil.rmtree(run.run_dir, ignore_errors=True)
    return 0 if run.passed else 1


def guest(helper: Path) -> int:
    """Inside the VM: three scenarios, ROUNDS rounds each, medians printed with ratios."""
    from netweave.sentinel.events import Mode
    from netweave.sentinel.lsm import LsmSentinel
    from netweave.sentinel.policy import Policy, Rule

    root = Path("/tmp/bench")
    tree = root / "protected"
    tree.mkdir(parents=True)
    for i in range(100):
        sub = tree / f"d{i}"
        sub.mkdir()
        for j in range(99):
            (sub / f"f{j}").write_text("x")
    target = root / "target.dat"
    target.write_text("")

    def measure() -> tuple[float, float]:
        opens, writes = [], []
        for _ in range(ROUNDS):
            out = subprocess.run(
                [str(helper), str(target), str(ITERATIONS)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            opens.append(float(out[0]))
            writes.append(float(out[1]))
        return statistics.median(opens), statistics.median(writes)

    base = measure()
    results = {"no sentinel (reference)": base}
    policy = Policy.of([Rule(tree, Mode.ENFORCE, "bench")]).resolve()
    with LsmSentinel.start(policy) as sentinel:
        inodes = len(policy.inodes)
        results[f"sentinel, {inodes} protected inodes, file not covered"] = measure()
        monitored = Policy.of(
            [Rule(tree, Mode.ENFORCE, "bench"), Rule(target, Mode.MONITOR, "bench")]
        ).resolve()
        sentinel.install(monitored)
        results["sentinel, monitor rule on the file (event per open)"] = measure()
        drained = len(sentinel.ring.drain())
        dropped = sentinel.dropped
    # The reference again, after detaching: how much of the difference is the machine's noise.
    results["no sentinel again (after detaching)"] = measure()
    print(f"bench_sentinel: {ITERATIONS} iterations x {ROUNDS} rounds, medians, tmpfs, TCG guest")
    for name, (opens, writes) in results.items():
        print(
            f"  {name:55s} open+write+close {opens:9.0f}/s ({opens / base[0]:.2f}x)  "
            f"write {writes:9.0f}/s ({writes / base[1]:.2f}x)"
        )
    print(f"  monitor events: {drained} read from the ring buffer, {dropped} dropped (ring full)")
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
