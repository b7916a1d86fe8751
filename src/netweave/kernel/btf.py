"""Reading an object's BTF: struct layouts (to check Python decoders) and DATASEC variables."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from netweave.kernel._libbpf import BtfMember, BtfType, BtfVarSecinfo, lib

KIND_STRUCT = 4
KIND_DATASEC = 15


class LayoutError(Exception):
    """A Python record type does not match the C struct of the same name in the object's BTF."""


@dataclass(frozen=True, slots=True)
class StructLayout:
    """Size of a C struct and the byte offset of each named member."""

    name: str
    size: int
    offsets: dict[str, int]


def _vlen(t: BtfType) -> int:
    return int(t.info) & 0xFFFF


def _name(btf: int, off: int) -> str:
    raw = lib.btf__name_by_offset(btf, off)
    return raw.decode() if raw else ""


def struct_layout(btf: int, name: str) -> StructLayout:
    """Layout of ``struct name`` in ``btf``; :class:`LayoutError` when it is not there."""
    type_id = lib.btf__find_by_name_kind(btf, name.encode(), KIND_STRUCT)
    if type_id < 0:
        raise LayoutError(f"struct {name} is not in the object's BTF")
    t = lib.btf__type_by_id(btf, type_id).contents
    members = ctypes.cast(
        ctypes.addressof(t) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfMember * _vlen(t))
    ).contents
    kind_flag = bool(t.info >> 31)
    offsets: dict[str, int] = {}
    for m in members:
        bits = m.offset & 0xFFFFFF if kind_flag else m.offset
        offsets[_name(btf, m.name_off)] = bits // 8
    return StructLayout(name, t.size_or_type, offsets)


def datasec_vars(btf: int, section: str) -> dict[str, tuple[int, int]]:
    """``{variable: (offset, size)}`` of a DATASEC such as ``.rodata``; empty when absent."""
    type_id = lib.btf__find_by_name_kind(btf, section.encode(), KIND_DATASEC)
    if type_id < 0:
        return {}
    t = lib.btf__type_by_id(btf, type_id).contents
    infos = ctypes.cast(
        ctypes.addressof(t) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfVarSecinfo * _vlen(t))
    ).contents
    out = {}
    for v in infos:
        var = lib.btf__type_by_id(btf, v.type).contents
        out[_name(btf, var.name_off)] = (v.offset, v.size)
    return out


def check_layout(btf: int, name: str, record: type[ctypes.Structure]) -> None:
    """Raise :class:`LayoutError` unless ``record`` matches ``struct name`` in size and offsets.

    Every member whose name does not start with ``_`` (padding) must exist on both sides at
    the same offset.
    """
    layout = struct_layout(btf, name)
    size = ctypes.sizeof(record)
    if size != layout.size:
        raise LayoutError(f"struct {name}: C size {layout.size}, Python {record.__name__} {size}")
    py = {f[0]: getattr(record, f[0]).offset for f in record._fields_ if not f[0].startswith("_")}
    for field, off in layout.offsets.items():
        if not field or field.startswith("_"):
            continue
        if field not in py:
            raise LayoutError(f"struct {name}: member {field} missing from {record.__name__}")
        if py[field] != off:
            raise LayoutError(
                f"struct {name}: member {field} at C offset {off}, Python offset {py[field]}"
            )
    extra = set(py) - set(layout.offsets)
    if extra:
        raise LayoutError(f"struct {name}: {record.__name__} has fields C lacks: {sorted(extra)}")
