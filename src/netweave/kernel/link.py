"""Attachments of programs to hooks: ``Link`` (a bpf_link fd) and ``TcFilter`` (classic tc)."""

from __future__ import annotations

import ctypes
import os
from ctypes import byref
from pathlib import Path

from netweave.audit import default_log
from netweave.kernel._libbpf import LinkUpdateOpts, TcHook, TcOpts, errno_of, lib
from netweave.kernel.errors import AttachError, KernelError

BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2


class Link:
    """A bpf_link: the program stays attached while this fd, or a pin of it, exists."""

    def __init__(self, fd: int, description: str) -> None:
        self.fd = fd
        self.description = description
        self.pinned: Path | None = None

    @classmethod
    def from_pin(cls, path: Path | str) -> Link:
        """Re-open a pinned link (to update, detach or unpin it)."""
        fd = lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise KernelError(errno_of(fd), f"open pinned link {path}")
        link = cls(fd, f"pinned link {path}")
        link.pinned = Path(path)
        return link

    def pin(self, path: Path | str) -> None:
        """Pin the link so the attachment outlives this process; audited."""
        ret = lib.bpf_obj_pin(self.fd, str(path).encode())
        if ret:
            raise KernelError(errno_of(ret), f"pin {self.description} at {path}")
        self.pinned = Path(path)
        default_log().record("pin", str(path), self.description)

    def unpin(self) -> None:
        """Remove the pin; the attachment then ends when the last fd closes; audited."""
        if self.pinned is not None:
            self.pinned.unlink(missing_ok=True)
            default_log().record("unpin", str(self.pinned), self.description)
            self.pinned = None

    def update(self, prog_fd: int, program: str) -> None:
        """Atomically replace the attached program with ``prog_fd``; audited."""
        opts = LinkUpdateOpts(sz=ctypes.sizeof(LinkUpdateOpts))
        ret = lib.bpf_link_update(self.fd, prog_fd, byref(opts))
        if ret:
            raise KernelError(errno_of(ret), f"update {self.description} to {program}")
        default_log().record("link_update", self.description, program)

    def detach(self) -> None:
        """Detach now, even while pinned or held elsewhere; audited."""
        ret = lib.bpf_link_detach(self.fd)
        if ret:
            raise KernelError(errno_of(ret), f"detach {self.description}")
        default_log().record("detach", self.description)

    def close(self) -> None:
        """Drop this process's hold; an unpinned link detaches when its last fd closes."""
        if self.fd >= 0:
            os.close(self.fd)
            if self.pinned is None:
                default_log().record("detach", self.description)
            self.fd = -1

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcFilter:
    """A classic tc clsact filter (the fallback where tcx is missing); not tied to any fd."""

    def __init__(self, ifindex: int, ingress: bool, prog_fd: int, program: str) -> None:
        self.hook = TcHook(
            sz=ctypes.sizeof(TcHook),
            ifindex=ifindex,
            attach_point=BPF_TC_INGRESS if ingress else BPF_TC_EGRESS,
        )
        ret = lib.bpf_tc_hook_create(byref(self.hook))
        if ret and errno_of(ret) != 17:  # EEXIST: the clsact qdisc is there already
            raise AttachError(errno_of(ret), f"create clsact on ifindex {ifindex}")
        self.opts = TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, handle=1, priority=1)
        ret = lib.bpf_tc_attach(byref(self.hook), byref(self.opts))
        if ret:
            raise AttachError(errno_of(ret), f"tc attach {program} on ifindex {ifindex}")
        self.description = f"tc {'ingress' if ingress else 'egress'} ifindex {ifindex} ({program})"
        default_log().record("attach", self.description, program)
        self._attached = True

    def close(self) -> None:
        """Remove the filter (the clsact qdisc stays for other users)."""
        if self._attached:
            opts = TcOpts(
                sz=ctypes.sizeof(TcOpts), handle=self.opts.handle, priority=self.opts.priority
            )
            lib.bpf_tc_detach(byref(self.hook), byref(opts))
            default_log().record("detach", self.description)
            self._attached = False

    def __enter__(self) -> TcFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
