"""``RingBuffer``: read a BPF ring buffer map directly through mmap, woken by epoll.

Records come out in batches (every record ready at that moment, up to a limit) rather than
one ctypes callback each, which is what lets Python keep up with hundreds of thousands of
events per second. Layout as in the kernel and libbpf: a consumer-position page (read
write), then the producer-position page followed by the data area mapped twice, so a
record that wraps around is still contiguous.
"""

from __future__ import annotations

import mmap
import select
import struct

import numpy as np
import numpy.typing as npt

from netweave.capture.compiled import jit
from netweave.kernel.errors import ObjectError
from netweave.kernel.maps import RINGBUF_TYPE, Map

BUSY = 1 << 31
DISCARD = 1 << 30
LENGTH = DISCARD - 1
HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


@jit
def _walk(
    words: npt.NDArray[np.uint32], offsets: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]
) -> tuple[int, int]:
    """Walk record headers from the block's start until its end or a busy record.

    Fills ``offsets`` (of each record's data) and ``sizes`` for every record not discarded;
    returns how many, and the byte position the walk stopped at (the new consumer position).
    """
    at = 0
    count = 0
    end = len(words) * 4
    while at < end:
        hdr = int(words[at >> 2])
        if hdr & BUSY:
            break
        size = hdr & LENGTH
        if not hdr & DISCARD:
            offsets[count] = at + HEADER
            sizes[count] = size
            count += 1
        at += (size + HEADER + 7) & ~7
    return count, at


class RingBuffer:
    """Consumer of one ring-buffer map.

    ``drops`` is an optional per-CPU array whose key 0 the kernel program increments when
    ``bpf_ringbuf_reserve`` fails; :attr:`dropped` sums it.
    """

    def __init__(self, ring: Map, drops: Map | None = None) -> None:
        if ring.type != RINGBUF_TYPE:
            raise ObjectError(f"map {ring.name} is not a ring buffer (type {ring.type})")
        page = mmap.PAGESIZE
        self.size = ring.max_entries
        self._mask = self.size - 1
        self._cons = mmap.mmap(ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(
            ring.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._prod)[page:]
        self._epoll = select.epoll()
        self._epoll.register(ring.fd, select.EPOLLIN)
        self._drops = drops
        self.received = 0
        none = np.zeros(0, np.int64)
        _walk(np.zeros(0, np.uint32), none, none)  # compile (or load) the walk now, not mid-drain

    def fileno(self) -> int:
        """An epoll fd that becomes readable when records are waiting."""
        return self._epoll.fileno()

    def drain(self, limit: int = 1 << 20) -> list[bytes]:
        """Every record ready now (at most ``limit``), oldest first, without waiting."""
        out: list[bytes] = []
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        data, mask = self._data, self._mask
        while cons < prod and len(out) < limit:
            off = cons & mask
            hdr = _U32.unpack_from(data, off)[0]
            if hdr & BUSY:
                break
            n = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                out.append(bytes(data[off + HEADER : off + HEADER + n]))
            cons += (n + HEADER + 7) & ~7
        _U64.pack_into(self._cons, 0, cons)
        self.received += len(out)
        return out

    def drain_block(self) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Every record ready now as one copied block: ``(block, offsets, sizes)``.

        One copy of the ready region and a compiled walk over the record headers; callers
        slice or gather records out of ``block`` (numpy does it for a whole batch of one size).
        """
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        if cons >= prod:
            none = np.zeros(0, np.int64)
            return b"", none, none
        start = cons & self._mask
        block = bytes(self._data[start : start + (prod - cons)])
        words = np.frombuffer(block, np.uint32)  # record headers are 8-byte aligned
        offsets = np.empty(len(block) // HEADER, np.int64)
        sizes = np.empty(len(block) // HEADER, np.int64)
        count, at = _walk(words, offsets, sizes)
        _U64.pack_into(self._cons, 0, cons + at)
        self.received += count
        return block, offsets[:count], sizes[:count]

    def poll_wait(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds (None: forever) until records may be ready."""
        self._epoll.poll(-1 if timeout is None else timeout)

    def poll(self, timeout: float | None = None, limit: int = 1 << 20) -> list[bytes]:
        """Wait up to ``timeout`` seconds (None: forever) for records, then drain them."""
        batch = self.drain(limit)
        if batch:
            return batch
        self._epoll.poll(-1 if timeout is None else timeout)
        return self.drain(limit)

    @property
    def dropped(self) -> int:
        """Records the kernel could not reserve space for, summed over CPUs."""
        if self._drops is None:
            return 0
        raw = self._drops.lookup(b"\0\0\0\0") or b""
        return sum(v for (v,) in struct.iter_unpack("<Q", raw))

    def close(self) -> None:
        """Unmap the ring and close the epoll fd."""
        self._data.release()
        self._prod.close()
        self._cons.close()
        self._epoll.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
