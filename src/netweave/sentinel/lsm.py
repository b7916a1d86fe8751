"""Load the sentinel's BPF LSM programs, make this process the agent, and read decisions.

``LsmSentinel.start`` loads ``bpf/sentinel.bpf.c`` with this process's tgid fixed in
``.rodata``, attaches every hook, then performs the handshake (a prctl the kernel program
answers) that marks the calling thread as the agent in task-local storage. Call it from the
main thread before starting others: threads created afterwards inherit the mark, child
processes and anything exec'd do not. Each decision the kernel reports is decoded and
appended to the audit log.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import replace
from pathlib import Path

from netweave.audit import AuditEntry, default_log
from netweave.kernel import BpfObject, KernelError, Link, Map, ObjectError, RingBuffer, bpffs
from netweave.kernel._libbpf import lib
from netweave.kernel.info import object_id
from netweave.sentinel.events import (
    EventDecodeError,
    FimEvent,
    FimEventC,
    Mode,
    Operation,
    decode,
)
from netweave.sentinel.policy import Resolved, kernel_dev

HANDSHAKE = 0x4E574147  # "NWAG", NW_PRCTL_HANDSHAKE in bpf/sentinel.bpf.c
HANDSHAKE_OK = 1
PIN_DIR = bpffs.BPFFS / "netweave" / "sentinel"
_KEY = struct.Struct("<QII")
_RULE = struct.Struct("<II")
_libc = ctypes.CDLL(None, use_errno=True)
_NOT_FILES = frozenset(
    {Operation.MAP_WRITE, Operation.HANDSHAKE, Operation.LINK_OPEN, Operation.PTRACE}
)


class SentinelUnavailable(Exception):  # noqa: N818 - reads as the condition it reports
    """The BPF LSM programs cannot run here; the message gives the kernel's reason."""


