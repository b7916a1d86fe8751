"""Boot the bed under qemu (TCG), run one shell script inside, and report what happened.

The host's directory ``share`` is the guest's ``/share`` (9p). The script runs there as
root; its console output, exit code and any files it writes under its run directory come
back. qemu exits 0 whatever the guest did, so the verdict comes from the marker line the
guest's /init prints last and the exit code it wrote over 9p, and both must agree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from netweave.sentinel.vmbed.build import BedImage
from netweave.sentinel.vmbed.guest_init import EXIT_MARKER

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
LSM_LIST = "lockdown,capability,landlock,yama,apparmor,bpf"

_MARKER = re.compile(rf"^{EXIT_MARKER} rc=(\d+)\s*$", re.MULTILINE)


class VmBedUnavailable(Exception):  # noqa: N818 - reads as the condition it reports
    """qemu cannot run on this machine; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class VmRun:
    """The outcome of one boot: the guest's exit code (None if it never reported one)."""

    exit_code: int | None
    console: str
    duration_s: float
    run_dir: Path
    timed_out: bool

    @property
    def passed(self) -> bool:
        """True when the guest reported exit code 0 both on the console and over 9p."""
        return self.exit_code == 0


def unavailable_reason() -> str | None:
    """Say why the bed cannot boot here (no qemu, not root, no apt), or None when it can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if os.geteuid() != 0:
        return "the VM bed needs root (dpkg -x, chroot, 9p with security_model=none)"
    for tool in ("apt-get", "apt-cache", "dpkg", "cpio", "ldconfig", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; the bed is built from Debian packages"
    return None


def boot(
    image: BedImage,
    share: Path,
    script: str,
    *,
    timeout_s: float = 480.0,
    memory_mb: int = 512,
    run_parent: str = ".vmbed",
) -> VmRun:
    """Boot ``image`` with ``share`` as /share, run ``script`` (sh) in /share, power off.

    The run directory ``share/run_parent/<id>`` holds run.sh, console.log and rc; the
    script finds its own run directory in ``$VMBED_RUN`` (a path inside the guest).
    Raises VmBedUnavailable when qemu is missing.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise VmBedUnavailable(reason)
    run_id = uuid.uuid4().hex[:12]
    rel = f"{run_parent}/{run_id}"
    run_dir = share / rel
    run_dir.mkdir(parents=True)
    guest_run = f"/share/{rel}"
    (run_dir / "run.sh").write_text(
        f"export VMBED_RUN={guest_run} PY_COLORS=0 PYTHONDONTWRITEBYTECODE=1\n{script}\n"
    )
    guest_limit = max(10, int(timeout_s) - 15)
    append = f"console=ttyS0 lsm={LSM_LIST} panic=-1 quiet nwrun={rel} nwtimeout={guest_limit}"
    cmd = [
        QEMU,
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        str(memory_mb),
        "-kernel",
        str(image.vmlinux),
        "-initrd",
        str(image.initramfs),
        "-append",
        append,
        "-no-reboot",
        "-nographic",
        "-nic",
        "none",
        "-virtfs",
        f"local,path={share},mount_tag=work,security_model=none",
    ]
    if QBOOT.exists():
        cmd[1:1] = ["-bios", str(QBOOT)]
    started = time.monotonic()
    timed_out = False
    log_path = run_dir / "console.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait(timeout=30)
    duration = time.monotonic() - started
    console = log_path.read_text(errors="replace")
    return VmRun(_exit_code(console, run_dir), console, duration, run_dir, timed_out)


def _exit_code(console: str, run_dir: Path) -> int | None:
    """The guest's exit code when the marker and the rc file agree, else None."""
    found = _MARKER.findall(console)
    rc_file = run_dir / "rc"
    if not found or not rc_file.exists():
        return None
    marker = int(found[-1])
    try:
        written = int(rc_file.read_text().strip())
    except ValueError:
        return None
    return marker if marker == written else None
