"""The kernel observer's ring-buffer records as the graph's columns, decoded in bulk.

:func:`walk_records` walks a drained region's record headers in compiled code.

:func:`flow_columns` reads, for a whole drained block at once, only the leading bytes of
each record that the graph needs (header, endpoints, and a handshake's sequence number and
TCP flags) and turns addresses into indexes of a per-batch list of address texts, so the
graph can take a batch without one event object per record. Field offsets come from the
ctypes mirrors in :mod:`netweave.capture.kernel_records`, which the observer checks against
the object's BTF at load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from netweave.capture import kernel_records as kr
from netweave.capture.columns import (
    KIND_FLOW_SEEN,
    KIND_HANDSHAKE,
    KIND_PAYLOAD,
    FlowColumns,
    empty_columns,
)
from netweave.capture.compiled import jit
from netweave.capture.events import PROTO_TCP
from netweave.capture.keys import factorize_addresses
from netweave.kernel.ringbuf import BUSY, DISCARD, HEADER

WORD: Final = 8
RING_BUSY: Final = BUSY
RING_DISCARD: Final = DISCARD
RING_LENGTH: Final = DISCARD - 1
RING_HEADER: Final = HEADER
_HS = kr.HandshakeRecord
_EP_AT: Final = kr.HandshakeRecord.ep.offset
_PREFIX_BYTES: Final = max(_HS.seq.offset + 4, _HS.tcp_flags.offset + 2)
_PREFIX_WORDS: Final = -(-_PREFIX_BYTES // WORD)
PREFIX: Final = np.dtype(
    {
        "names": "kind ts src dst sport dport proto version seq flags".split(),
        "formats": ["<u2", "<u8", "V16", "V16", "<u2", "<u2", "u1", "u1", "<u4", "<u2"],
        "offsets": [
            kr.EventHeader.kind.offset,
            kr.EventHeader.ts_ns.offset,
            _EP_AT + kr.Endpoints.src.offset,
            _EP_AT + kr.Endpoints.dst.offset,
            _EP_AT + kr.Endpoints.src_port.offset,
            _EP_AT + kr.Endpoints.dst_port.offset,
            _EP_AT + kr.Endpoints.proto.offset,
            _EP_AT + kr.Endpoints.ip_version.offset,
            _HS.seq.offset,
            _HS.tcp_flags.offset,
        ],
        "itemsize": _PREFIX_WORDS * WORD,
    }
)
"""The leading bytes of every record that the graph reads (handshake fields at their place)."""

# The column kinds are the kernel's record kinds: the kind column is copied as it is.
if (kr.NW_EV_HANDSHAKE, kr.NW_EV_PAYLOAD, kr.NW_EV_FLOW_SEEN) != (
    KIND_HANDSHAKE, KIND_PAYLOAD, KIND_FLOW_SEEN
):  # fmt: skip
    raise ImportError("ring_columns: kernel record kinds and column kinds differ")

AddressText = Callable[[bytes, int], str]
"""``text(raw, version)``: canonical text of a 4- or 16-byte address."""


def flow_columns(
    block: bytes,
    offsets: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int64],
    clock_offset: int,
    text: AddressText,
) -> FlowColumns:
    """Columns of the records at ``offsets`` of ``block`` (well-formed ones, arrival order).

    ``clock_offset`` turns the kernel's monotonic stamps into nanoseconds since the epoch.
    """
    n = len(offsets)
    if n == 0:
        return empty_columns()
    head = _prefixes(block, offsets).view(PREFIX).ravel()
    handshake = kinds == KIND_HANDSHAKE
    version = head["version"].astype(np.int64)
    src, dst, addresses = _address_ids(head["src"], head["dst"], version, text)
    return FlowColumns(
        kind=kinds.astype(np.int64),
        timestamp_ns=head["ts"].astype(np.int64) + clock_offset,
        protocol=np.where(handshake, PROTO_TCP, head["proto"]).astype(np.int64),
        src=src,
        dst=dst,
        src_port=head["sport"].astype(np.int64),
        dst_port=head["dport"].astype(np.int64),
        tcp_flags=np.where(handshake, head["flags"], 0).astype(np.int64),
        seq=np.where(handshake, head["seq"], 0).astype(np.int64),
        addresses=addresses,
    )


def _prefixes(block: bytes, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """The first ``PREFIX.itemsize`` bytes at each offset (zero past the block's end)."""
    width = PREFIX.itemsize
    if len(block) % WORD == 0 and not (offsets % WORD).any():
        rows = _gather(np.frombuffer(block, np.uint64), offsets // WORD, width // WORD)
        as_bytes: npt.NDArray[np.uint8] = rows.view(np.uint8)
        return as_bytes
    raw = np.frombuffer(block, np.uint8)
    index = offsets[:, None] + np.arange(width)
    rows8 = raw[np.minimum(index, len(raw) - 1)]
    rows8[index >= len(raw)] = 0
    return np.ascontiguousarray(rows8)


@jit
def _walk(
    words: npt.NDArray[np.uint32], offsets: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]
) -> tuple[int, int]:
    n = 0
    at = 0
    end = len(words) * 4
    while at < end:
        hdr = int(words[at >> 2])
        if hdr & RING_BUSY:
            break
        size = hdr & RING_LENGTH
        if not hdr & RING_DISCARD:
            offsets[n] = at + RING_HEADER
            sizes[n] = size
            n += 1
        at += (size + RING_HEADER + 7) & ~7
    return n, at


def walk_records(
    block: bytes,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """``(offsets, sizes, walked)`` of the records of a ring buffer's ready region.

    The walk follows the kernel's record headers (length, busy and discard bits) to the
    region's end or to a record still being written; ``walked`` is how many bytes it took.
    """
    words = np.frombuffer(block, np.uint32)  # record headers are 8-byte aligned
    offsets = np.empty(len(block) // RING_HEADER, np.int64)
    sizes = np.empty(len(block) // RING_HEADER, np.int64)
    count, walked = _walk(words, offsets, sizes)
    return offsets[:count], sizes[:count], walked


@jit
def _gather(
    words: npt.NDArray[np.uint64], starts: npt.NDArray[np.int64], width: int
) -> npt.NDArray[np.uint64]:
    """``width`` words from each start (zero past the end)."""
    rows = np.zeros((len(starts), width), np.uint64)
    for i in range(len(starts)):
        for j in range(min(width, len(words) - starts[i])):
            rows[i, j] = words[starts[i] + j]
    return rows


def _address_ids(
    src: npt.NDArray[np.void],
    dst: npt.NDArray[np.void],
    version: npt.NDArray[np.int64],
    text: AddressText,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], tuple[str, ...]]:
    """Index every source and destination into one list of distinct address texts."""
    n = len(src)
    both = np.concatenate((src, dst)).view(np.uint64).reshape(2 * n, 2)
    four = np.concatenate((version, version)) == 4
    ids, first = factorize_addresses(both, four)
    texts = [
        text(both[at].tobytes()[:4], 4) if v4 else text(both[at].tobytes(), 6)
        for at, v4 in zip(first.tolist(), four[first].tolist(), strict=True)
    ]
    return ids[:n], ids[n:], tuple(texts)
