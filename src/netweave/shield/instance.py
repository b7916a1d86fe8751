"""One loaded shield program with the maps of its rule set (a "generation").

A new rule set always gets a new instance: fresh maps filled while nothing reads them,
then a new program bound to them. Two small maps are shared by every instance of an
interface: ``flags`` (dry run) and ``stats`` (totals by outcome).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from ctypes import byref, c_uint32
from pathlib import Path

import numpy as np
import numpy.typing as npt

from netweave.audit import default_log
from netweave.kernel import BpfObject, KernelError, Map
from netweave.kernel._libbpf import BatchOpts, errno_of, lib
from netweave.kernel.info import object_id, object_info
from netweave.kernel.maps import NCPUS
from netweave.shield.compile import Compiled
from netweave.shield.ruleset import RULE_DTYPE
from netweave.shield.trie import ALLOW, ID_MASK

PROGRAM = "xdp_shield"
OBJECT = "shield"
RULE_MAPS = (
    "v4_any", "v4_any24", "v4_l1", "v4_chunks", "v6_rules", "counters", "rules", "base", "v4_last"
)  # fmt: skip
SHARED_MAPS = ("flags", "stats")  # shared by every instance of an interface
# Pin names of maps that are globals of their own section in the object.
SECTION_MAPS = {"v4_last": ".bss.last", "flags": ".data.flags"}
LAST_SLOTS = 512  # NW_SHIELD_LAST_SLOTS: CPUs with a last-source slot
COUNT_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
# struct nw_shield_last: a CPU's last listed IPv4 source and its uncommitted counts.
LAST_DTYPE = np.dtype(
    [("addr", "<u4"), ("mode", "<u4"), ("id", "<u4"), ("pad", "<u4"), ("packets", "<u8"),
     ("bytes", "<u8"), ("line", "<u8", 4)]
)  # fmt: skip


def link_prog_id(fd: int) -> int:
    """The id of the program a bpf_link fd runs (``bpf_link_info.prog_id``)."""
    return int.from_bytes(object_info(fd)[8:12], "little")


def link_ifindex(fd: int) -> int:
    """The interface an XDP link is attached to; 0 once the kernel detached it (the
    interface or its namespace went away). ``bpf_link_info.xdp.ifindex``, offset 16."""
    return int.from_bytes(object_info(fd)[16:20], "little")


def memlock(fd: int) -> int:
    """Bytes the kernel charges for a map (``memlock`` in its fdinfo)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def _mapped(m: Map) -> mmap.mmap:
    elem = (m.value_size + 7) // 8 * 8
    length = (elem * m.max_entries + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    return mmap.mmap(m.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def write_array(m: Map, data: bytes) -> None:
    """Copy ``data`` to the start of a BPF_F_MMAPABLE array map in one go."""
    with _mapped(m) as mm:
        mm[: len(data)] = data


def read_array(m: Map, size: int) -> bytes:
    """The first ``size`` bytes of a BPF_F_MMAPABLE array map."""
    with _mapped(m) as mm:
        return bytes(mm[:size])


def read_percpu_counts(m: Map) -> npt.NDArray[np.uint64]:
    """Per-CPU ``nw_shield_count`` values summed over CPUs: shape (max_entries, 2)."""
    n = m.max_entries
    keys = ctypes.create_string_buffer(4 * n)
    values = ctypes.create_string_buffer(16 * NCPUS * n)
    token = ctypes.create_string_buffer(8)
    count = c_uint32(n)
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    ret = lib.bpf_map_lookup_batch(m.fd, None, token, keys, values, byref(count), byref(opts))
    if ret and errno_of(ret) != 2:  # ENOENT: the whole map fit in this batch
        raise KernelError(errno_of(ret), f"read counters of map {m.name}")
    got = np.frombuffer(values.raw, dtype=np.uint64, count=count.value * NCPUS * 2)
    out = np.zeros((n, 2), dtype=np.uint64)
    out[: count.value] = got.reshape(count.value, NCPUS, 2).sum(axis=1)
    return out


class Instance:
    """A loaded shield program and its rule maps; pinned under a folder of its own."""

    def __init__(self, prog_fd: int, maps: dict[str, Map], obj: BpfObject | None) -> None:
        self.prog_fd = prog_fd
        self.maps = maps
        self.obj = obj
        self.prog_id = object_id(prog_fd)

    @classmethod
    def load(
        cls,
        compiled: Compiled,
        shared: dict[str, Map] | None = None,
        *,
        object_name: str = OBJECT,
        program: str = PROGRAM,
        sizes: dict[str, int] | None = None,
    ) -> Instance:
        """Load a new instance bound to fresh maps holding ``compiled``; raises on failure."""
        obj = BpfObject.embedded(object_name)
        try:
            obj.set_rodata(**compiled.rodata, use_last=int(NCPUS <= LAST_SLOTS))
            n = len(compiled.rules)
            obj.set_max_entries("v4_chunks", max(1, compiled.v4.chunk_count))
            obj.set_max_entries("v6_rules", max(1, compiled.v6_count))
            obj.set_max_entries("rules", n)
            for name in ("counters", "base"):  # enforcing and dry-run counts per rule
                obj.set_max_entries(name, 2 * n)
            for name, entries in (sizes or {}).items():
                obj.set_max_entries(name, entries)
            for name, m in (shared or {}).items():
                obj.reuse_map(SECTION_MAPS.get(name, name), m)
            obj.load()
            maps = {name: obj.map(SECTION_MAPS.get(name, name)) for name in RULE_MAPS}
            write_array(
                maps["v4_any"], np.packbits(compiled.v4.l1 != 0, bitorder="little").tobytes()
            )
            write_array(
                maps["v4_any24"], np.packbits(compiled.v4.any24(), bitorder="little").tobytes()
            )
            write_array(maps["v4_l1"], compiled.v4.l1.tobytes())
            if compiled.v4.chunk_count:
                write_array(maps["v4_chunks"], compiled.v4.chunks.tobytes())
            write_array(maps["rules"], compiled.rules.tobytes())
            if compiled.v6_count:
                maps["v6_rules"].update_batch(compiled.v6_keys, compiled.v6_values)
        except BaseException:
            obj.close()
            raise
        default_log().record(
            "shield_fill", object_name, program, obj.digest,
            rules=n - 1, chunks=compiled.v4.chunk_count, v6_entries=compiled.v6_count,
        )  # fmt: skip
        return cls(obj.programs[program].fd, maps, obj)

    @classmethod
    def from_pins(cls, folder: Path) -> Instance:
        """Re-open an instance pinned by :meth:`pin` (after a restart or in another process)."""
        fd = lib.bpf_obj_get(str(folder / "prog").encode())
        if fd < 0:
            raise KernelError(errno_of(fd), f"open pinned program {folder / 'prog'}")
        maps = {name: Map.from_pin(folder / name) for name in RULE_MAPS}
        return cls(fd, maps, None)

    def pin(self, folder: Path) -> None:
        """Pin the program and rule maps under ``folder`` (created); audited."""
        folder.mkdir(parents=True, exist_ok=True)
        ret = lib.bpf_obj_pin(self.prog_fd, str(folder / "prog").encode())
        if ret:
            raise KernelError(errno_of(ret), f"pin shield program at {folder / 'prog'}")
        default_log().record("pin", str(folder / "prog"), PROGRAM, prog_id=self.prog_id)
        for name in RULE_MAPS:
            self.maps[name].pin(folder / name)

    def shared(self) -> dict[str, Map]:
        """The maps shared across instances (only for an instance loaded here)."""
        if self.obj is None:
            raise ValueError("a re-opened instance does not hold the shared maps")
        return {name: self.obj.map(SECTION_MAPS.get(name, name)) for name in SHARED_MAPS}

    @property
    def rule_count(self) -> int:
        """Rule ids in use (id 0 is never a rule)."""
        return self.maps["rules"].max_entries - 1

    def rule_table(self) -> npt.NDArray[np.void]:
        """Every ``nw_shield_rule`` record, indexed by id."""
        n = self.maps["rules"].max_entries
        return np.frombuffer(read_array(self.maps["rules"], n * RULE_DTYPE.itemsize), RULE_DTYPE)

    def totals(self) -> npt.NDArray[np.uint64]:
        """Counts per rule id, shape (ids, 2 modes, 2): ``[id, dry, 0]`` packets and
        ``[id, dry, 1]`` bytes; carried base plus the live per-CPU counters plus the counts
        each CPU still holds for its last IPv4 source."""
        n = self.maps["base"].max_entries
        base = np.frombuffer(read_array(self.maps["base"], n * 16), np.uint64).reshape(n, 2)
        live = base + read_percpu_counts(self.maps["counters"])
        last = self.maps["v4_last"].lookup(bytes(4))
        if last is not None:
            held = np.frombuffer(last, LAST_DTYPE)
            held = held[held["mode"] != 0]
            index = (held["id"] & ID_MASK) << 1 | ((held["mode"] == 2) & (held["id"] & ALLOW == 0))
            np.add.at(live[:, 0], index, held["packets"])
            np.add.at(live[:, 1], index, held["bytes"])
        return live.reshape(n // 2, 2, 2)

    def set_base(self, base: npt.NDArray[np.uint64]) -> None:
        """Store carried totals (shaped like :meth:`totals`); the program never writes them."""
        write_array(self.maps["base"], np.ascontiguousarray(base, dtype=np.uint64).tobytes())
        default_log().record("map_update", "base", entries=len(base), map_id=self.maps["base"].id)

    def memory_bytes(self) -> int:
        """Kernel-accounted bytes of this instance's rule maps."""
        return sum(memlock(m.fd) for m in self.maps.values() if m.fd >= 0)

    def close(self) -> None:
        """Drop this process's hold (pinned or attached objects live on)."""
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        else:
            os.close(self.prog_fd)
            for m in self.maps.values():
                m.close()
        self.prog_fd = -1
