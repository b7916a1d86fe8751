"""``netweave agent``: this host's slice of the service graph, kept current.

The agent seeds itself from a socket snapshot (connections open before it started), then
follows live socket events (tp_btf) and the flow observer (tcx/tc, or AF_PACKET where eBPF
is unavailable), folds both into the graph accumulator, and refreshes the socket table and
the kernel's flow counters every interval. ``--once`` prints one slice after a short window.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import typer

from netweave.capture import kernel_records as kr
from netweave.capture.afpacket import AfPacketGroup
from netweave.capture.ebpf import KernelObserver, default_interfaces
from netweave.capture.events import CaptureEvent
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import Inventory, inventory_from
from netweave.graph.slice import AgentSlice, build_slice, slice_to_json
from netweave.labels import default_labeler
from netweave.netns import namespace_file, netns_inode
from netweave.services.probes_file import DEFAULT_PROBES_PATH
from netweave.sockets.hostmap import HostMap
from netweave.sockets.live import SocketEvents
from netweave.sockets.snapshot import take_snapshot

log = logging.getLogger(__name__)
BACKENDS = ("auto", "ebpf", "afpacket")
LABELED_KINDS = (kr.NW_EV_HANDSHAKE, kr.NW_EV_PAYLOAD)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the agent watches and how often it refreshes."""

    agent_id: str | None = None
    interfaces: tuple[str, ...] | None = None
    netns: str | None = None
    snapshot_interval: float = 10.0
    p0f_db: str = str(DEFAULT_P0F_DB)
    probes_file: str = str(DEFAULT_PROBES_PATH)
    foxio: bool = True
    backend: str = "auto"  # auto (eBPF, else AF_PACKET), ebpf, or afpacket


