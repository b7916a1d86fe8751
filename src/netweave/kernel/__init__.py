"""A small binding of Debian's libbpf 1.1 (``libbpf.so.1``) through ctypes.

``BpfObject`` opens a compiled object from memory (the packaged objects are checked
against their SHA-256 manifest), lets ``const volatile`` globals and map sizes be set,
audits every program's helper calls, and loads it. ``Program`` attaches (XDP, tcx with
classic tc as fallback, tp_btf, LSM) and test-runs; ``Map`` reads and writes maps, also
re-opened from pins; ``Link`` holds an attachment; ``RingBuffer`` drains a ring buffer.
Every load, attach, detach, pin, unpin and map update is written to the audit log.
"""

from netweave.kernel.bpffs import BPFFS, ensure_mounted, pin_path
from netweave.kernel.btf import LayoutError
from netweave.kernel.errors import (
    AttachError,
    AuditRefused,
    KernelError,
    ObjectError,
    VerifierError,
)
from netweave.kernel.link import Link, TcFilter
from netweave.kernel.maps import Map, unpin
from netweave.kernel.object import BpfObject
from netweave.kernel.program import Program, TestRun
from netweave.kernel.ringbuf import RingBuffer

__all__ = [
    "BPFFS",
    "AttachError",
    "AuditRefused",
    "BpfObject",
    "KernelError",
    "LayoutError",
    "Link",
    "Map",
    "ObjectError",
    "Program",
    "RingBuffer",
    "TcFilter",
    "TestRun",
    "VerifierError",
    "ensure_mounted",
    "pin_path",
    "unpin",
]
