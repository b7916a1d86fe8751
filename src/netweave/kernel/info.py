"""The kernel's info record of a BPF object descriptor (``BPF_OBJ_GET_INFO_BY_FD``)."""

from __future__ import annotations

import ctypes

from netweave.kernel._libbpf import errno_of, lib
from netweave.kernel.errors import KernelError

__all__ = ["object_id", "object_info"]

INFO_BYTES = 256  # more than bpf_prog_info, bpf_map_info and bpf_link_info need here


def object_info(fd: int) -> bytes:
    """The raw ``bpf_prog_info``/``bpf_map_info``/``bpf_link_info`` of ``fd`` (zero-padded)."""
    info = ctypes.create_string_buffer(INFO_BYTES)
    size = ctypes.c_uint32(INFO_BYTES)
    ret = lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size))
    if ret:
        raise KernelError(errno_of(ret), f"info of BPF object fd {fd}")
    return info.raw


def object_id(fd: int) -> int:
    """The kernel id of a BPF program, map or link fd (the second word of every info)."""
    return int.from_bytes(object_info(fd)[4:8], "little")
