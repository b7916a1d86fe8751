"""pcap and pcapng container walking: where each packet's bytes start, how long, when.

Only the record headers are read here, one light step per record; the packets themselves
are decoded in batch by :mod:`netweave.capture.decode`. Damage (a bad magic number, a
record running past the end of the file, an impossible length) stops the walk: what was
read before is kept and the damage is reported as a :class:`CaptureFileError` naming the
file and the byte offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_RECORD = 0x400000
"""Largest packet record accepted (4 MiB); anything larger means a corrupt file."""

PAD = 256
"""Zero bytes appended to the file image so fixed-size header reads never run off the end."""

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
    """Where every packet of a capture lies in ``image`` (the file plus ``PAD`` zero bytes)."""

    image: bytearray
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
            handle.seek(0)
            image = bytearray(size + PAD)
            got = handle.readinto(memoryview(image)[:size])
    except OSError as exc:
        raise CaptureFileError(name, 0, f"cannot read the file ({exc.strerror})") from exc
    if got != size:
        raise CaptureFileError(name, got, "short read")
    if size < 4:
        raise CaptureFileError(name, 0, "file too short to be a pcap or pcapng capture")
    magic = bytes(image[:4])
    if magic in PCAP_MAGICS:
        return _walk_pcap(name, image, size)
    if struct.unpack_from("<I", image, 0)[0] == PCAPNG_SHB:
        return _walk_pcapng(name, image, size)
    raise CaptureFileError(
        name, 0, f"not a pcap or pcapng file (magic {magic.hex()}); expected a capture file"
    )


def _frames(
    image: bytearray,
    rows: list[tuple[int, int, int, int, int, int]],
    damage: CaptureFileError | None,
    interfaces: list[int],
) -> Frames:
    table = np.array(rows, dtype=np.int64).reshape(-1, 6)
    return Frames(
        image=image,
        record_offset=table[:, 0].copy(),
        data_offset=table[:, 1].copy(),
        caplen=table[:, 2].copy(),
        wirelen=table[:, 3].copy(),
        ts_ns=table[:, 4].copy(),
        linktype=table[:, 5].copy(),
        damage=damage,
        interfaces=interfaces,
    )


def _walk_pcap(name: str, image: bytearray, size: int) -> Frames:
    order, tick_ns = PCAP_MAGICS[bytes(image[:4])]
    if size < 24:
        raise CaptureFileError(name, 0, f"pcap global header truncated ({size} of 24 bytes)")
    _vmaj, _vmin, _zone, _sig, _snap, network = struct.unpack_from(order + "HHiIII", image, 4)
    linktype = network & 0x0FFFFFFF
    header = struct.Struct(order + "IIII")
    unpack = header.unpack_from
    offsets: list[int] = []
    append = offsets.append
    damage: CaptureFileError | None = None
    off = 24
    while off < size:
        if off + 16 > size:
            damage = CaptureFileError(
                name, off, f"packet record header truncated ({size - off} of 16 bytes)"
            )
            break
        _sec, _frac, incl, _orig = unpack(image, off)
        if incl > MAX_RECORD:
            damage = CaptureFileError(
                name, off, f"impossible captured length {incl} (corrupt record header)"
            )
            break
        if off + 16 + incl > size:
            damage = CaptureFileError(
                name, off, f"packet record truncated ({size - off - 16} of {incl} bytes)"
            )
            break
        append(off)
        off += 16 + incl
    count = len(offsets)
    rec = np.array(offsets, dtype=np.int64)
    fields = np.zeros((count, 4), dtype=np.int64)
    if count:
        raw = np.frombuffer(image, dtype=np.uint8)
        idx = rec[:, None] + np.arange(16, dtype=np.int64)[None, :]
        dtype = np.dtype(order + "u4")
        fields = raw[idx].copy().view(dtype).reshape(count, 4).astype(np.int64)
    ts_ns = fields[:, 0] * 1_000_000_000 + fields[:, 1] * tick_ns
    return Frames(
        image=image,
        record_offset=rec,
        data_offset=rec + 16,
        caplen=fields[:, 2].copy(),
        wirelen=fields[:, 3].copy(),
        ts_ns=ts_ns,
        linktype=np.full(count, linktype, dtype=np.int64),
        damage=damage,
        interfaces=[linktype],
    )


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


def _walk_pcapng(name: str, image: bytearray, size: int) -> Frames:
    rows: list[tuple[int, int, int, int, int, int]] = []
    append = rows.append
    interfaces: list[tuple[int, int, int]] = []  # (linktype, mult, div)
    all_links: list[int] = []
    order = "<"
    damage: CaptureFileError | None = None
    off = 0
    while off < size:
        if off + 12 > size:
            damage = CaptureFileError(name, off, f"block header truncated ({size - off} bytes)")
            break
        btype = struct.unpack_from("<I", image, off)[0]
        if btype == PCAPNG_SHB:
            bom = struct.unpack_from("<I", image, off + 8)[0]
            if bom == PCAPNG_BOM:
                order = "<"
            elif bom == 0x4D3C2B1A:
                order = ">"
            else:
                damage = CaptureFileError(name, off, "section header with a bad byte-order magic")
                break
            interfaces = []
        else:
            btype = struct.unpack_from(order + "I", image, off)[0]
        blen = struct.unpack_from(order + "I", image, off + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
            damage = CaptureFileError(name, off, f"impossible block length {blen}")
            break
        if off + blen > size:
            damage = CaptureFileError(name, off, f"block truncated ({size - off} of {blen} bytes)")
            break
        body = off + 8
        if btype == 1:  # interface description
            link = struct.unpack_from(order + "H", image, body)[0]
            mult, div = _tsresol_ns(bytes(image[body + 8 : off + blen - 4]), order)
            interfaces.append((link, mult, div))
            all_links.append(link)
        elif btype in (6, 2):  # enhanced packet / obsolete packet
            if btype == 6:
                if_id, hi, lo, cap, orig = struct.unpack_from(order + "IIIII", image, body)
            else:
                if_id, _drops, hi, lo, cap, orig = struct.unpack_from(order + "HHIIII", image, body)
            data = body + 20
            if if_id >= len(interfaces):
                damage = CaptureFileError(
                    name, off, f"packet block names interface {if_id}, which was never described"
                )
                break
            if data + cap > off + blen - 4:
                damage = CaptureFileError(
                    name, off, f"captured length {cap} runs past the end of its block"
                )
                break
            link, mult, div = interfaces[if_id]
            ts = (hi << 32) | lo
            append((off, data, cap, orig, ts * mult // div, link))
        elif btype == 3:  # simple packet
            if not interfaces:
                damage = CaptureFileError(name, off, "simple packet block before any interface")
                break
            orig = struct.unpack_from(order + "I", image, body)[0]
            cap = min(orig, blen - 16)
            link = interfaces[0][0]
            append((off, body + 4, cap, orig, 0, link))
        off += blen
    return _frames(image, rows, damage, all_links)