class LsmSentinel:
    """The loaded, attached sentinel. Close it to detach (pinned links keep enforcing)."""

    def __init__(self, obj: BpfObject, links: list[Link], resolved: Resolved) -> None:
        self.obj = obj
        self.links = links
        self.resolved = resolved
        self.protected_inodes = obj.map("protected_inodes")
        self.protected_maps = obj.map("protected_maps")
        self.protected_links = obj.map("protected_links")
        self.ring = RingBuffer(obj.map("fim_events"), obj.map("fim_drops"))
        self.undecodable = 0
        self._own_keys: set[bytes] = set()
        self._own_paths: dict[tuple[int, int], str] = {}
        self._protected_map_ids: set[int] = set()

    @classmethod
    def start(cls, resolved: Resolved, *, pin_dir: Path | None = None) -> LsmSentinel:
        """Load, attach, handshake, install ``resolved`` and protect the sentinel's own maps.

        With ``pin_dir`` the links and maps are pinned there (the protection then outlives
        this process) and the directory itself is protected. Raises SentinelUnavailable when
        the kernel refuses the programs.
        """
        try:
            obj = BpfObject.embedded("sentinel")
        except ObjectError as e:
            raise SentinelUnavailable(str(e)) from e
        links: list[Link] = []
        try:
            obj.set_rodata(agent_tgid=os.getpid())
            obj.load()
            obj.check_record("nw_fim_event", FimEventC)
            links = [prog.attach() for prog in obj.programs.values()]
        except (KernelError, ObjectError) as e:
            for link in links:
                link.close()
            obj.close()
            raise SentinelUnavailable(f"the BPF LSM programs cannot run here: {e}") from e
        sentinel = cls(obj, links, resolved)
        try:
            sentinel._handshake()
            sentinel._protect_links()
            sentinel.install(resolved)
            for name in obj.map_names:
                sentinel.protect_map(obj.map(name))
            if pin_dir is not None:
                sentinel.pin(pin_dir)
        except BaseException:
            sentinel.close()
            raise
        return sentinel

    def install(self, resolved: Resolved) -> None:
        """Make ``resolved`` the protected set: add its inodes, remove ones no longer listed."""
        wanted = {_KEY.pack(p.ino, p.dev, 0): p for p in resolved.inodes}
        for key in list(self.protected_inodes.keys()):
            if key not in wanted and key not in self._own_keys:
                self.protected_inodes.delete(key, audit=False)
        if wanted:
            keys = b"".join(wanted)
            values = b"".join(_RULE.pack(p.mode, p.rule_id) for p in wanted.values())
            self.protected_inodes.update_batch(keys, values)
        self.resolved = resolved
        default_log().record(
            "sentinel_policy", "sentinel", inodes=len(wanted), rules=len(resolved.policy.rules)
        )

    def protect_map(self, target: Map) -> None:
        """Deny every other process opening ``target`` for writing (``lsm/bpf_map``)."""
        self.protected_maps.update(
            struct.pack("<I", target.id), struct.pack("<I", target.id), audit=False
        )
        self._protected_map_ids.add(target.id)
        default_log().record("sentinel_protect_map", target.name, map_id=target.id)

    def protect_pinned_maps(self, root: Path = bpffs.BPFFS / "netweave") -> list[str]:
        """Protect every map pinned under ``root`` (the shield's, the sentinel's); return paths.

        Pins of programs and links are skipped. Call again after other parts pin new maps.
        """
        found: list[str] = []
        if not root.is_dir():
            return found
        for path in sorted(root.rglob("*")):
            if path.is_dir() or not _is_map_pin(path):
                continue
            with Map.from_pin(path) as pinned:
                if pinned.id not in self._protected_map_ids:
                    self.protect_map(pinned)
            found.append(str(path))
        return found

    def pin(self, pin_dir: Path) -> None:
        """Pin every link and map under ``pin_dir`` and protect the directory and pins."""
        bpffs.ensure_mounted()
        pin_dir.mkdir(parents=True, exist_ok=True)
        for link in self.links:
            name = link.description.split("(")[-1].rstrip(")")
            link.pin(pin_dir / f"link_{name}")
        for name in ("protected_inodes", "protected_maps", "fim_events"):
            self.obj.map(name).pin(pin_dir / name)
        for path in (pin_dir, *sorted(pin_dir.iterdir())):
            self.protect_path(path)

    def protect_path(self, path: Path, mode: Mode = Mode.ENFORCE, rule_id: int = 0) -> None:
        """Protect one more inode outside the policy (the sentinel's own pins use this)."""
        st = path.lstat()
        key = _KEY.pack(st.st_ino, kernel_dev(st.st_dev), 0)
        self.protected_inodes.update(key, _RULE.pack(mode, rule_id), audit=False)
        self._own_keys.add(key)
        self._own_paths[(kernel_dev(st.st_dev), st.st_ino)] = str(path)
        default_log().record("sentinel_protect", str(path), mode=mode.name.lower())

    def poll(self, timeout: float | None = 0.0) -> list[FimEvent]:
        """Decisions reported since the last call (waiting up to ``timeout``), audited."""
        events: list[FimEvent] = []
        for record in self.ring.poll(timeout):
            try:
                event = decode(record)
            except EventDecodeError:
                self.undecodable += 1
                continue
            event = self._with_path(event)
            events.append(event)
            audit_event(event)
        return events

    @property
    def dropped(self) -> int:
        """Decisions the kernel could not report because the ring buffer was full."""
        return self.ring.dropped

    def close(self) -> None:
        """Detach what is not pinned and release the object."""
        self.ring.close()
        for link in self.links:
            link.close()
        self.obj.close()

    def __enter__(self) -> LsmSentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_path(self, event: FimEvent) -> FimEvent:
        if event.op in _NOT_FILES:
            return event
        own = self._own_paths.get((event.dev, event.ino))
        return replace(event, path=own or self.resolved.path_of(event))

    def link_ids(self) -> list[int]:
        """The kernel ids of the sentinel's links (as ``bpftool link`` lists them)."""
        ids = []
        for link in self.links:
            try:
                ids.append(object_id(link.fd))
            except KernelError as e:
                raise SentinelUnavailable(
                    f"cannot read the id of link {link.description}: {e}"
                ) from e
        return ids

    def _protect_links(self) -> None:
        for link_id in self.link_ids():
            self.protected_links.update(
                struct.pack("<I", link_id), struct.pack("<I", 1), audit=False
            )

    def _handshake(self) -> None:
        ret = _libc.prctl(HANDSHAKE, 0, 0, 0, 0)
        if ret != HANDSHAKE_OK:
            err = ctypes.get_errno()
            raise SentinelUnavailable(
                f"the agent handshake was refused (prctl returned {ret}, errno {err}): "
                "another process already claimed this sentinel instance"
            )
        default_log().record("sentinel_handshake", "sentinel", tgid=os.getpid())


def audit_event(event: FimEvent) -> None:
    """Append one file-integrity event to the audit log."""
    target = event.path or event.name
    default_log().append(AuditEntry("fim", target, event.op.name.lower(), "", event.to_json()))


def _is_map_pin(path: Path) -> bool:
    """True when the bpffs pin at ``path`` holds a map (not a program or a link)."""
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        return False
    try:
        return "map_type:" in Path(f"/proc/self/fdinfo/{fd}").read_text()
    finally:
        os.close(fd)
