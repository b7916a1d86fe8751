"""``Map``: one kernel map, from a loaded object or re-opened from its pin."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from ctypes import Structure, byref, c_char, c_uint32
from pathlib import Path

from netweave.audit import default_log
from netweave.kernel._libbpf import BatchOpts, errno_of, lib
from netweave.kernel.errors import KernelError

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
PERCPU_TYPES = frozenset(
    {5, 6, 10, 21}
)  # percpu hash/array, lru percpu hash, percpu cgroup storage
RINGBUF_TYPE = 27


class MapInfo(Structure):
    """The leading fields of ``struct bpf_map_info``."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * 16),
    ]


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


NCPUS = _possible_cpus()


class Map:
    """A kernel map reached through a file descriptor.

    Keys and values are ``bytes`` of the map's own sizes; per-CPU maps take and return
    one value per possible CPU, each padded to 8 bytes, concatenated.
    """

    def __init__(self, fd: int, *, owned: bool, label: str = "") -> None:
        info = MapInfo()
        size = c_uint32(ctypes.sizeof(info))
        ret = lib.bpf_obj_get_info_by_fd(fd, byref(info), byref(size))
        if ret:
            raise KernelError(errno_of(ret), f"map info of fd {fd}")
        self.fd = fd
        self._owned = owned
        self.id: int = int(info.id)
        self.name = label or info.name.decode()
        self.type: int = int(info.type)
        self.key_size: int = int(info.key_size)
        self.value_size: int = int(info.value_size)
        self.max_entries: int = int(info.max_entries)
        self.flags: int = int(info.map_flags)
        per_cpu = info.type in PERCPU_TYPES
        self.value_bytes = ((info.value_size + 7) // 8 * 8) * NCPUS if per_cpu else info.value_size

    @classmethod
    def from_pin(cls, path: Path | str) -> Map:
        """Re-open a pinned map; the returned ``Map`` owns (and closes) its descriptor."""
        fd = lib.bpf_obj_get(str(path).encode())
        if fd < 0:
            raise KernelError(errno_of(fd), f"open pinned map {path}")
        return cls(fd, owned=True)

    def close(self) -> None:
        """Close the descriptor if this ``Map`` opened it; the kernel map lives on while used."""
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None when there is none."""
        value = ctypes.create_string_buffer(max(self.value_bytes, 1))
        ret = lib.bpf_map_lookup_elem(self.fd, self._key(key), value)
        if ret:
            err = errno_of(ret)
            if err == 2:  # ENOENT
                return None
            raise KernelError(err, f"lookup in map {self.name}")
        return value.raw[: self.value_bytes]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY, *, audit: bool = True) -> None:
        """Store ``value`` under ``key`` (recorded in the audit log)."""
        if len(value) != self.value_bytes:
            raise ValueError(
                f"map {self.name}: value is {len(value)} bytes, needs {self.value_bytes}"
            )
        ret = lib.bpf_map_update_elem(self.fd, self._key(key), value, flags)
        if ret:
            raise KernelError(errno_of(ret), f"update of map {self.name}")
        if audit:
            default_log().record("map_update", self.name, key=key.hex(), map_id=self.id)

    def delete(self, key: bytes, *, audit: bool = True) -> bool:
        """Remove ``key``; False when it was not there (recorded in the audit log)."""
        ret = lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret:
            err = errno_of(ret)
            if err == 2:
                return False
            raise KernelError(err, f"delete from map {self.name}")
        if audit:
            default_log().record("map_delete", self.name, key=key.hex(), map_id=self.id)
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order (entries may change while iterating)."""
        cur: bytes | None = None
        nxt = ctypes.create_string_buffer(max(self.key_size, 1))
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret:
                err = errno_of(ret)
                if err == 2:
                    return
                raise KernelError(err, f"iterate map {self.name}")
            cur = nxt.raw[: self.key_size]
            yield cur

    def items(self, batch: int = 4096) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), read in batches where the kernel supports it."""
        try:
            yield from self._items_batched(batch)
        except KernelError as e:
            if e.errno not in (22, 95, 524):  # EINVAL/EOPNOTSUPP/ENOTSUPP: no batch op
                raise
            for key in self.keys():
                value = self.lookup(key)
                if value is not None:
                    yield key, value

    def _items_batched(self, batch: int) -> Iterator[tuple[bytes, bytes]]:
        keys = ctypes.create_string_buffer(self.key_size * batch)
        values = ctypes.create_string_buffer(self.value_bytes * batch)
        token_in = ctypes.create_string_buffer(max(self.key_size, 8))
        token_out = ctypes.create_string_buffer(max(self.key_size, 8))
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        first = True
        while True:
            count = c_uint32(batch)
            ret = lib.bpf_map_lookup_batch(
                self.fd,
                None if first else token_in,
                token_out,
                keys,
                values,
                byref(count),
                byref(opts),
            )
            err = errno_of(ret) if ret else 0
            if err and err != 2:
                raise KernelError(err, f"batch lookup in map {self.name}")
            kraw, vraw = keys.raw, values.raw
            for i in range(count.value):
                yield (
                    kraw[i * self.key_size : (i + 1) * self.key_size],
                    vraw[i * self.value_bytes : (i + 1) * self.value_bytes],
                )
            if err == 2:
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def update_batch(self, keys: bytes, values: bytes, *, flags: int = BPF_ANY) -> int:
        """Store many entries at once (keys and values packed end to end); one audit entry."""
        count = len(keys) // self.key_size if self.key_size else 0
        if count * self.key_size != len(keys) or count * self.value_bytes != len(values):
            raise ValueError(
                f"map {self.name}: {len(keys)} key bytes and {len(values)} value bytes "
                f"are not {count} whole entries"
            )
        done = 0
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts), elem_flags=flags)
        step = 1 << 16
        while done < count:
            n = min(step, count - done)
            cnt = c_uint32(n)
            kbuf = ctypes.c_char_p(keys[done * self.key_size : (done + n) * self.key_size])
            vbuf = ctypes.c_char_p(values[done * self.value_bytes : (done + n) * self.value_bytes])
            ret = lib.bpf_map_update_batch(self.fd, kbuf, vbuf, byref(cnt), byref(opts))
            if ret:
                raise KernelError(
                    errno_of(ret),
                    f"batch update of map {self.name} "
                    f"(after {done + cnt.value} of {count} entries)",
                )
            done += n
        default_log().record("map_update", self.name, entries=count, map_id=self.id)
        return count

    def delete_batch(self, keys: bytes) -> int:
        """Remove many keys at once; one audit entry. Keys that are missing fail the call."""
        count = len(keys) // self.key_size
        cnt = c_uint32(count)
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        ret = lib.bpf_map_delete_batch(self.fd, ctypes.c_char_p(keys), byref(cnt), byref(opts))
        if ret:
            raise KernelError(errno_of(ret), f"batch delete from map {self.name}")
        default_log().record("map_delete", self.name, entries=count, map_id=self.id)
        return count

    def pin(self, path: Path | str) -> None:
        """Pin the map at ``path`` on bpffs (recorded in the audit log)."""
        ret = lib.bpf_obj_pin(self.fd, str(path).encode())
        if ret:
            raise KernelError(errno_of(ret), f"pin map {self.name} at {path}")
        default_log().record("pin", str(path), self.name, map_id=self.id)

    def freeze(self) -> None:
        """Make the map read-only to every syscall writer from now on; programs still read it."""
        ret = lib.bpf_map_freeze(self.fd)
        if ret:
            raise KernelError(errno_of(ret), f"freeze map {self.name}")
        default_log().record("map_freeze", self.name, map_id=self.id)

    def _key(self, key: bytes) -> bytes:
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key is {len(key)} bytes, needs {self.key_size}")
        return key


def unpin(path: Path | str) -> None:
    """Remove a pin (the object lives on while anything else holds it); audited."""
    Path(path).unlink()
    default_log().record("unpin", str(path))
