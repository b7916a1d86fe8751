"""Records the graph hands out: nodes, edges, annotations, evictions (all frozen and slotted).

The accumulator (:mod:`netweave.graph.accumulator`) keeps its own mutable state; these are
the immutable views it returns from :meth:`GraphAccumulator.snapshot`, and what the slice
(:mod:`netweave.graph.slice`) serialises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROTOCOL_NAMES: Final = {6: "tcp", 17: "udp"}
PROTOCOL_NUMBERS: Final = {name: number for number, name in PROTOCOL_NAMES.items()}


def protocol_name(number: int) -> str:
    """``tcp``/``udp`` for 6/17, else the number as text (``"132"``)."""
    return PROTOCOL_NAMES.get(number, str(number))


@dataclass(frozen=True, slots=True)
class Annotation:
    """One typed fact about a node or a service, filled by the fingerprint and service layers.

    ``key`` names the fact in the field's own words (``os``, ``ja4t``, ``p0f_signature``,
    ``service``, ``product``, ``version``); ``source`` names who said it (``p0f``, ``ja4``,
    ``nmap-probes``); an annotation replaces an earlier one with the same key and source.
    ``confidence`` is in [0, 1] when the source grades its claims, else ``None``.
    """

    key: str
    value: str
    source: str
    updated_ns: int
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """Annotations of one server port on a node (``port``/``protocol``, e.g. 443/tcp)."""

    port: int
    protocol: str
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True, slots=True)
class Node:
    """One IP address in the graph.

    ``local`` is true for the agent's own addresses; ``host`` is then the agent's host name
    and ``processes`` the names of the local processes seen on it (listeners and clients).
    """

    ip: str
    local: bool
    host: str | None
    processes: tuple[str, ...]
    first_seen_ns: int
    last_seen_ns: int
    annotations: tuple[Annotation, ...]
    services: tuple[Service, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    """Traffic from one client to one server port, all flows between them summed.

    ``inferred`` is true when no flow of the edge showed its handshake, so the direction came
    from the local listeners or the port numbers, not from who sent the SYN.
    ``server_process``/``client_process`` name the local process on that end when known.
    """

    client: str
    server: str
    port: int
    protocol: str
    flows: int
    packets_to_server: int
    bytes_to_server: int
    packets_to_client: int
    bytes_to_client: int
    first_seen_ns: int
    last_seen_ns: int
    inferred: bool
    server_process: str | None = None
    client_process: str | None = None


@dataclass(frozen=True, slots=True)
class Evictions:
    """What the graph dropped to stay within its bounds (``capacity``) or its idle TTL."""

    nodes_capacity: int = 0
    nodes_idle: int = 0
    edges_capacity: int = 0
    edges_idle: int = 0
    flows_capacity: int = 0
    flows_idle: int = 0
    annotations_capacity: int = 0

    @property
    def total(self) -> int:
        """Every eviction of every kind."""
        return (
            self.nodes_capacity
            + self.nodes_idle
            + self.edges_capacity
            + self.edges_idle
            + self.flows_capacity
            + self.flows_idle
            + self.annotations_capacity
        )


@dataclass(frozen=True, slots=True)
class GraphLimits:
    """Bounds of the accumulator. ``idle_ttl_ns`` of 0 keeps idle entries until capacity."""

    max_nodes: int = 100_000
    max_edges: int = 200_000
    max_flows: int = 1_000_000
    max_annotations_per_node: int = 64
    idle_ttl_ns: int = 3600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class GraphView:
    """A consistent copy of the graph at one moment (``now_ns``: newest event time seen)."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    evictions: Evictions
    events: int
    flows_tracked: int
    now_ns: int
