"""First-payload reassembly of every flow direction of a capture in one compiled pass.

Input: the payload segments the flow scan picked (:mod:`netweave.capture.flowtable`),
grouped by flow direction, in packet order within a group. Per group the pass takes the
contiguous stream start (segments ordered by relative sequence number, retransmitted
bytes skipped) for as long as the stream can still carry a TLS hello, and writes the
bytes into one output buffer; Python only slices that buffer into the records.

Rules (the same for every backend's notion of a first payload, see
:mod:`netweave.capture.events`):

* UDP, or a TCP direction with one picked segment: the segment's captured bytes, at most
  ``limit``; truncated when the wire held more (TCP also: when ``limit`` cut it).
* TCP with several segments: segments with a relative sequence number below 2**31 in
  sequence order; a gap, ``limit`` reached, or a snaplen-cut segment ends the stream
  (truncated); reassembly stops without truncation once the bytes so far can no longer
  carry a hello (:func:`hello_may_follow`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from netweave.capture.compiled import jit

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

HTTP_HEAD_LIMIT = 4096
"""Bytes searched for the end of an HTTP CONNECT request or response head."""

_CONNECT = (67, 79, 78, 78, 69, 67, 84, 32)  # b"CONNECT "
_HTTP = (72, 84, 84, 80, 47)  # b"HTTP/"
_TLS_HANDSHAKE = 0x16
_TLS_CCS = 0x14


@dataclass(frozen=True, slots=True)
class Reassembled:
    """Per group: where its bytes are, last packet used, truncation, segment map.

    A group made of one segment is not copied: its bytes are ``img[start:start + length]``
    (``in_image``); the others are ``data[start:start + length]``.
    """

    data: npt.NDArray[np.uint8]  # reassembled groups' bytes, back to back
    in_image: Mask
    start: I64
    length: I64
    last: I64  # packet index of the last segment used
    truncated: Mask
    seg_first: I64  # per group: first entry in seg_end/seg_frame
    seg_count: I64
    seg_end: I64  # stream offset where a segment's bytes end
    seg_frame: I64  # 1-based frame of that segment


def reassemble(
    img: npt.NDArray[np.uint8],
    members: I64,
    seq: I64,
    offset: I64,
    captured: I64,
    wire: I64,
    bounds: I64,
    udp: Mask,
    limit: int,
) -> Reassembled:
    """Reassemble the groups ``members[bounds[g]:bounds[g + 1]]`` (packet indices)."""
    groups = int(bounds.shape[0]) - 1
    total = np.add.reduceat(captured, bounds[:-1]) if groups else np.zeros(0, np.int64)
    scratch = np.empty(int(total.max()) if groups else 0, dtype=np.uint8)
    several = np.diff(bounds) > 1 if groups else np.zeros(0, np.bool_)
    out = np.empty(int(np.minimum(total[several], limit).sum()), dtype=np.uint8)
    start = np.zeros(groups, dtype=np.int64)
    in_image = np.zeros(groups, dtype=np.bool_)
    length = np.zeros(groups, dtype=np.int64)
    last = np.zeros(groups, dtype=np.int64)
    truncated = np.zeros(groups, dtype=np.bool_)
    seg_first = np.zeros(groups, dtype=np.int64)
    seg_count = np.zeros(groups, dtype=np.int64)
    seg_end = np.zeros(members.shape[0], dtype=np.int64)
    seg_frame = np.zeros(members.shape[0], dtype=np.int64)
    used = _reassemble(
        img, members, seq, offset, captured, wire, bounds, udp, limit, scratch, out,
        start, in_image, length, last, truncated, seg_first, seg_count, seg_end, seg_frame,
    )  # fmt: skip
    return Reassembled(out[:used], in_image, start, length, last, truncated, seg_first,
                       seg_count, seg_end, seg_frame)  # fmt: skip


@jit
def hello_may_follow(buf: Any, n: int) -> bool:
    """Whether more stream bytes after ``buf[:n]`` could still carry a TLS hello.

    True while the stream is TLS handshake and change-cipher-spec records (a hello, a
    HelloRetryRequest) or an unfinished HTTP CONNECT exchange; False once it reaches
    application data, an alert, or bytes that are neither.
    """
    pos = 0
    if _starts(buf, n, _CONNECT) or _starts(buf, n, _HTTP):
        head = -1
        for k in range(min(n, HTTP_HEAD_LIMIT) - 3):
            if buf[k] == 13 and buf[k + 1] == 10 and buf[k + 2] == 13 and buf[k + 3] == 10:
                head = k
                break
        if head < 0:
            return n < HTTP_HEAD_LIMIT
        pos = head + 4
    while pos + 5 <= n:
        if (buf[pos] != _TLS_HANDSHAKE and buf[pos] != _TLS_CCS) or buf[pos + 1] != 0x03:
            return False
        pos += 5 + ((int(buf[pos + 3]) << 8) | int(buf[pos + 4]))
    return True  # handshake records so far (or too few bytes to tell)


@jit
def _starts(buf: Any, n: int, prefix: Any) -> bool:
    k = 0
    while k < len(prefix) and k < n and buf[k] == prefix[k]:
        k += 1
    return k == len(prefix)


@jit
def _reassemble(
    img: Any, members: Any, seq: Any, offset: Any, captured: Any, wire: Any, bounds: Any,
    udp: Any, limit: int, scratch: Any, out: Any, start: Any, in_image: Any, length: Any,
    last: Any, truncated: Any, seg_first: Any, seg_count: Any, seg_end: Any, seg_frame: Any,
) -> int:  # fmt: skip
    order = np.empty(64, dtype=np.int64)
    rels = np.empty(64, dtype=np.int64)
    used = 0
    n_seg = 0
    for g in range(bounds.shape[0] - 1):
        a = bounds[g]
        b = bounds[g + 1]
        start[g] = used
        seg_first[g] = n_seg
        if udp[g] or b - a == 1:
            take = min(captured[a], limit)
            start[g] = offset[a]  # left where it is
            in_image[g] = True
            length[g] = take
            last[g] = members[a]
            if udp[g]:
                truncated[g] = wire[a] > take
            else:
                truncated[g] = captured[a] < wire[a] or captured[a] > limit
            seg_end[n_seg] = take
            seg_frame[n_seg] = members[a] + 1
            n_seg += 1
        else:
            if b - a > order.shape[0]:
                order = np.empty(b - a, dtype=np.int64)
                rels = np.empty(b - a, dtype=np.int64)
            k = 0
            for j in range(a, b):
                rel = (seq[j] - seq[a]) & 0xFFFFFFFF
                if rel < 0x80000000:
                    # insertion by (relative sequence, packet order)
                    t = k
                    while t > 0 and rels[t - 1] > rel:
                        rels[t] = rels[t - 1]
                        order[t] = order[t - 1]
                        t -= 1
                    rels[t] = rel
                    order[t] = j
                    k += 1
            have = 0
            used_last = members[a]
            cut = False
            for t in range(k):
                j = order[t]
                rel = rels[t]
                if rel > have or have >= limit:
                    cut = True
                    break
                if rel + captured[j] <= have:
                    continue  # a retransmission of bytes already held
                lo = offset[j] + have - rel
                hi = offset[j] + captured[j]
                scratch[have : have + hi - lo] = img[lo:hi]
                have += hi - lo
                used_last = members[j]
                seg_end[n_seg] = have
                seg_frame[n_seg] = members[j] + 1
                n_seg += 1
                if captured[j] < wire[j]:
                    cut = True  # snaplen cut this segment: nothing after it lines up
                    break
                if not hello_may_follow(scratch, have):
                    break
            truncated[g] = cut or have > limit
            take = min(have, limit)
            out[used : used + take] = scratch[:take]
            used += take
            last[g] = used_last
            length[g] = used - start[g]
        seg_count[g] = n_seg - seg_first[g]
    return used
