"""pcap and pcapng container walking: where each packet's bytes start, how long, when.

Only the record headers are read here, one light step per record; the packets themselves
are decoded in batch by :mod:`netweave.capture.decode`. Damage (a bad magic number, a
record running past the end of the file, an impossible length) stops the walk: what was
read before is kept and the damage is reported as a :class:`CaptureFileError` naming the
file and the byte offset.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from netweave.capture.compiled import jit as _jit

MAX_RECORD = 0x400000
"""Largest packet record accepted (4 MiB); anything larger means a corrupt file."""

Image = bytearray | mmap.mmap
"""The bytes of a capture file (memory-mapped); every read is bounded by a packet's end."""

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microseconds, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D


class CaptureFileError(Exception):
    """A capture file is damaged or not a capture file; names the file and byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(slots=True)
class Frames:
    """Where every packet of a capture lies in ``image`` (the mapped file)."""

    image: Image
    data_offset: npt.NDArray[np.int64]
    caplen: npt.NDArray[np.int64]
    wirelen: npt.NDArray[np.int64]
    ts_ns: npt.NDArray[np.int64]
    linktype: npt.NDArray[np.int64]
    record_offset: npt.NDArray[np.int64]
    damage: CaptureFileError | None = None
    interfaces: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.data_offset.shape[0])


def read_frames(path: str | Path) -> Frames:
    """Walk the records of a pcap or pcapng file at ``path``.

    Raises :class:`CaptureFileError` when the file cannot be read at all (missing, empty,
    unknown magic); damage after the first packet is returned in ``Frames.damage``.
    """
    name = str(path)
    try:
        with Path(path).open("rb") as handle:
            size = handle.seek(0, 2)
            if size < 4:
                raise CaptureFileError(name, 0, "file too short to be a pcap or pcapng capture")
            # Mapped, not read: the kernels touch only headers and the pages they need.
            image: Image = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CaptureFileError(name, 0, f"cannot read the file ({exc.strerror})") from exc
    magic = bytes(image[:4])
    if magic in PCAP_MAGICS:
        return _walk_pcap(name, image, size)
    if struct.unpack_from("<I", image, 0)[0] == PCAPNG_SHB:
        return _walk_pcapng(name, image, size)
    raise CaptureFileError(
        name, 0, f"not a pcap or pcapng file (magic {magic.hex()}); expected a capture file"
    )


def _walk_pcap(name: str, image: Image, size: int) -> Frames:
    order, tick_ns = PCAP_MAGICS[bytes(image[:4])]
    if size < 24:
        raise CaptureFileError(name, 0, f"pcap global header truncated ({size} of 24 bytes)")
    _vmaj, _vmin, _zone, _sig, _snap, network = struct.unpack_from(order + "HHiIII", image, 4)
    linktype = network & 0x0FFFFFFF
    img = np.frombuffer(image, dtype=np.uint8)
    big = order == ">"
    # One pass into columns sized for records of 32 bytes or more (untouched room costs
    # no memory; at most 16 Mi records); a file of more records is walked again.
    room = min((size - 24) // 32 + 1, 1 << 24)
    for _attempt in range(2):
        cols = np.empty((5, room), dtype=np.int64)
        count, stop, code, value = _pcap_walk(img, size, big, MAX_RECORD, tick_ns, cols)
        if count <= room:
            break
        room = count
    record_offset, data_offset, caplen, wirelen, ts_ns = (c[:count] for c in cols)
    damage = None
    if code == 1:
        damage = CaptureFileError(
            name, stop, f"packet record header truncated ({size - stop} of 16 bytes)"
        )
    elif code == 2:
        damage = CaptureFileError(
            name, stop, f"impossible captured length {value} (corrupt record header)"
        )
    elif code == 3:
        damage = CaptureFileError(
            name, stop, f"packet record truncated ({size - stop - 16} of {value} bytes)"
        )
    return Frames(
        image=image,
        record_offset=record_offset,
        data_offset=data_offset,
        caplen=caplen,
        wirelen=wirelen,
        ts_ns=ts_ns,
        linktype=np.full(count, linktype, dtype=np.int64),
        damage=damage,
        interfaces=[linktype],
    )


@_jit
def _u32(img: Any, p: int, big: bool) -> int:
    if big:
        return (
            (int(img[p]) << 24) | (int(img[p + 1]) << 16) | (int(img[p + 2]) << 8) | int(img[p + 3])
        )
    return (int(img[p + 3]) << 24) | (int(img[p + 2]) << 16) | (int(img[p + 1]) << 8) | int(img[p])


@_jit
def _u16(img: Any, p: int, big: bool) -> int:
    if big:
        return (int(img[p]) << 8) | int(img[p + 1])
    return (int(img[p + 1]) << 8) | int(img[p])


@_jit
def _pcap_walk(
    img: Any, size: int, big: bool, max_record: int, tick_ns: int, cols: Any
) -> tuple[int, int, int, int]:
    """Fill columns (record offset, data offset, captured length, wire length, time in ns)
    of pcap records while they fit in ``cols``; count the rest.

    Returns (count, stop offset, damage code, value): 0 none, 1 header truncated,
    2 impossible length (value = length), 3 record truncated (value = length).
    """
    room = cols.shape[1]
    n = 0
    off = 24
    while off < size:
        if off + 16 > size:
            return n, off, 1, 0
        incl = _u32(img, off + 8, big)
        if incl > max_record:
            return n, off, 2, incl
        if off + 16 + incl > size:
            return n, off, 3, incl
        if n < room:
            cols[0, n] = off
            cols[1, n] = off + 16
            cols[2, n] = incl
            cols[3, n] = _u32(img, off + 12, big)
            cols[4, n] = _u32(img, off, big) * 1_000_000_000 + _u32(img, off + 4, big) * tick_ns
        n += 1
        off += 16 + incl
    return n, off, 0, 0


def _tsresol_ns(options: bytes, order: str) -> tuple[int, int]:
    """Return (multiplier, divisor) turning if_tsresol units into nanoseconds."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1 and pos + 5 <= len(options):
            resol = options[pos + 4]
            if resol & 0x80:
                return 1_000_000_000, 1 << (resol & 0x7F)
            exp = resol & 0x7F
            if exp <= 9:
                return 10 ** (9 - exp), 1
            return 1, 10 ** (exp - 9)
        pos += 4 + ((length + 3) & ~3)
    return 1_000, 1


