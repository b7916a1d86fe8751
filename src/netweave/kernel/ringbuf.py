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

from netweave.kernel.errors import ObjectError
from netweave.kernel.maps import RINGBUF_TYPE, Map

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


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

    def drain_block(self) -> tuple[bytes, list[int], list[int]]:
        """Every record ready now as one copied block: ``(block, offsets, sizes)``.

        One copy of the ready region and a walk over the record headers; callers slice or
        gather records out of ``block`` (numpy does it for a whole batch of one size).
        """
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        if cons >= prod:
            return b"", [], []
        start = cons & self._mask
        block = bytes(self._data[start : start + (prod - cons)])
        words = memoryview(block).cast("I")  # record headers are 8-byte aligned
        offsets: list[int] = []
        sizes: list[int] = []
        add_offset, add_size = offsets.append, sizes.append
        at, end, flags = 0, prod - cons, BUSY | DISCARD
        while at < end:
            hdr = words[at >> 2]
            if hdr & flags:
                if hdr & BUSY:
                    break
            else:
                add_offset(at + HEADER)
                add_size(hdr)
            at += ((hdr & ~flags) + HEADER + 7) & ~7
        _U64.pack_into(self._cons, 0, cons + at)
        self.received += len(offsets)
        return block, offsets, sizes

    def ready_block(self) -> bytes:
        """A copy of the ready region, records and headers as the kernel wrote them.

        For callers that walk the headers themselves (in compiled code): they hand the
        number of bytes walked and of records taken to :meth:`release`. The region may end
        with a record the kernel is still writing (``BUSY``), where the walk must stop.
        """
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        if cons >= prod:
            return b""
        start = cons & self._mask
        return bytes(self._data[start : start + (prod - cons)])

    def release(self, walked: int, records: int) -> None:
        """Give back ``walked`` bytes of the ring after :meth:`ready_block` (``records`` read)."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        _U64.pack_into(self._cons, 0, cons + walked)
        self.received += records

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