class Agent:
    """The running agent: observers, socket table and graph; use as a context manager."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.graph = GraphAccumulator()
        self.hostmap = HostMap()
        self.degraded: list[str] = []
        self.observer: KernelObserver | AfPacketGroup | None = None
        self.sockets: SocketEvents | None = None
        self._last_snapshot = 0.0
        self._netns_inode = netns_inode(namespace_file(config.netns or os.getpid()))
        self.labeler, problems = default_labeler(
            self.graph, foxio=config.foxio, p0f_db=config.p0f_db, probes_file=config.probes_file
        )
        for problem in problems:
            self._degrade(problem)
        self.refresh()  # the seed: connections open before the agent started
        self.observer = self._observer()
        try:
            self.sockets = SocketEvents()
        except Exception as e:
            self._degrade(f"live socket events unavailable ({e}); snapshots only")

    def _observer(self) -> KernelObserver | AfPacketGroup | None:
        """The eBPF flow observer, else AF_PACKET, else none (sockets only)."""
        config = self.config
        if config.backend not in BACKENDS:
            raise ValueError(f"backend {config.backend!r} is not one of {', '.join(BACKENDS)}")
        if config.backend in ("auto", "ebpf"):
            try:
                return KernelObserver(config.interfaces, netns=config.netns)
            except Exception as e:  # any failure to load or attach: fall back, and say so
                if config.backend == "ebpf":
                    raise
                self._degrade(f"eBPF flow observer unavailable ({e}); using AF_PACKET")
        try:
            names = config.interfaces or tuple(i.name for i in default_interfaces(config.netns))
            return AfPacketGroup(names, namespace=config.netns)
        except Exception as e:
            self._degrade(f"AF_PACKET unavailable ({e}); edges come from sockets only")
        return None

    @property
    def interfaces(self) -> list[str]:
        """Names of the interfaces the flow observer watches."""
        if isinstance(self.observer, KernelObserver):
            return [i.name for i in self.observer.interfaces]
        if isinstance(self.observer, AfPacketGroup):
            return [o.interface for o in self.observer.observers]
        return []

    def _degrade(self, why: str) -> None:
        log.warning("agent: %s", why)
        self.degraded.append(why)

    def step(self, timeout: float) -> int:
        """Take every event ready within ``timeout`` seconds; returns how many were taken."""
        taken = 0
        if self.sockets is not None:
            changes = self.sockets.poll(0.0)
            taken += self.hostmap.fold_events(changes)
        if isinstance(self.observer, KernelObserver):
            # The graph takes the ring's records as columns; only the labeler, which reads
            # handshakes and first payloads, gets event objects (FlowSeen is not built).
            batch = self.observer.poll_batch(timeout)
            taken += self.graph.add_batch(self.observer.columns_of(batch))
            if self.labeler.wants_events:
                self.labeler.feed(self.observer.events_of(batch, LABELED_KINDS))
        elif self.observer is not None:
            events: list[CaptureEvent] = self.observer.poll(timeout)
            taken += self.graph.feed_many(events)
            self.labeler.feed(events)
        else:
            time.sleep(timeout)
        if time.monotonic() - self._last_snapshot >= self.config.snapshot_interval:
            self.refresh()
        return taken

    def refresh(self) -> None:
        """Re-read the socket table and the kernel's flow counters; update the inventory."""
        self._last_snapshot = time.monotonic()
        self.hostmap.fold_snapshot(take_snapshot())
        if self.observer is not None:
            self.graph.feed_many(self.observer.flow_counters())
        self.graph.set_inventory(self._inventory(), self.config.agent_id)

    def slice(self) -> AgentSlice:
        """This host's slice now."""
        view = self.graph.snapshot(now_ns=time.time_ns())  # a quiet graph still ages
        return build_slice(view, self._inventory(), agent_id=self.config.agent_id)

    def _inventory(self) -> Inventory:
        """The host map's lists as the graph takes them: listeners of the observed namespace."""
        report = self.hostmap.report()
        listeners = [
            replace(item, address="::") if item.address == "*" else item
            for item in report.listeners
            if item.netns in (0, self._netns_inode)
        ]
        return inventory_from(listeners, report.local_ips, report.outbound)

    def close(self) -> None:
        """Detach every observer."""
        if self.observer is not None:
            self.observer.close()
        if self.sockets is not None:
            self.sockets.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def agent_command(
    once: bool = typer.Option(False, "--once", help="Print one slice after --window seconds."),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between slices."),
    window: float = typer.Option(2.0, "--window", help="With --once: seconds to observe."),
    interface: list[str] | None = typer.Option(
        None, "--iface", help="Interface to observe (repeat); default every non-loopback one up."
    ),
    netns: str | None = typer.Option(None, "--netns", help="Observe inside this namespace."),
    agent_id: str | None = typer.Option(None, "--agent-id", help="Default: the host name."),
    backend: str = typer.Option(
        "auto", "--backend", help="Flow observer: auto (eBPF, else AF_PACKET), ebpf, afpacket."
    ),
    no_foxio: bool = typer.Option(
        False, "--no-foxio", help="Leave out JA4T/JA4TS/JA4S (FoxIO License 1.1)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write each slice here (atomically)."),
) -> None:
    """Map what this host talks to and print (or write) its slice of the service graph."""
    config = AgentConfig(
        agent_id,
        tuple(interface) if interface else None,
        netns,
        interval,
        foxio=not no_foxio,
        backend=backend,
    )
    with Agent(config) as agent:
        for why in agent.degraded:
            typer.echo(f"netweave agent: {why}", err=True)
        if agent.observer is not None:
            names = ", ".join(agent.interfaces) or "no interface"
            typer.echo(f"netweave agent: observing {names}", err=True)
        deadline = time.monotonic() + (window if once else interval)
        while True:
            agent.step(max(0.0, min(0.5, deadline - time.monotonic())))
            if time.monotonic() < deadline:
                continue
            agent.refresh()
            _emit(slice_to_json(agent.slice()), out)
            if once:
                return
            deadline = time.monotonic() + interval


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text)
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
