"""The compiled first-payload reassembly follows the rules written out plainly here.

The reference below is the straightforward Python statement of the rules in
``netweave.capture.reassembly`` (segments in relative sequence order, retransmitted bytes
skipped, stop at a gap, at the limit, at a snaplen cut, or once no TLS hello can follow);
random segment groups must come out the same from both.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.reassembly import reassemble

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 64


def _may_follow(buf: bytes) -> bool:
    pos = 0
    if buf.startswith((b"CONNECT ", b"HTTP/")):
        end = buf.find(b"\r\n\r\n", 0, 4096)
        if end < 0:
            return len(buf) < 4096
        pos = end + 4
    while pos + 5 <= len(buf):
        if buf[pos] not in (0x16, 0x14) or buf[pos + 1] != 0x03:
            return False
        pos += 5 + ((buf[pos + 3] << 8) | buf[pos + 4])
    return True


def _reference(
    image: bytes, group: list[tuple[int, int, int, int, int]], udp: bool, limit: int
) -> tuple[bytes, int, bool, tuple[tuple[int, int], ...]]:
    first = group[0][0]
    if udp or len(group) == 1:
        _i, _seq, off, cap, wire = group[0]
        data = image[off : off + min(cap, limit)]
        truncated = wire > len(data) if udp else (cap < wire or cap > limit)
        return data, first, truncated, ((len(data), first + 1),)
    base = group[0][1]
    pieces = sorted(
        ((seq - base) & 0xFFFFFFFF, i, off, cap, wire)
        for i, seq, off, cap, wire in group
        if (seq - base) & 0xFFFFFFFF < 0x80000000
    )
    buf = b""
    last = first
    segments: list[tuple[int, int]] = []
    cut = False
    for rel, i, off, cap, wire in pieces:
        if rel > len(buf) or len(buf) >= limit:
            cut = True
            break
        if rel + cap <= len(buf):
            continue
        buf += image[off + len(buf) - rel : off + cap]
        last = i
        segments.append((len(buf), i + 1))
        if cap < wire:
            cut = True
            break
        if not _may_follow(buf):
            break
    return buf[:limit], last, cut or len(buf) > limit, tuple(segments)


STARTS = (b"\x16\x03\x01\x00\x08", b"\x17\x03\x03\x00\x02", b"\x14\x03\x03\x00\x01\x01",
          b"CONNECT a:443 HTTP/1.1\r\n", b"\r\n", b"GET / HTTP/1.1\r\n", b"x")  # fmt: skip
segment = st.tuples(
    st.integers(0, 40),  # sequence offset from the first segment
    st.lists(st.sampled_from(STARTS), min_size=1, max_size=4).map(b"".join),
    st.integers(0, 6),  # bytes the snaplen cut off
)
group = st.tuples(st.booleans(), st.integers(0, 2**32 - 1),
                  st.lists(segment, min_size=1, max_size=6))  # fmt: skip


@SETTINGS
@given(st.lists(group, min_size=1, max_size=6))
def test_compiled_reassembly_follows_the_rules(
    groups: list[tuple[bool, int, list[tuple[int, bytes, int]]]],
) -> None:
    image = bytearray()
    rows: list[list[tuple[int, int, int, int, int]]] = []
    index = 0
    for _udp, base, segments in groups:
        row = []
        for rel, data, lost in segments:
            row.append((index, (base + rel) & 0xFFFFFFFF, len(image), len(data), len(data) + lost))
            image += data
            index += 1
        rows.append(row)
    flat = [s for row in rows for s in row]
    bounds = np.cumsum([0] + [len(row) for row in rows]).astype(np.int64)
    img = np.frombuffer(bytes(image), dtype=np.uint8)
    got = reassemble(
        img,
        np.array([s[0] for s in flat], dtype=np.int64),
        np.array([s[1] for s in flat], dtype=np.int64),
        np.array([s[2] for s in flat], dtype=np.int64),
        np.array([s[3] for s in flat], dtype=np.int64),
        np.array([s[4] for s in flat], dtype=np.int64),
        bounds,
        np.array([udp for udp, _b, _s in groups], dtype=np.bool_),
        LIMIT,
    )
    for g, (row, (udp, _base, _segments)) in enumerate(zip(rows, groups, strict=True)):
        data, last, truncated, segs = _reference(bytes(image), row, udp, LIMIT)
        start, length = int(got.start[g]), int(got.length[g])
        source = img if got.in_image[g] else got.data  # one segment is left where it is
        assert source[start : start + length].tobytes() == data
        assert int(got.last[g]) == last
        assert bool(got.truncated[g]) == truncated
        a, n = int(got.seg_first[g]), int(got.seg_count[g])
        assert tuple(zip(got.seg_end[a : a + n].tolist(), got.seg_frame[a : a + n].tolist(),
                         strict=True)) == segs  # fmt: skip
