"""``netweave doctor``: what this host supports, learnt by really loading tiny programs.

Attachment probes run on a veth pair inside a scratch network namespace made for the
purpose and removed afterwards; nothing is ever attached to the host's own interfaces.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import typer

from netweave.audit import AuditLog, default_log, set_default_log
from netweave.kernel import BpfObject, RingBuffer, bpffs
from netweave.netns import run_in

CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}

# What falls back, and how, when a piece is missing.
FALLBACKS = {
    "btf": "CO-RE programs cannot load: every eBPF feature is off; AF_PACKET capture and "
    "/proc socket tables are used instead",
    "bpffs": "nothing can be pinned: the shield stops filtering when the agent exits",
    "xdp_native": "the shield attaches XDP in generic (skb) mode, slower per packet",
    "xdp_generic": "no XDP at all: the shield is off (fail-open) and says so in its status",
    "tcx": "the flow observer attaches as a classic tc clsact filter instead of tcx",
    "tc": "no tc hook: the flow observer falls back to the AF_PACKET backend",
    "tp_btf": "no live socket events: connections are seen by periodic sock_diag snapshots only",
    "ringbuf": "no ring buffer: live flow and socket events are off; snapshots and AF_PACKET "
    "are used",
    "lsm": "the sentinel monitors (fanotify) but does not enforce: monitoring, not enforcing",
    "fentry": "no fentry/fexit: nothing in netweave needs it; tp_btf is used instead",
    "kprobes": "no kprobes: nothing in netweave needs them; tp_btf is used instead",
    "capabilities": "not enough privilege to load eBPF programs: run as root",
}


@dataclass(frozen=True, slots=True)
class Feature:
    """One capability of this host: whether it works and what was seen."""

    name: str
    available: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``netweave doctor`` found."""

    kernel: str
    features: tuple[Feature, ...]

    def missing(self) -> list[Feature]:
        """The features that are not available."""
        return [f for f in self.features if not f.available]

    def to_json(self) -> dict[str, object]:
        """The report as the JSON ``netweave doctor --json`` prints."""
        return {
            "version": 1,
            "kernel": self.kernel,
            "features": {
                f.name: {"available": f.available, "detail": f.detail} for f in self.features
            },
            "fallbacks": {f.name: FALLBACKS[f.name] for f in self.missing()},
        }


def examine() -> Report:
    """Probe every feature on this host."""
    feats = [_btf(), _bpffs(), _capabilities()]
    with _scratch_netns() as ns:
        feats += [
            _load("xdp_native", "probe_xdp", lambda o: run_in(ns, _attach_xdp, o, "native")),
            _load("xdp_generic", "probe_xdp", lambda o: run_in(ns, _attach_xdp, o, "generic")),
            _load("tcx", "probe_tc", lambda o: run_in(ns, _attach_tcx, o)),
            _load("tc", "probe_tc", lambda o: run_in(ns, _attach_classic_tc, o)),
        ]
    feats += [
        _load("tp_btf", "probe_tp_btf", lambda o: o.programs["probe_tp_btf"].attach().close()),
        _load("ringbuf", "probe_ringbuf", _ringbuf_roundtrip),
        _lsm(),
        _load("fentry", "probe_fentry", lambda o: o.programs["probe_fentry"].attach().close()),
        _load("kprobes", "probe_kprobe", lambda o: o.programs["probe_kprobe"].attach().close()),
    ]
    return Report(platform.release(), tuple(feats))


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report what this host supports, by loading tiny programs, and what falls back."""
    if os.geteuid() != 0:
        typer.echo("netweave doctor: run as root (it loads eBPF programs)", err=True)
        raise typer.Exit(1)
    quiet = AuditLog(Path(f"/tmp/netweave-doctor-{os.getpid()}.jsonl"))
    previous = default_log()
    set_default_log(quiet)  # probes are not changes to this host: keep them out of its log
    try:
        report = examine()
    finally:
        set_default_log(previous)
        quiet.path.unlink(missing_ok=True)
        quiet.head_path.unlink(missing_ok=True)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(f"kernel {report.kernel}")
    for f in report.features:
        typer.echo(f"  {'ok  ' if f.available else 'MISS'} {f.name:<12} {f.detail}")
    for f in report.missing():
        typer.echo(f"{f.name} unavailable: {FALLBACKS[f.name]}.")


# -- probes --------------------------------------------------------------------------------
def _btf() -> Feature:
    path = Path("/sys/kernel/btf/vmlinux")
    ok = path.exists()
    return Feature("btf", ok, f"{path} ({path.stat().st_size} bytes)" if ok else f"{path} missing")


def _bpffs() -> Feature:
    try:
        bpffs.ensure_mounted()
    except OSError as e:
        return Feature("bpffs", False, str(e))
    return Feature("bpffs", True, f"mounted at {bpffs.BPFFS}")


def _capabilities() -> Feature:
    status = Path("/proc/self/status").read_text()
    eff = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), 16)
    have = [name for name, bit in CAPS.items() if eff >> bit & 1]
    needed = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}
    ok = needed <= set(have) or "CAP_SYS_ADMIN" in have
    return Feature("capabilities", ok, " ".join(have) or "none")


def _lsm() -> Feature:
    active = Path("/sys/kernel/security/lsm")
    with suppress(OSError):
        lsms = active.read_text().strip()
        if "bpf" not in lsms.split(","):
            return Feature("lsm", False, f"bpf is not in the active LSMs ({lsms})")
    return _load("lsm", "probe_lsm", lambda o: o.programs["probe_lsm"].attach().close())


def _load(name: str, program: str, then: Callable[[BpfObject], None]) -> Feature:
    try:
        with BpfObject.embedded("probe") as obj:
            for prog in obj.programs.values():
                prog.autoload = prog.name == program
            obj.load()
            then(obj)
    except Exception as e:  # any failure means "not available", with its reason
        return Feature(name, False, f"{type(e).__name__}: {e}".splitlines()[0])
    return Feature(name, True, f"{program} loaded" + ("" if name == "ringbuf" else " and attached"))


def _attach_xdp(obj: BpfObject, mode: str) -> None:
    obj.programs["probe_xdp"].attach_xdp(_ifindex("nwd0"), mode).close()


def _attach_tcx(obj: BpfObject) -> None:
    obj.programs["probe_tc"].attach_tcx(_ifindex("nwd0"), ingress=True).close()


def _attach_classic_tc(obj: BpfObject) -> None:
    from netweave.kernel import TcFilter

    prog = obj.programs["probe_tc"]
    TcFilter(_ifindex("nwd0"), True, prog.fd, prog.name).close()


def _ringbuf_roundtrip(obj: BpfObject) -> None:
    with RingBuffer(obj.map("probe_ring")) as ring:
        obj.programs["probe_ringbuf"].test_run(bytes(64))
        records = ring.poll(timeout=1.0)
    if records != [b"\x01\0\0\0"]:
        raise RuntimeError(f"ring buffer delivered {records!r}, expected one record")


def _ifindex(name: str) -> int:
    # Asked of the calling thread's own namespace (sysfs would answer for the host's).
    return socket.if_nametoindex(name)


@contextmanager
def _scratch_netns() -> Iterator[str]:
    name = f"nw-doctor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "nwd0", "type", "veth", "peer", "name", "nwd1"],
            check=True,
        )
        subprocess.run(["ip", "-n", name, "link", "set", "nwd0", "up"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "nwd1", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
