"""A test bed of network namespaces joined by veth pairs, that always cleans up after itself.

Every name the bed makes starts with one random prefix (``nwt-<6 hex>``): namespaces are
``<prefix>-<name>``, pins under ``/sys/fs/bpf`` must start with the prefix, and any link left in
the host namespace starts with its short form. :meth:`TestBed.close` kills every process
running in the bed's namespaces (not only the ones it started), deletes the namespaces (and so
their veths), removes host links and bpffs pins carrying the prefix and its temp directory. It
runs from the pytest fixture's finalizer, from ``atexit`` and from a ``weakref.finalize``, and
is idempotent.

Traffic stays inside the bed: addresses come from 10.<random>.0.0/16 and a random fd00::/8
ULA prefix, and nothing is ever attached to the host's own interfaces.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from netweave import netns

BPFFS = Path("/sys/fs/bpf")
RUN_NETNS = Path("/run/netns")


@dataclass(frozen=True, slots=True)
class Link:
    """One veth pair between two namespaces and the addresses on each end."""

    ns_a: str
    dev_a: str
    ipv4_a: str
    ipv6_a: str
    ns_b: str
    dev_b: str
    ipv4_b: str
    ipv6_b: str


@dataclass(frozen=True, slots=True)
class Server:
    """A background process the bed started inside one of its namespaces."""

    name: str
    ns: str
    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """PID of the ``ip netns exec`` wrapper, which execs into the server itself."""
        return self.process.pid


class TestBedError(RuntimeError):
    """The bed could not be built; the message names the command and its output."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise TestBedError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


