"""A qemu VM with Debian's 6.1 kernel and BPF LSM, for running kernel-enforcement tests.

``build_bed`` assembles (and caches) the kernel and initramfs from Debian packages;
``boot`` runs a shell script inside with a 9p share carrying code in and results out.
"""

from netweave.sentinel.vmbed.boot import VmBedUnavailable, VmRun, boot, unavailable_reason
from netweave.sentinel.vmbed.build import BedImage, VmBedError, build_bed

__all__ = [
    "BedImage",
    "VmBedError",
    "VmBedUnavailable",
    "VmRun",
    "boot",
    "build_bed",
    "unavailable_reason",
]
