"""A minimal ELF64 reader for BPF objects: executable sections and call relocations."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netweave.kernel.errors import ObjectError

SHF_EXECINSTR = 0x4
SHT_SYMTAB = 2
SHT_REL = 9


@dataclass(frozen=True, slots=True)
class Section:
    """One section header: name, type, flags, file offset, size, link and info."""

    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


class ElfImage:
    """Sections of an in-memory little-endian ELF64 object."""

    def __init__(self, data: bytes, label: str) -> None:
        if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
            raise ObjectError(f"{label}: not a little-endian ELF64 object")
        self.data = data
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
            raise ObjectError(f"{label}: section header table runs past the end of the file")
        raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names_off = raw[shstrndx][4]
        self.sections = [
            Section(self._cstr(names_off + r[0]), r[1], r[2], r[4], r[5], r[6], r[7], r[9])
            for r in raw
        ]

    def _cstr(self, off: int) -> str:
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode(errors="replace")

    def body(self, sec: Section) -> bytes:
        """The bytes of one section."""
        return self.data[sec.offset : sec.offset + sec.size]

    def executable(self) -> list[tuple[int, Section]]:
        """Index and header of every section holding code."""
        return [(i, s) for i, s in enumerate(self.sections) if s.flags & SHF_EXECINSTR and s.size]

    def call_symbols(self, section_index: int) -> dict[int, str]:
        """Instruction index -> symbol name for every relocation in a code section."""
        out: dict[int, str] = {}
        for rel in self.sections:
            if rel.type != SHT_REL or rel.info != section_index:
                continue
            symtab = self.sections[rel.link]
            strtab = self.sections[symtab.link]
            body = self.body(rel)
            for off in range(0, len(body) - 15, 16):
                r_offset, r_info = struct.unpack_from("<QQ", body, off)
                sym_off = symtab.offset + (r_info >> 32) * 24
                (st_name,) = struct.unpack_from("<I", self.data, sym_off)
                out[r_offset // 8] = self._cstr(strtab.offset + st_name)
        return out
