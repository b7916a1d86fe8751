"""ctypes declarations for the parts of Debian's ``libbpf.so.1`` (1.1.x) that netweave uses.

Only declarations live here; the classes in this package give them lifetimes and errors.
libbpf 1.x returns ``-errno`` from int-returning calls and NULL with ``errno`` set from
pointer-returning ones, so the library is opened with ``use_errno=True``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

log = logging.getLogger("netweave.libbpf")


class BpfInsn(Structure):
    """``struct bpf_insn``: one eBPF instruction (8 bytes)."""

    _fields_ = [
        ("code", c_uint8),
        ("regs", c_uint8),  # dst_reg in the low nibble, src_reg in the high nibble
        ("off", ctypes.c_int16),
        ("imm", ctypes.c_int32),
    ]


class OpenOpts(Structure):
    """``struct bpf_object_open_opts`` as of libbpf 1.1."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_pad", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class LinkCreateOpts(Structure):
    """``struct bpf_link_create_opts`` (the fields netweave sets; the union zeroed)."""

    _fields_ = [
        ("sz", c_size_t),
        ("flags", c_uint32),
        ("iter_info", c_void_p),
        ("iter_info_len", c_uint32),
        ("target_btf_id", c_uint32),
        ("_union", c_uint64 * 5),
    ]


class LinkUpdateOpts(Structure):
    """``struct bpf_link_update_opts``."""

    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("old_prog_fd", c_uint32)]


class TestRunOpts(Structure):
    """``struct bpf_test_run_opts``."""

    __test__ = False
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class TcHook(Structure):
    """``struct bpf_tc_hook``."""

    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class TcOpts(Structure):
    """``struct bpf_tc_opts``."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class BatchOpts(Structure):
    """``struct bpf_map_batch_opts``."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BtfType(Structure):
    """``struct btf_type`` (UAPI, stable): name offset, info word, size or type."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfMember(Structure):
    """``struct btf_member`` (UAPI, stable)."""

    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfVarSecinfo(Structure):
    """``struct btf_var_secinfo`` (UAPI, stable): one variable of a DATASEC."""

    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

# name -> (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_strerror": (c_int, [c_int, c_char_p, c_size_t]),
    "bpf_object__open_mem": (c_void_p, [c_void_p, c_size_t, POINTER(OpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__type": (c_int, [c_void_p]),
    "bpf_program__expected_attach_type": (c_int, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__insns": (POINTER(BpfInsn), [c_void_p]),
    "bpf_program__insn_cnt": (c_size_t, [c_void_p]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__disconnect": (None, [c_void_p]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, POINTER(LinkCreateOpts)]),
    "bpf_link_update": (c_int, [c_int, c_int, POINTER(LinkUpdateOpts)]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_tc_hook_create": (c_int, [POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(TcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)],
    ),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), POINTER(BatchOpts)]),
    "bpf_map_freeze": (c_int, [c_int]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (POINTER(BtfType), [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "btf__resolve_size": (ctypes.c_ssize_t, [c_void_p, c_uint32]),
    "btf__resolve_type": (c_int, [c_void_p, c_uint32]),
}


def _open() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    for fn, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(lib, fn)
        f.restype = restype
        f.argtypes = argtypes
    return lib


lib = _open()
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def _print_py(level: int, fmt: bytes, args: int) -> int:
    # libbpf's messages go to Python logging; an exception must never cross into C.
    try:
        buf = ctypes.create_string_buffer(4096)
        _libc.vsnprintf(buf, len(buf), fmt, args)
        log.log(
            _LEVELS.get(level, logging.DEBUG), "%s", buf.value.decode(errors="replace").rstrip()
        )
    except Exception:
        return 0
    return 0


_print = PRINT_FN(_print_py)  # kept alive for as long as libbpf may call it
lib.libbpf_set_print(_print)


def errno_of(ret: int) -> int:
    """The errno of an int-returning libbpf call that failed with ``-errno`` (or errno)."""
    return -ret if ret < 0 else ctypes.get_errno()


def strerror(err: int) -> str:
    """libbpf's text for an errno, including libbpf's own codes (4000+)."""
    buf = ctypes.create_string_buffer(256)
    lib.libbpf_strerror(err, buf, len(buf))
    return buf.value.decode(errors="replace")


__all__ = [
    "BatchOpts",
    "BpfInsn",
    "BtfMember",
    "BtfType",
    "BtfVarSecinfo",
    "LinkCreateOpts",
    "LinkUpdateOpts",
    "OpenOpts",
    "TcHook",
    "TcOpts",
    "TestRunOpts",
    "errno_of",
    "lib",
    "strerror",
]
