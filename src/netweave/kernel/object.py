"""``BpfObject``: a compiled kernel object opened from memory, audited, then loaded."""

from __future__ import annotations

import ctypes
import hashlib
import json
from importlib import resources
from pathlib import Path

from netweave.audit import default_log
from netweave.kernel import insn_audit
from netweave.kernel._libbpf import OpenOpts, errno_of, lib
from netweave.kernel.btf import check_layout, datasec_vars
from netweave.kernel.elf import ElfImage
from netweave.kernel.errors import KernelError, ObjectError, VerifierError
from netweave.kernel.maps import Map
from netweave.kernel.program import Program

LOG_SIZE = 1 << 20
OBJECT_PACKAGE = "netweave.kernel.objects"


def embedded_bytes(name: str) -> tuple[bytes, str]:
    """The bytes and SHA-256 of ``<name>.o`` shipped inside the package, digest checked."""
    folder = resources.files(OBJECT_PACKAGE)
    try:
        manifest = json.loads(folder.joinpath("manifest.json").read_text())["objects"]
        data = folder.joinpath(f"{name}.o").read_bytes()
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ObjectError(
            f"kernel object {name}.o is not built into the package (run `make bpf`): {e}"
        ) from e
    digest = hashlib.sha256(data).hexdigest()
    if manifest.get(f"{name}.o") != digest:
        raise ObjectError(
            f"kernel object {name}.o does not match its manifest digest (rebuild with `make bpf`)"
        )
    return data, digest


