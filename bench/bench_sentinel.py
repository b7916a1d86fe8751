"""Cost of the sentinel's LSM programs on open/write syscalls, measured inside the VM bed.

Run on the host (as root): ``.venv/bin/python bench/bench_sentinel.py``. It compiles a tiny
static C loop (so Python's own overhead does not hide the syscalls), boots the bed once,
and inside measures open+write+close and plain write rates on tmpfs:

1. without any sentinel program (the reference, same boot);
2. with the sentinel attached and 10,000 protected inodes, on a file no rule covers
   (every open still runs the file_open program and one hash lookup);
3. with a monitor-only rule on the benchmark file itself (every open reports an event).

The three are interleaved round by round (the programs are attached and detached between
rounds) so that the shared machine's changing load hits them alike; "max/min" is the
spread of a scenario's rounds.

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
    """Inside the VM: the scenarios interleaved round by round (attach, measure, detach), so
    drift in the machine's load hits them alike; medians printed with ratios."""
    import struct

    from netweave.kernel import BpfObject, RingBuffer
    from netweave.sentinel.events import Mode
    from netweave.sentinel.policy import Policy, Rule, kernel_dev

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
        out = subprocess.run(
            [str(helper), str(target), str(ITERATIONS)], capture_output=True, text=True, check=True
        ).stdout.split()
        return float(out[0]), float(out[1])

    policy = Policy.of([Rule(tree, Mode.ENFORCE, "bench")]).resolve()
    obj = BpfObject.embedded("sentinel")
    obj.set_rodata(agent_tgid=os.getpid())
    obj.load()
    inodes = obj.map("protected_inodes")
    inodes.update_batch(
        b"".join(struct.pack("<QII", p.ino, p.dev, 0) for p in policy.inodes),
        b"".join(struct.pack("<II", Mode.ENFORCE, 1) for _ in policy.inodes),
    )
    st = target.stat()
    target_key = struct.pack("<QII", st.st_ino, kernel_dev(st.st_dev), 0)
    ring = RingBuffer(obj.map("fim_events"), obj.map("fim_drops"))
    names = [
        "no sentinel (reference)",
        f"sentinel, {len(policy.inodes)} protected inodes, file not covered",
        "sentinel, monitor rule on the file (event per open)",
    ]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    events = 0
    for _ in range(ROUNDS):
        samples[names[0]].append(measure())
        links = [prog.attach() for prog in obj.programs.values()]
        samples[names[1]].append(measure())
        inodes.update(target_key, struct.pack("<II", Mode.MONITOR, 2), audit=False)
        samples[names[2]].append(measure())
        events += len(ring.drain())
        inodes.delete(target_key, audit=False)
        for link in links:
            link.close()
    dropped = ring.dropped
    ring.close()
    obj.close()
    base = _medians(samples[names[0]])
    print(f"bench_sentinel: {ITERATIONS} iterations x {ROUNDS} interleaved rounds, medians, tmpfs")
    for name in names:
        opens, writes = _medians(samples[name])
        spread = max(o for o, _ in samples[name]) / min(o for o, _ in samples[name])
        print(
            f"  {name:55s} open+write+close {opens:9.0f}/s ({opens / base[0]:.2f}x)  "
            f"write {writes:9.0f}/s ({writes / base[1]:.2f}x)  max/min {spread:.2f}"
        )
    print(f"  monitor events: {events} read from the ring buffer, {dropped} dropped (ring full)")
    os.sync()
    return 0


def _medians(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