def _walk_pcapng(name: str, image: Image, size: int) -> Frames:
    img = np.frombuffer(image, dtype=np.uint8)
    empty_rows = np.empty((0, 6), dtype=np.int64)
    empty_idbs = np.empty((0, 2), dtype=np.int64)
    count, n_idb, stop, code, value = _pcapng_walk(
        img, size, MAX_RECORD + 64, empty_rows, empty_idbs
    )
    rows = np.empty((count, 6), dtype=np.int64)
    idbs = np.empty((n_idb, 2), dtype=np.int64)
    _pcapng_walk(img, size, MAX_RECORD + 64, rows, idbs)
    links: list[int] = []
    mult = np.ones(max(n_idb, 1), dtype=np.int64)
    div = np.ones(max(n_idb, 1), dtype=np.int64)
    for k, (off, big) in enumerate(idbs.tolist()):
        order = ">" if big else "<"
        blen = struct.unpack_from(order + "I", image, off + 4)[0]
        links.append(struct.unpack_from(order + "H", image, off + 8)[0])
        mult[k], div[k] = _tsresol_ns(bytes(image[off + 16 : off + blen - 4]), order)
    link_of = np.array(links or [0], dtype=np.int64)
    iface = rows[:, 5]
    messages = {
        1: f"block header truncated ({size - stop} bytes)",
        2: "section header with a bad byte-order magic",
        3: f"impossible block length {value}",
        4: f"block truncated ({size - stop} of {value} bytes)",
        5: f"packet block names interface {value}, which was never described",
        6: f"captured length {value} runs past the end of its block",
        7: "simple packet block before any interface",
    }
    damage = CaptureFileError(name, stop, messages[code]) if code else None
    return Frames(
        image=image,
        record_offset=rows[:, 0].copy(),
        data_offset=rows[:, 1].copy(),
        caplen=rows[:, 2].copy(),
        wirelen=rows[:, 3].copy(),
        ts_ns=rows[:, 4] * mult[iface] // div[iface],
        linktype=link_of[iface],
        damage=damage,
        interfaces=links,
    )


@_jit
def _pcapng_walk(
    img: Any, size: int, max_block: int, rows: Any, idbs: Any
) -> tuple[int, int, int, int, int]:
    """Count (empty arrays) or fill packet rows and interface-block offsets of a pcapng file.

    Rows: (block offset, data offset, captured length, wire length, raw timestamp, global
    interface index). Returns (rows, interface blocks, stop offset, damage code, value).
    """
    fill = rows.shape[0] > 0 or idbs.shape[0] > 0
    n = 0
    n_idb = 0
    big = False
    base = 0
    in_section = 0
    off = 0
    while off < size:
        if off + 12 > size:
            return n, n_idb, off, 1, 0
        btype = _u32(img, off, False)
        if btype == 0x0A0D0D0A:
            bom = _u32(img, off + 8, False)
            if bom == 0x1A2B3C4D:
                big = False
            elif bom == 0x4D3C2B1A:
                big = True
            else:
                return n, n_idb, off, 2, 0
            base = n_idb
            in_section = 0
        else:
            btype = _u32(img, off, big)
        blen = _u32(img, off + 4, big)
        if blen < 12 or blen % 4 != 0 or blen > max_block:
            return n, n_idb, off, 3, blen
        if off + blen > size:
            return n, n_idb, off, 4, blen
        body = off + 8
        if btype == 1:
            if fill:
                idbs[n_idb, 0] = off
                idbs[n_idb, 1] = 1 if big else 0
            n_idb += 1
            in_section += 1
        elif btype in (2, 6):
            if_id = _u32(img, body, big) if btype == 6 else _u16(img, body, big)
            cap = _u32(img, body + 12, big)
            if if_id >= in_section:
                return n, n_idb, off, 5, if_id
            if body + 20 + cap > off + blen - 4:
                return n, n_idb, off, 6, cap
            if fill:
                rows[n, 0] = off
                rows[n, 1] = body + 20
                rows[n, 2] = cap
                rows[n, 3] = _u32(img, body + 16, big)
                rows[n, 4] = (_u32(img, body + 4, big) << 32) | _u32(img, body + 8, big)
                rows[n, 5] = base + if_id
            n += 1
        elif btype == 3:
            if in_section == 0:
                return n, n_idb, off, 7, 0
            orig = _u32(img, body, big)
            if fill:
                rows[n, 0] = off
                rows[n, 1] = body + 4
                rows[n, 2] = min(orig, blen - 16)
                rows[n, 3] = orig
                rows[n, 4] = 0
                rows[n, 5] = base
            n += 1
        off += blen
    return n, n_idb, off, 0, 0