class BpfObject:
    """One kernel object: programs and maps, configured before :meth:`load`, then used.

    Open with :meth:`embedded` (a packaged object) or :meth:`from_bytes`. The object's
    memory buffer and log buffers live as long as this instance; :meth:`close` unloads
    everything that was not pinned.
    """

    def __init__(
        self, data: bytes, name: str, *, digest: str = "", allow_debug: bool = False
    ) -> None:
        self.name = name
        self.digest = digest or hashlib.sha256(data).hexdigest()
        self.allow_debug = allow_debug
        self._elf = ElfImage(data, name)
        self._buf = ctypes.create_string_buffer(data, len(data))
        self._name_c = name.encode()
        opts = OpenOpts(sz=ctypes.sizeof(OpenOpts), object_name=self._name_c)
        ptr = lib.bpf_object__open_mem(self._buf, len(data), ctypes.byref(opts))
        if not ptr:
            raise ObjectError(f"libbpf cannot open object {name}: errno {ctypes.get_errno()}")
        self._ptr: int | None = ptr
        self.programs: dict[str, Program] = {}
        self._logs: dict[str, ctypes.Array[ctypes.c_char]] = {}
        p = lib.bpf_object__next_program(ptr, None)
        while p:
            prog = Program(p, name, self.digest)
            self.programs[prog.name] = prog
            self._logs[prog.name] = buf = ctypes.create_string_buffer(LOG_SIZE)
            lib.bpf_program__set_log_buf(p, buf, LOG_SIZE)
            p = lib.bpf_object__next_program(ptr, p)
        self._map_ptrs: dict[str, int] = {}
        m = lib.bpf_object__next_map(ptr, None)
        while m:
            self._map_ptrs[lib.bpf_map__name(m).decode()] = m
            m = lib.bpf_object__next_map(ptr, m)
        self._maps: dict[str, Map] = {}
        self.loaded = False

    @classmethod
    def embedded(cls, name: str, *, allow_debug: bool = False) -> BpfObject:
        """Open the packaged object ``name`` (``bpf/<name>.bpf.c``), its digest checked."""
        data, digest = embedded_bytes(name)
        return cls(data, name, digest=digest, allow_debug=allow_debug)

    @classmethod
    def from_file(cls, path: Path | str, *, allow_debug: bool = False) -> BpfObject:
        """Open an object file (tests and tools; the agent uses :meth:`embedded`)."""
        p = Path(path)
        return cls(p.read_bytes(), p.stem.removesuffix(".bpf"), allow_debug=allow_debug)

    # -- before load -------------------------------------------------------------------
    def set_rodata(self, **values: int | bytes) -> None:
        """Set ``const volatile`` globals by name; integers are written little-endian."""
        self._require(loaded=False)
        rodata = next((p for n, p in self._map_ptrs.items() if n.endswith(".rodata")), None)
        btf = lib.bpf_object__btf(self._ptr)
        layout = datasec_vars(btf, ".rodata") if btf else {}
        if rodata is None or not layout:
            raise ObjectError(f"object {self.name} has no .rodata globals")
        size = ctypes.c_size_t()
        base = lib.bpf_map__initial_value(rodata, ctypes.byref(size))
        for var, value in values.items():
            if var not in layout:
                raise ObjectError(f"object {self.name} has no const volatile global {var!r}")
            off, width = layout[var]
            raw = value.to_bytes(width, "little") if isinstance(value, int) else value
            if len(raw) != width:
                raise ValueError(f"global {var} is {width} bytes, got {len(raw)}")
            ctypes.memmove(base + off, raw, width)

    def set_max_entries(self, map_name: str, entries: int) -> None:
        """Resize a map before load."""
        self._require(loaded=False)
        ret = lib.bpf_map__set_max_entries(self._map_ptr(map_name), entries)
        if ret:
            raise KernelError(errno_of(ret), f"resize map {map_name} to {entries}")

    def reuse_map(self, map_name: str, existing: Map) -> None:
        """Use an existing (e.g. pinned) map instead of creating ``map_name`` at load."""
        self._require(loaded=False)
        ret = lib.bpf_map__reuse_fd(self._map_ptr(map_name), existing.fd)
        if ret:
            raise KernelError(errno_of(ret), f"reuse map {existing.name} as {map_name}")

    def audit(self) -> None:
        """The pre-load instruction audit of every program to be loaded; raises AuditRefused."""
        progs = [p for p in self.programs.values() if p.autoload]
        for prog in progs:
            section_index = next(
                (i for i, s in self._elf.executable() if s.name == prog.section), None
            )
            kfuncs = self._elf.call_symbols(section_index) if section_index is not None else {}
            insn_audit.check_program(
                prog.name, prog.type, prog.insns(), allow_debug=self.allow_debug, kfunc_names=kfuncs
            )
        owned = {p.section for p in self.programs.values()}
        loose = [
            (s.name, self._elf.body(s)) for _, s in self._elf.executable() if s.name not in owned
        ]
        insn_audit.check_subprograms(loose, [p.type for p in progs], allow_debug=self.allow_debug)

    def load(self) -> None:
        """Audit, then load every program and create every map; verifier errors carry the log."""
        self._require(loaded=False)
        self.audit()
        ret = lib.bpf_object__load(self._ptr)
        if ret:
            err = errno_of(ret)
            for pname, buf in self._logs.items():
                text = buf.value.decode(errors="replace")
                if text.strip() and self.programs[pname].fd < 0:
                    tail = "\n".join(text.strip().splitlines()[-30:])
                    raise VerifierError(err, pname, tail)
            raise KernelError(err, f"load object {self.name}")
        self.loaded = True
        for prog in self.programs.values():
            if prog.autoload:
                default_log().record("load", self.name, prog.name, self.digest, type=prog.type)
        self._logs.clear()

    # -- after load --------------------------------------------------------------------
    def map(self, name: str) -> Map:
        """The loaded map ``name``."""
        self._require(loaded=True)
        if name not in self._maps:
            self._maps[name] = Map(lib.bpf_map__fd(self._map_ptr(name)), owned=False, label=name)
        return self._maps[name]

    @property
    def map_names(self) -> list[str]:
        """Names of every map in the object (including .rodata/.bss)."""
        return list(self._map_ptrs)

    def check_record(self, struct_name: str, record: type[ctypes.Structure]) -> None:
        """Raise LayoutError unless ``record`` matches ``struct struct_name`` in the BTF."""
        btf = lib.bpf_object__btf(self._ptr)
        if not btf:
            raise ObjectError(f"object {self.name} carries no BTF")
        check_layout(btf, struct_name, record)

    def close(self) -> None:
        """Unload programs and maps (pinned ones and attached links live on)."""
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            if self.loaded:
                default_log().record("unload", self.name, digest=self.digest)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _map_ptr(self, name: str) -> int:
        try:
            return self._map_ptrs[name]
        except KeyError:
            raise ObjectError(f"object {self.name} has no map {name!r}") from None

    def _require(self, *, loaded: bool) -> None:
        if self._ptr is None:
            raise ObjectError(f"object {self.name} is closed")
        if self.loaded != loaded:
            raise ObjectError(f"object {self.name} is {'' if self.loaded else 'not '}loaded yet")