class TestBed:
    """Network namespaces joined by veth pairs; use as a context manager or call close()."""

    __test__ = False  # not a pytest test class

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"nwt-{secrets.token_hex(3)}"
        # Host-side link names must fit IFNAMSIZ (15): "nw" + 6 hex + suffix.
        self.link_prefix = "nw" + self.prefix.removeprefix("nwt-")
        self.namespaces: list[str] = []
        self.links: list[Link] = []
        self.servers: list[Server] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._net4 = secrets.randbelow(200) + 20
        self._net6 = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}"
        self._closed = False
        self._finalizer = weakref.finalize(self, _cleanup, self.prefix, self.link_prefix, self.tmp)
        atexit.register(self._finalizer)

    # -- building -------------------------------------------------------------------------

    def add_ns(self, name: str) -> str:
        """Create namespace ``<prefix>-<name>`` with loopback up; return its full name."""
        full = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", full])
        self.namespaces.append(full)
        _run(["ip", "-n", full, "link", "set", "lo", "up"])
        return full

    def link(self, ns_a: str, ns_b: str, mtu: int = 1500) -> Link:
        """Join two of the bed's namespaces with a veth pair carrying IPv4 and IPv6.

        Each end gets an address in its own /24 and /64 (DAD off, so IPv6 is usable at once).
        """
        index = len(self.links) + 1
        dev_a, dev_b = f"veth{index}a", f"veth{index}b"
        _run(
            ["ip", "link", "add", dev_a, "mtu", str(mtu), "netns", ns_a, "type", "veth",
             "peer", "name", dev_b, "mtu", str(mtu), "netns", ns_b]
        )  # fmt: skip
        v4 = f"10.{self._net4}.{index}"
        v6 = f"{self._net6}:{index:x}::"
        # Canonical text (as inet_ntop writes it), so tests can compare addresses as strings.
        a6, b6 = (ipaddress.IPv6Address(f"{v6}{end}").compressed for end in (1, 2))
        link = Link(ns_a, dev_a, f"{v4}.1", a6, ns_b, dev_b, f"{v4}.2", b6)
        for ns, dev, a4, a6 in ((ns_a, dev_a, link.ipv4_a, link.ipv6_a),
                                (ns_b, dev_b, link.ipv4_b, link.ipv6_b)):  # fmt: skip
            _run(["ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev])
            _run(["ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            self._wait_up(ns, dev)
        self.links.append(link)
        return link

    def _wait_up(self, ns: str, dev: str, timeout: float = 5.0) -> None:
        """Wait until ``dev`` reports carrier (a fresh veth pair comes up asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " state UP " in _run(["ip", "-n", ns, "-o", "link", "show", "dev", dev]):
                return
            time.sleep(0.02)
        raise TestBedError(f"{dev} in {ns} did not come up within {timeout}s")

    # -- running things -------------------------------------------------------------------

    def run(
        self, ns: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns`` to completion and return it (stdout/stderr as text)."""
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise TestBedError(
                f"in {ns}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def cgroup(self, name: str) -> Path:
        """Create cgroup v2 ``/<prefix>-<name>`` (a stand-in for a container's cgroup).

        Raises :class:`TestBedError` when no cgroup2 hierarchy is mounted.
        """
        root = cgroup2_root()
        if root is None:
            raise TestBedError("no cgroup2 hierarchy is mounted (see /proc/self/mounts)")
        path = root / f"{self.prefix}-{name}"
        path.mkdir(exist_ok=True)
        return path

    def start(
        self, ns: str, name: str, argv: Sequence[str], *, cgroup: Path | None = None
    ) -> Server:
        """Start a background process inside ``ns`` (and ``cgroup``, from :meth:`cgroup`).

        Its output goes to a log in the bed's tmp. The process joins the cgroup before it
        execs, so nothing it forks starts outside it.
        """
        log = self.tmp / f"{name}.log"
        command = ["ip", "netns", "exec", ns, *argv]
        if cgroup is not None:
            # Join before `ip netns exec`: it remounts /sys, hiding the cgroup tree.
            join = f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"'
            command = ["sh", "-c", join, "sh", *command]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server = Server(name, ns, tuple(argv), process, log)
        self.servers.append(server)
        return server

    def capture(
        self, ns: str, dev: str, pcap: Path, bpf_filter: str = "", timeout: float = 10.0
    ) -> Server:
        """Start tcpdump on ``dev`` in ``ns`` writing ``pcap``; return once it is capturing."""
        argv = ["tcpdump", "--immediate-mode", "-Z", "root", "-U", "-s", "0", "-n", "-i", dev,
                "-w", str(pcap), *([bpf_filter] if bpf_filter else [])]  # fmt: skip
        server = self.start(ns, f"tcpdump-{dev}", argv)
        deadline = time.monotonic() + timeout
        while "listening on" not in server.log.read_text(errors="replace"):
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise TestBedError(f"tcpdump on {dev} in {ns} did not start: "
                                   f"{server.log.read_text(errors='replace')[-400:]}")  # fmt: skip
            time.sleep(0.05)
        return server

    def stop(self, server: Server, timeout: float = 5.0) -> None:
        """Stop one background process (its whole process group): TERM, then KILL."""
        _kill_group(server.process, timeout)

    def wait_tcp(self, ns: str, host: str, port: int, timeout: float = 10.0) -> None:
        """Wait until a TCP connect to ``host:port`` from inside ``ns`` succeeds."""
        deadline = time.monotonic() + timeout
        with netns.enter(ns) as worker:
            while True:
                try:
                    worker.call(_probe_tcp, host, port)
                    return
                except OSError as exc:
                    if time.monotonic() > deadline:
                        logs = " ".join(s.log.read_text(errors="replace")[-400:]
                                        for s in self.servers if s.ns == ns)  # fmt: skip
                        raise TestBedError(
                            f"nothing accepted on {host}:{port} in {ns} within {timeout}s"
                            f" ({exc}); server logs: {logs}"
                        ) from exc
                    time.sleep(0.05)

    def ns_path(self, ns: str) -> Path:
        """Path of the namespace file for ``setns`` (what :func:`netweave.netns.enter` takes)."""
        return RUN_NETNS / ns

    def ns_inode(self, ns: str) -> int:
        """Inode number identifying ``ns`` (as in ``/proc/PID/ns/net``)."""
        return netns.netns_inode(self.ns_path(ns))

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything the bed made. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for server in self.servers:
            with contextlib.suppress(Exception):
                _kill_group(server.process, 2.0)
        self._finalizer()

    def __enter__(self) -> TestBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe_tcp(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        sock.connect((host, port))


def _kill_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pids_in(ns: str) -> list[int]:
    try:
        out = _run(["ip", "netns", "pids", ns], check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def _cleanup(prefix: str, link_prefix: str, tmp: Path) -> None:
    """Remove every namespace, host link, bpffs pin and temp file named with ``prefix``."""
    names = sorted(p.name for p in RUN_NETNS.glob(f"{prefix}-*")) if RUN_NETNS.exists() else []
    own = os.getpid()
    # Kill what lives in the namespaces (daemons fork away from the process we started).
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = [pid for ns in names for pid in _pids_in(ns) if pid != own]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3.0
        while victims and time.monotonic() < deadline:
            victims = [pid for pid in victims if Path(f"/proc/{pid}").exists()]
            time.sleep(0.05)
    root = cgroup2_root()
    groups = sorted(root.glob(f"{prefix}-*")) if root is not None else []
    for group in groups:
        _empty_cgroup(group)
        with contextlib.suppress(OSError):
            group.rmdir()
    for ns in names:
        with contextlib.suppress(Exception):
            _run(["ip", "netns", "del", ns], check=False, timeout=10)
    with contextlib.suppress(Exception):
        for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
            fields = line.split(":")
            if len(fields) > 1:
                dev = fields[1].strip().split("@")[0]
                if dev.startswith(link_prefix):
                    _run(["ip", "link", "del", dev], check=False)
    if BPFFS.is_dir():
        for pin in BPFFS.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                if pin.is_dir() and not pin.is_symlink():
                    shutil.rmtree(pin)
                else:
                    pin.unlink()
    shutil.rmtree(tmp, ignore_errors=True)


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, or None."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _empty_cgroup(group: Path) -> None:
    """Kill every process left in ``group`` (TERM, then KILL), bounded in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(0.05)


def leftovers(prefix: str) -> list[str]:
    """Everything named with ``prefix`` still on the host (empty after a clean teardown)."""
    found: list[str] = []
    if RUN_NETNS.exists():
        found += [f"netns {p.name}" for p in RUN_NETNS.glob(f"{prefix}-*")]
    link_prefix = "nw" + prefix.removeprefix("nwt-")
    out = _run(["ip", "-o", "link", "show"], check=False)
    found += [f"link {line.split(':')[1].strip()}" for line in out.splitlines()
              if line.split(":")[1].strip().startswith(link_prefix)]  # fmt: skip
    if BPFFS.is_dir():
        found += [f"pin {p}" for p in BPFFS.glob(f"{prefix}*")]
    found += [f"tmp {p}" for p in Path(tempfile.gettempdir()).glob(f"{prefix}-*")]
    root = cgroup2_root()
    if root is not None:
        found += [f"cgroup {p}" for p in root.glob(f"{prefix}-*")]
    return found


@contextlib.contextmanager
def testbed(prefix: str | None = None) -> Iterator[TestBed]:
    """A :class:`TestBed` that is torn down when the block ends, whatever happened in it."""
    bed = TestBed(prefix)
    try:
        yield bed
    finally:
        bed.close()
