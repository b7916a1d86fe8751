"""``Program``: one program of a loaded object, with its ways to attach and to test-run."""

from __future__ import annotations

import ctypes
from ctypes import byref
from dataclasses import dataclass

from netweave.audit import default_log
from netweave.kernel._libbpf import LinkCreateOpts, TestRunOpts, errno_of, lib
from netweave.kernel.errors import AttachError, KernelError
from netweave.kernel.helpers import AttachType
from netweave.kernel.link import Link, TcFilter

XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
BPF_F_BEFORE = 1 << 3


@dataclass(frozen=True, slots=True)
class TestRun:
    """Result of BPF_PROG_TEST_RUN: return value, mean ns per run, and the output packet."""

    __test__ = False
    retval: int
    duration_ns: int
    data_out: bytes


class Program:
    """A program inside a :class:`~netweave.kernel.object.BpfObject`."""

    def __init__(self, ptr: int, object_name: str, digest: str) -> None:
        self._ptr = ptr
        self.name: str = lib.bpf_program__name(ptr).decode()
        self.section: str = lib.bpf_program__section_name(ptr).decode()
        self.object_name = object_name
        self.digest = digest
        self.xdp_mode = ""

    @property
    def type(self) -> int:
        """The ``enum bpf_prog_type`` value."""
        return int(lib.bpf_program__type(self._ptr))

    @property
    def fd(self) -> int:
        """The program's fd once loaded, else a negative number."""
        return int(lib.bpf_program__fd(self._ptr))

    @property
    def autoload(self) -> bool:
        """Whether :meth:`BpfObject.load` loads this program."""
        return bool(lib.bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        lib.bpf_program__set_autoload(self._ptr, value)

    def insns(self) -> bytes:
        """The program's instructions as libbpf holds them now (8 bytes each)."""
        count = lib.bpf_program__insn_cnt(self._ptr)
        ptr = lib.bpf_program__insns(self._ptr)
        return ctypes.string_at(ptr, count * 8) if count else b""

    def attach_xdp(self, ifindex: int, mode: str = "auto") -> Link:
        """Attach as XDP: ``native``, ``generic`` or ``auto`` (native, else generic)."""
        tries = {
            "native": [XDP_FLAGS_DRV_MODE],
            "generic": [XDP_FLAGS_SKB_MODE],
            "auto": [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE],
        }.get(mode)
        if tries is None:
            raise ValueError(f"XDP mode {mode!r} is not one of native, generic, auto")
        err = 0
        for flags in tries:
            try:
                link = self._link_create(ifindex, AttachType.XDP, flags)
            except AttachError as e:
                err = e.errno or 0
                continue
            self.xdp_mode = "native" if flags == XDP_FLAGS_DRV_MODE else "generic"
            link.description = f"xdp/{self.xdp_mode} ifindex {ifindex} ({self.name})"
            self._audit("attach", link.description, mode=self.xdp_mode)
            return link
        raise AttachError(err, f"attach XDP program {self.name} to ifindex {ifindex} ({mode})")

    def attach_tcx(self, ifindex: int, *, ingress: bool, first: bool = False) -> Link:
        """Attach through tcx; ``first`` puts it before every other program on the hook."""
        kind = AttachType.TCX_INGRESS if ingress else AttachType.TCX_EGRESS
        link = self._link_create(ifindex, kind, BPF_F_BEFORE if first else 0)
        link.description = (
            f"tcx/{'ingress' if ingress else 'egress'} ifindex {ifindex} ({self.name})"
        )
        self._audit("attach", link.description)
        return link

    def attach_tc(self, ifindex: int, *, ingress: bool, first: bool = False) -> Link | TcFilter:
        """Attach through tcx where the kernel has it, else as a classic clsact filter."""
        try:
            return self.attach_tcx(ifindex, ingress=ingress, first=first)
        except AttachError as e:
            if e.errno not in (22, 95):  # EINVAL/EOPNOTSUPP: no tcx in this kernel
                raise
        return TcFilter(ifindex, ingress, self.fd, self.name)

    def attach(self) -> Link:
        """Attach where the section name says (tp_btf, lsm, ...) through libbpf."""
        ptr = lib.bpf_program__attach(self._ptr)
        if not ptr:
            raise AttachError(ctypes.get_errno(), f"attach {self.section} program {self.name}")
        # Take over libbpf's fd: after disconnect, destroy frees the struct and leaves the fd
        # open (a dup here would leak the original and keep the link attached forever).
        fd = int(lib.bpf_link__fd(ptr))
        lib.bpf_link__disconnect(ptr)
        lib.bpf_link__destroy(ptr)
        link = Link(fd, f"{self.section} ({self.name})")
        self._audit("attach", link.description)
        return link

    def test_run(
        self, data: bytes, *, repeat: int = 1, ctx: bytes | None = None, out_size: int | None = None
    ) -> TestRun:
        """Run the program on ``data`` in the kernel (BPF_PROG_TEST_RUN) ``repeat`` times."""
        out = ctypes.create_string_buffer(out_size if out_size is not None else len(data) + 256)
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
        inbuf = ctypes.create_string_buffer(data, len(data))
        opts.data_in = ctypes.cast(inbuf, ctypes.c_void_p)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.cast(out, ctypes.c_void_p)
        opts.data_size_out = len(out)
        opts.repeat = repeat
        if ctx is not None:
            ctxbuf = ctypes.create_string_buffer(ctx, len(ctx))
            opts.ctx_in = ctypes.cast(ctxbuf, ctypes.c_void_p)
            opts.ctx_size_in = len(ctx)
        ret = lib.bpf_prog_test_run_opts(self.fd, byref(opts))
        if ret:
            raise KernelError(errno_of(ret), f"test run of {self.name}")
        return TestRun(opts.retval, opts.duration, out.raw[: opts.data_size_out])

    def _link_create(self, target: int, kind: int, flags: int) -> Link:
        opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
        fd = lib.bpf_link_create(self.fd, target, kind, byref(opts))
        if fd < 0:
            raise AttachError(errno_of(fd), f"attach {self.name} (attach type {kind}) to {target}")
        return Link(fd, f"{self.name} attach type {kind} target {target}")

    def _audit(self, action: str, what: str, **detail: object) -> None:
        default_log().record(action, self.object_name, self.name, self.digest, hook=what, **detail)
