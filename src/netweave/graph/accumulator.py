"""The bounded graph accumulator: capture events in, nodes and edges out (sans-IO).

:class:`GraphAccumulator` takes the records every capture backend emits
(:mod:`netweave.capture.events`) and folds them into edges client -> server:port/protocol.

Direction
    The client is the SYN sender (a SYN-ACK names the client too). A flow whose handshake
    was not seen gets its server from the local listeners when one matches (see
    :meth:`GraphAccumulator.set_inventory`), else from the port numbers (the lower port serves,
    which puts a well-known port below 1024 on the server side), and its edge stays
    ``inferred`` until a flow of the same edge shows a handshake. UDP has no handshake: the
    sender of the first datagram seen is the client (not inferred), unless a local listener
    or a well-known source port against an unprivileged destination port says the first
    datagram seen was a reply; then the direction is flipped and the edge is ``inferred``.

Counting
    Flows are counted per edge (a new SYN with a new sequence number on a known 5-tuple is a
    new flow). Packets and bytes come only from ``FlowCounters``, which are cumulative per
    flow: the accumulator keeps the last value per flow and adds the increase, so periodic
    reads of the kernel's flow table and one final count from a capture file both work.

Bounds
    At most ``max_nodes`` nodes, ``max_edges`` edges and ``max_flows`` tracked flows; when
    one is full its least recently active 1/64 (at least 16, at most 1/4) is evicted (edges
    take their flows with them; nodes take their edges). Entries idle longer than
    ``idle_ttl_ns`` (packet time) leave at :meth:`GraphAccumulator.expire`, which
    :meth:`feed_many` and :meth:`snapshot` run. Every eviction is counted in :class:`Evictions`.

Performance: the per-event path is a couple of tuple-keyed dict lookups and attribute
writes on ``__slots__`` objects; nothing is allocated for events of known flows. The column
path (:meth:`GraphAccumulator.add_batch`, :mod:`netweave.graph.batch`) runs Python only once
per flow-opening event and folds the rest in compiled code, with the same result.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt

from netweave.capture.columns import KIND_HANDSHAKE, CounterColumns, FlowColumns, IntColumn
from netweave.capture.events import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.recordmaker import record_builder, rows_builder
from netweave.collector import gc_paused
from netweave.graph.batch import SegmentPlan, plan_segment
from netweave.graph.bulk import (
    E_ALIVE,
    E_BC2S,
    E_BORN,
    E_BS2C,
    E_FIRST,
    E_FLOWS,
    E_INFERRED,
    E_LAST,
    E_PC2S,
    E_PS2C,
    F_BC2S,
    F_BS2C,
    F_CLIENT,
    F_EDGE,
    F_EXISTS,
    F_INFERRED,
    F_ISN,
    F_LAST,
    F_PC2S,
    F_PS2C,
    N_BORN,
    N_EXISTS,
    N_FIRST,
    N_TOUCHED,
    NO_ISN,
    WELL_KNOWN_LIMIT,
    Folded,
    fold,
)
from netweave.graph.inventory import WILDCARDS, Inventory
from netweave.graph.model import (
    Annotation,
    Edge,
    Evictions,
    GraphLimits,
    GraphView,
    Node,
    Service,
    protocol_name,
)

__all__ = ["GraphAccumulator"]

EVICT_FRACTION: Final = 64
MIN_SEGMENT: Final = 256
# A snapshot builds one Edge per edge and one Node per node: without the frozen
# dataclass's per-field guard (see netweave.capture.recordmaker).
_build_edges: Final = rows_builder(Edge)
_make_node: Final = record_builder(Node)
_build_nodes: Final = rows_builder(Node)

FlowKey = tuple[int, str, int, str, int]
EdgeKey = tuple[str, str, int, int]


def _edge_order(client: IntColumn, server: IntColumn, proto: IntColumn, port: IntColumn
                ) -> IntColumn:  # fmt: skip
    """Positions of edges in (client, server, protocol name, port) order; ``client`` and
    ``server`` are the ends' ranks in address text order. One sort of the distinct protocol
    names, then integer keys: no tuple compares per edge."""
    text = {p: protocol_name(p) for p in set(proto.tolist())}
    names = sorted(set(text.values()))
    by_name = {p: names.index(name) for p, name in text.items()}
    ranked = np.array([by_name[p] for p in proto.tolist()], np.int64)
    return np.lexsort((port, ranked, server, client))


def _folded_edges(
    folded: Folded, table: npt.NDArray[np.object_]
) -> tuple[tuple[Edge, ...], IntColumn, IntColumn]:
    """:meth:`GraphAccumulator._live_edges` of a graph that has taken only ``folded``
    (no local addresses: no process names), read from its arrays (``table``: the text of
    each address id); with the newest edge time of each address id (-1 without an edge)
    and each address's rank in text order."""
    edge = folded.edge
    live = np.flatnonzero(edge[E_ALIVE])
    client, server, last = folded.edge_client[live], folded.edge_server[live], edge[E_LAST, live]
    newest = np.full(len(table), -1, np.int64)
    np.maximum.at(newest, client, last)
    np.maximum.at(newest, server, last)
    rank = np.empty(len(table), np.int64)
    rank[np.argsort(table, kind="stable")] = np.arange(len(table))
    at = live[_edge_order(rank[client], rank[server], folded.edge_proto[live],
                          folded.edge_port[live])]  # fmt: skip
    protos = folded.edge_proto[at].tolist()
    text = {p: protocol_name(p) for p in set(protos)}
    none = [None] * len(at)
    columns = (
        table[folded.edge_client[at]].tolist(), table[folded.edge_server[at]].tolist(),
        folded.edge_port[at].tolist(), [text[p] for p in protos],
        *(edge[row, at].tolist() for row in (E_FLOWS, E_PC2S, E_BC2S, E_PS2C, E_BS2C, E_FIRST,
                                              E_LAST)),
        (edge[E_INFERRED, at] != 0).tolist(), none, none,
    )  # fmt: skip
    return tuple(_build_edges(zip(*columns, strict=True))), newest, rank


def _folded_nodes(
    folded: Folded, table: npt.NDArray[np.object_], newest: IntColumn, rank: IntColumn
) -> tuple[Node, ...]:
    """The node records of a graph that has taken only ``folded`` and no annotation (no
    local addresses), in address text order; ``table``, ``newest`` and ``rank`` as
    :func:`_folded_edges` takes and gives them."""
    node = folded.node
    made = np.flatnonzero(node[N_EXISTS])
    made = made[np.argsort(rank[made], kind="stable")]
    n = len(made)
    nothing: list[tuple[()]] = [()] * n
    columns = (
        table[made].tolist(), [False] * n, [None] * n, nothing, node[N_FIRST, made].tolist(),
        np.maximum(node[N_TOUCHED, made], newest[made]).tolist(), nothing, nothing,
    )  # fmt: skip
    return tuple(_build_nodes(zip(*columns, strict=True)))


def _batch(size: int) -> int:
    """How many entries to evict from a full table of ``size``: 1/64, at least 16, at most 1/4."""
    return max(1, min(size // 4, max(size // EVICT_FRACTION, 16)))


class _Edge:
    __slots__ = (
        "bytes_c2s",
        "bytes_s2c",
        "client",
        "dead",
        "first_ns",
        "flows",
        "inferred",
        "key",
        "last_ns",
        "pkts_c2s",
        "pkts_s2c",
        "port",
        "proto",
        "server",
    )

    def __init__(self, key: EdgeKey, ts: int, inferred: bool) -> None:
        self.key = key
        self.client, self.server, self.port, self.proto = key
        self.flows = 0
        self.pkts_c2s = 0
        self.bytes_c2s = 0
        self.pkts_s2c = 0
        self.bytes_s2c = 0
        self.first_ns = ts
        self.last_ns = ts
        self.inferred = inferred
        self.dead = False


class _Flow:
    __slots__ = (
        "bytes_c2s",
        "bytes_s2c",
        "client",
        "client_port",
        "edge",
        "inferred",
        "isn",
        "last_ns",
        "pkts_c2s",
        "pkts_s2c",
    )

    def __init__(
        self,
        edge: _Edge,
        client: str,
        client_port: int,
        ts: int,
        inferred: bool,
        isn: int,
    ) -> None:
        self.edge = edge
        self.client = client
        self.client_port = client_port
        self.last_ns = ts
        self.inferred = inferred
        self.isn = isn
        self.pkts_c2s = 0
        self.bytes_c2s = 0
        self.pkts_s2c = 0
        self.bytes_s2c = 0

    def table_keys(self) -> tuple[FlowKey, FlowKey]:
        """Both orientations of the 5-tuple the flow table holds this flow under."""
        edge = self.edge
        return (
            (edge.proto, self.client, self.client_port, edge.server, edge.port),
            (edge.proto, edge.server, edge.port, self.client, self.client_port),
        )


class _Node:
    __slots__ = ("annotations", "edges", "first_ns", "ip", "services", "touched_ns")

    def __init__(self, ip: str, ts: int) -> None:
        self.ip = ip
        self.first_ns = ts
        self.touched_ns = ts
        self.edges: set[EdgeKey] = set()
        self.annotations: list[Annotation] = []
        self.services: dict[tuple[int, int], list[Annotation]] = {}

    def annotation_count(self) -> int:
        if not self.services:
            return len(self.annotations)
        return len(self.annotations) + sum(len(v) for v in self.services.values())


class GraphAccumulator:
    """Folds capture events into a bounded graph of nodes and client -> server edges."""

    def __init__(self, limits: GraphLimits | None = None) -> None:
        self.limits = limits or GraphLimits()
        if min(self.limits.max_nodes, self.limits.max_edges, self.limits.max_flows) < 2:
            raise ValueError("graph limits: max_nodes, max_edges and max_flows must be >= 2")
        self._flows: dict[FlowKey, _Flow] = {}
        # Edges and flows of a capture taken whole, made objects when needed (_loaded_due).
        self._unloaded: tuple[Folded, tuple[str, ...]] | None = None
        self._unloaded_nodes: tuple[Folded, tuple[str, ...]] | None = None
        self._unloaded_keys = 0
        self._flow_slots = 2 * self.limits.max_flows  # two keys per flow
        self._edges: dict[EdgeKey, _Edge] = {}
        self._nodes: dict[str, _Node] = {}
        self._now = 0
        self._last_expire = 0
        self.events = 0
        self._ev = {
            "nodes_capacity": 0,
            "nodes_idle": 0,
            "edges_capacity": 0,
            "edges_idle": 0,
            "flows_capacity": 0,
            "flows_idle": 0,
            "annotations_capacity": 0,
        }
        self._inventory = Inventory()
        self._host: str | None = None
        self._local: frozenset[str] = frozenset()
        self._listen: dict[tuple[int, str, int], str | None] = {}
        self._listen_any: dict[tuple[int, int], str | None] = {}
        self._outbound: dict[tuple[int, str, int], str | None] = {}

    # -- inputs ---------------------------------------------------------------------------

    def set_inventory(self, inventory: Inventory, host: str | None = None) -> None:
        """Tell the graph this host's listeners, own addresses and outbound list.

        Listeners decide the direction of flows whose handshake was not seen; local
        addresses get ``host`` and process names in the snapshot. Replaces the previous one.
        """
        self._inventory = inventory
        self._host = host
        self._local = frozenset(inventory.local_ips)
        numbers = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
        self._listen = {}
        self._listen_any = {}
        for item in inventory.listeners:
            proto = numbers.get(item.proto)
            if proto is None:
                continue
            if item.address in WILDCARDS:
                self._listen_any.setdefault((proto, item.port), item.process)
            else:
                self._listen.setdefault((proto, item.address, item.port), item.process)
        self._outbound = {}
        for out in inventory.outbound:
            proto = numbers.get(out.proto)
            if proto is not None:
                self._outbound[(proto, out.ip, out.port)] = out.process

    def feed(self, event: CaptureEvent) -> None:
        """Take one capture event."""
        self.feed_many((event,))

    def feed_many(self, events: Iterable[CaptureEvent]) -> int:
        """Take capture events in arrival order; return how many were taken.

        The cyclic garbage collector is paused while the events are taken: the graph's
        objects hold no reference cycles, and a full collection over a large flow table
        would otherwise cost more than the events themselves.
        """
        with gc_paused():
            self._loaded_due()
            return self._feed(events)

    def _feed(self, events: Iterable[CaptureEvent]) -> int:
        get = self._flows.get
        now = self._now
        count = 0
        for ev in events:
            count += 1
            cls = ev.__class__
            if cls is FlowCounters:
                self._take_counters(ev)  # type: ignore[arg-type]
                continue
            ts = ev.timestamp_ns  # type: ignore[union-attr]
            if ts > now:  # noqa: PLR1730 - a compare is cheaper than max() here
                now = ts
            if cls is TcpHandshake:
                hs: TcpHandshake = ev  # type: ignore[assignment]
                flow = get((PROTO_TCP, hs.src, hs.src_port, hs.dst, hs.dst_port))
                if flow is not None and flow.edge.dead:
                    self._drop_flow(flow)  # its edge was evicted: open it again
                    flow = None
                if hs.tcp_flags & TCP_ACK:
                    if flow is None:
                        self._open(PROTO_TCP, hs.dst, hs.dst_port, hs.src, hs.src_port,
                                   ts, False, NO_ISN)  # fmt: skip
                        continue
                    if flow.inferred:
                        self._reopen(flow, hs.dst, hs.dst_port, hs.src, hs.src_port, ts, NO_ISN)
                        continue
                elif flow is None:
                    self._open(PROTO_TCP, hs.src, hs.src_port, hs.dst, hs.dst_port,
                               ts, False, hs.seq)  # fmt: skip
                    continue
                elif flow.isn != hs.seq:
                    if flow.isn == NO_ISN and not flow.inferred and flow.client == hs.src:
                        flow.isn = hs.seq  # the SYN-ACK came first
                    else:  # a new connection on a known 5-tuple (or a first handshake)
                        self._reopen(flow, hs.src, hs.src_port, hs.dst, hs.dst_port, ts, hs.seq)
                        continue
            else:
                other: FlowSeen | FirstPayload = ev  # type: ignore[assignment]
                flow = get((other.protocol, other.src, other.src_port, other.dst, other.dst_port))
                if flow is not None and flow.edge.dead:
                    self._drop_flow(flow)  # its edge was evicted: open it again
                    flow = None
                if flow is None:
                    self._open_unseen(
                        other.protocol, other.src, other.src_port, other.dst, other.dst_port, ts
                    )
                    continue
            flow.last_ns = ts
            edge = flow.edge
            if ts > edge.last_ns:  # noqa: PLR1730 - hot path
                edge.last_ns = ts
        if now > self._now:  # noqa: PLR1730 - counters may have moved it further already
            self._now = now
        self._taken(count)
        return count

    def add_batch(self, cols: FlowColumns) -> int:
        """Take events in column form, in arrival order; return how many were taken.

        The graph comes out exactly as :meth:`feed_many` of the same events would leave it,
        but Python runs only for the events that may change its structure (see
        :mod:`netweave.graph.batch`); the rest are folded in by one compiled pass. Segments
        are sized so that no capacity eviction can happen inside one; near capacity the
        events are taken one at a time.
        """
        n = len(cols)
        if n == 0:
            return 0
        with gc_paused():
            self._loaded_due()
            self._add_batch(cols)
        self._taken(n)
        return n

    def add_counters(self, cols: CounterColumns) -> int:
        """Take flow counters in column form (as ``feed_many`` of the same ``FlowCounters``
        records in row order would); return how many were taken."""
        n = len(cols)
        if n == 0:
            return 0
        names = cols.addresses
        count = self._count
        with gc_paused():
            self._loaded_due()
            for row in zip(
                cols.protocol.tolist(), [names[i] for i in cols.a.tolist()],
                cols.a_port.tolist(), [names[i] for i in cols.b.tolist()], cols.b_port.tolist(),
                cols.packets_ab.tolist(), cols.bytes_ab.tolist(), cols.packets_ba.tolist(),
                cols.bytes_ba.tolist(), cols.first_ns.tolist(), cols.last_ns.tolist(),
                cols.handshake_seen.tolist(), strict=True,
            ):  # fmt: skip
                count(*row)
        self._taken(n)
        return n

    def take_capture(self, stream: FlowColumns, counters: CounterColumns) -> bool:
        """Take a whole capture at once: its events, then its counters, when that is exact.

        For an empty graph with no listeners and no idle TTL, one compiled pass
        (:mod:`netweave.graph.bulk`) folds them all and objects are made only for the nodes,
        edges and flows left: the graph is the one ``add_batch(stream)`` then
        ``add_counters(counters)`` would leave. Returns False, having taken nothing, when
        that cannot be promised (the graph holds something, listeners, an idle TTL, a bound
        that would have evicted); the caller then takes the general path.
        """
        if (self._edges or self._nodes or self._flows or self._unloaded or self._listen
                or self._listen_any
                or self.limits.idle_ttl_ns
                or (stream.seq[stream.kind == KIND_HANDSHAKE] < 0).any()):  # fmt: skip
            return False
        limits = self.limits
        folded = fold(stream, counters, max_nodes=limits.max_nodes,
                      max_edges=limits.max_edges, max_flows=limits.max_flows)  # fmt: skip
        if not folded.ok:
            return False
        with gc_paused():
            self._load(folded, stream.addresses)
        if folded.now_ns > self._now:  # noqa: PLR1730
            self._now = folded.now_ns
        self.events += len(stream) + len(counters)
        return True

    def _load(self, folded: Folded, names: tuple[str, ...]) -> None:
        """Take ``folded`` into an empty graph without making objects yet: its nodes become
        objects when one is annotated or made (:meth:`_nodes_due`), its edges and tracked
        flows when the graph next takes events or evicts a node (:meth:`_loaded_due`; a
        replay never does). Until then a snapshot reads them from ``folded``."""
        self._unloaded = (folded, names)
        self._unloaded_nodes = (folded, names)
        # The flow table holds each flow under both orientations of its 5-tuple: one key
        # when both ends are the same socket.
        kept = folded.flow[F_EXISTS] != 0
        same = (folded.end_addr[0] == folded.end_addr[1]) & (
            folded.end_port[0] == folded.end_port[1]
        )
        self._unloaded_keys = int(2 * np.count_nonzero(kept) - np.count_nonzero(kept & same))

    def _nodes_due(self) -> None:
        """Make the nodes a whole capture left (see :meth:`_load`) objects."""
        if self._unloaded_nodes is not None:
            folded, names = self._unloaded_nodes
            self._unloaded_nodes = None
            self._load_nodes(folded, names)

    def _loaded_due(self) -> None:
        """Make the nodes, edges and flows a whole capture left (see :meth:`_load`) objects."""
        self._nodes_due()
        if self._unloaded is not None:
            folded, names = self._unloaded
            self._unloaded, self._unloaded_keys = None, 0
            self._load_flows(folded, names, self._load_edges(folded, names))

    def _load_nodes(self, folded: Folded, names: tuple[str, ...]) -> None:
        node = folded.node
        made = np.flatnonzero(node[N_EXISTS])
        made = made[np.argsort(node[N_BORN, made], kind="stable")]
        nodes = self._nodes
        for ip, first, touched in zip(
            [names[i] for i in made.tolist()], node[N_FIRST, made].tolist(),
            node[N_TOUCHED, made].tolist(), strict=True,
        ):  # fmt: skip
            made_node = nodes[ip] = _Node(ip, first)
            made_node.touched_ns = touched

    def _load_edges(self, folded: Folded, names: tuple[str, ...]) -> list[_Edge | None]:
        """The live edges, in the order they were made; returns them by edge id."""
        nodes = self._nodes
        edge = folded.edge
        live = np.flatnonzero(edge[E_ALIVE])
        live = live[np.argsort(edge[E_BORN, live], kind="stable")]
        objects: list[_Edge | None] = [None] * edge.shape[1]
        edges = self._edges
        for (e, client, server, port, proto, flows, pc2s, bc2s, ps2c, bs2c, first, last,
             guessed) in zip(
            live.tolist(), [names[i] for i in folded.edge_client[live].tolist()],
            [names[i] for i in folded.edge_server[live].tolist()],
            folded.edge_port[live].tolist(), folded.edge_proto[live].tolist(),
            *(edge[row, live].tolist() for row in (E_FLOWS, E_PC2S, E_BC2S, E_PS2C, E_BS2C,
                                                   E_FIRST, E_LAST, E_INFERRED)),
            strict=True,
        ):  # fmt: skip
            key = (client, server, port, proto)
            made_edge = _Edge(key, first, guessed != 0)
            made_edge.last_ns = last
            made_edge.flows = flows
            made_edge.pkts_c2s, made_edge.bytes_c2s = pc2s, bc2s
            made_edge.pkts_s2c, made_edge.bytes_s2c = ps2c, bs2c
            edges[key] = objects[e] = made_edge
            nodes[client].edges.add(key)
            nodes[server].edges.add(key)
        return objects

    def _load_flows(
        self, folded: Folded, names: tuple[str, ...], objects: list[_Edge | None]
    ) -> None:
        flow = folded.flow
        kept = np.flatnonzero(flow[F_EXISTS])
        side = flow[F_CLIENT, kept]
        addr, port_of = folded.end_addr, folded.end_port
        table = self._flows
        for e, client, cport, server, sport, proto, last, guess, isn, pc2s, bc2s, ps2c, bs2c in zip(
            flow[F_EDGE, kept].tolist(), [names[i] for i in addr[side, kept].tolist()],
            port_of[side, kept].tolist(), [names[i] for i in addr[1 - side, kept].tolist()],
            port_of[1 - side, kept].tolist(), folded.proto[kept].tolist(),
            *(flow[row, kept].tolist() for row in (F_LAST, F_INFERRED, F_ISN, F_PC2S, F_BC2S,
                                                   F_PS2C, F_BS2C)),
            strict=True,
        ):  # fmt: skip
            owner = objects[e]
            assert owner is not None  # a tracked flow's edge is live
            made_flow = _Flow(owner, client, cport, last, guess != 0, isn)
            made_flow.pkts_c2s, made_flow.bytes_c2s = pc2s, bc2s
            made_flow.pkts_s2c, made_flow.bytes_s2c = ps2c, bs2c
            table[(proto, client, cport, server, sport)] = made_flow
            table[(proto, server, sport, client, cport)] = made_flow

    def _taken(self, n: int) -> None:
        """Count ``n`` events taken; expire idle entries every eighth of the idle TTL."""
        self.events += n
        ttl = self.limits.idle_ttl_ns
        if ttl and self._now - self._last_expire >= ttl // 8:
            self.expire()

    def _add_batch(self, cols: FlowColumns) -> None:
        n = len(cols)
        if (cols.seq[cols.kind == KIND_HANDSHAKE] < 0).any():
            self._take_events(cols, 0, n)  # not a 32-bit sequence number: no shortcut
            return
        plan = plan_segment(cols, 0, n)
        if self._room(len(plan.index), cols):
            self._take_plan(cols, plan)
            return
        pos = 0
        while pos < n:
            margin = self._margin()
            if margin >= MIN_SEGMENT:
                stop = min(n, pos + margin)
                self._take_plan(cols, plan_segment(cols, pos, stop))
            else:
                stop = min(n, pos + MIN_SEGMENT)
                self._take_events(cols, pos, stop)
            pos = stop

    def _room(self, anchors: int, cols: FlowColumns) -> bool:
        """True when ``anchors`` events that open flows cannot fill any table."""
        limits = self.limits
        if len(self._flows) + 2 * anchors > self._flow_slots:
            return False
        if len(self._edges) + anchors > limits.max_edges:
            return False
        nodes = self._nodes
        if len(nodes) + 2 * anchors <= limits.max_nodes:
            return True
        fresh = sum(1 for ip in cols.addresses if ip not in nodes)
        return len(nodes) + fresh <= limits.max_nodes

    def _margin(self) -> int:
        """How many events surely open no flow, edge or node beyond the bounds."""
        limits = self.limits
        return min(
            (self._flow_slots - len(self._flows)) // 2,
            limits.max_edges - len(self._edges),
            (limits.max_nodes - len(self._nodes)) // 2,
        )

    def _take_plan(self, cols: FlowColumns, plan: SegmentPlan) -> None:
        """Run the anchors of a segment one by one, each followed by its folded touches."""
        at = plan.index
        addresses = cols.addresses
        flows = self._flows
        get, put, edge_of = flows.get, flows.setdefault, self._edges.get
        slots = self._flow_slots
        step, open_flow = self._step, self._open
        for kind, ts, proto, src, sport, dst, dport, flags, seq, touched, last, top in zip(
            cols.kind[at].tolist(), cols.timestamp_ns[at].tolist(), cols.protocol[at].tolist(),
            cols.src[at].tolist(), cols.src_port[at].tolist(), cols.dst[at].tolist(),
            cols.dst_port[at].tolist(), cols.tcp_flags[at].tolist(), cols.seq[at].tolist(),
            plan.touched.tolist(), plan.last_ts.tolist(), plan.max_ts.tolist(), strict=True,
        ):  # fmt: skip
            client, server = addresses[src], addresses[dst]
            key = (proto, client, sport, server, dport)
            edge = None
            if kind == KIND_HANDSHAKE and not flags & TCP_ACK and len(flows) < slots:
                edge = edge_of((client, server, dport, PROTO_TCP))
            if edge is not None:
                # The common anchor, a SYN on a known edge: when its flow is new, _open
                # inlined (one lookup that inserts); else the general step.
                new = _Flow(edge, client, sport, ts, False, seq)
                flow = put(key, new)
                if flow is new:
                    edge.inferred = False
                    if ts < edge.first_ns:  # noqa: PLR1730
                        edge.first_ns = ts
                    if ts > edge.last_ns:  # noqa: PLR1730
                        edge.last_ns = ts
                    edge.flows += 1
                    flows[(PROTO_TCP, server, dport, client, sport)] = new
                else:
                    flow = step(flow, kind, ts, proto, client, sport, server, dport, flags, seq)
            else:
                known = get(key)
                if known is None and kind == KIND_HANDSHAKE and not flags & TCP_ACK:
                    flow = open_flow(PROTO_TCP, client, sport, server, dport, ts, False, seq)
                else:
                    flow = step(known, kind, ts, proto, client, sport, server, dport, flags, seq)
            if touched:
                flow.last_ns = last
                edge = flow.edge
                if top > edge.last_ns:  # noqa: PLR1730 - hot path
                    edge.last_ns = top
        if plan.max_ts_all > self._now:  # noqa: PLR1730
            self._now = plan.max_ts_all

    def _take_events(self, cols: FlowColumns, start: int, stop: int) -> None:
        """Take events ``start:stop`` one at a time (exact whatever the bounds)."""
        part = slice(start, stop)
        addresses = cols.addresses
        get = self._flows.get
        step = self._step
        now = self._now
        for kind, ts, proto, src, sport, dst, dport, flags, seq in zip(
            cols.kind[part].tolist(), cols.timestamp_ns[part].tolist(),
            cols.protocol[part].tolist(), cols.src[part].tolist(), cols.src_port[part].tolist(),
            cols.dst[part].tolist(), cols.dst_port[part].tolist(), cols.tcp_flags[part].tolist(),
            cols.seq[part].tolist(), strict=True,
        ):  # fmt: skip
            if ts > now:  # noqa: PLR1730
                now = ts
            client, server = addresses[src], addresses[dst]
            flow = get((proto, client, sport, server, dport))
            step(flow, kind, ts, proto, client, sport, server, dport, flags, seq)
        if now > self._now:  # noqa: PLR1730
            self._now = now

    def _step(
        self, flow: _Flow | None, kind: int, ts: int, proto: int, src: str, sport: int,
        dst: str, dport: int, flags: int, seq: int,
    ) -> _Flow:  # fmt: skip
        """One event as :meth:`_feed` takes it, ``flow`` being what its 5-tuple maps to now;
        returns the flow it leaves current."""
        if flow is not None and flow.edge.dead:
            self._drop_flow(flow)  # its edge was evicted: open it again
            flow = None
        if kind == KIND_HANDSHAKE:
            if flags & TCP_ACK:
                if flow is None:
                    return self._open(PROTO_TCP, dst, dport, src, sport, ts, False, NO_ISN)
                if flow.inferred:
                    return self._reopen(flow, dst, dport, src, sport, ts, NO_ISN)
            elif flow is None:
                return self._open(PROTO_TCP, src, sport, dst, dport, ts, False, seq)
            elif flow.isn != seq:
                if flow.isn == NO_ISN and not flow.inferred and flow.client == src:
                    flow.isn = seq  # the SYN-ACK came first
                else:  # a new connection on a known 5-tuple (or a first handshake)
                    return self._reopen(flow, src, sport, dst, dport, ts, seq)
        elif flow is None:
            return self._open_unseen(proto, src, sport, dst, dport, ts)
        flow.last_ns = ts
        edge = flow.edge
        if ts > edge.last_ns:  # noqa: PLR1730 - hot path
            edge.last_ns = ts
        return flow

    def annotate_node(self, ip: str, note: Annotation) -> None:
        """Attach ``note`` to node ``ip`` (created if absent), replacing the same key and source.

        Nodes keep at most ``max_annotations_per_node`` notes (services included); the oldest
        goes first and is counted in ``Evictions.annotations_capacity``.
        """
        node = self._node(ip, note.updated_ns)
        self._annotate(node, node.annotations, note)

    def annotate_service(self, ip: str, port: int, protocol: int, note: Annotation) -> None:
        """Attach ``note`` to the service ``ip``:``port``/``protocol`` (6 TCP, 17 UDP)."""
        node = self._node(ip, note.updated_ns)
        bucket = node.services.setdefault((port, protocol), [])
        self._annotate(node, bucket, note)

    def annotate_all(self, notes: list[tuple[str, int, int, Annotation]]) -> bool:
        """Put many annotations on at once, as ``annotate_node`` (protocol 0) and
        ``annotate_service`` (``ip, port, protocol, note``) one by one in this order would.

        Only the last note of each node or service, key and source is kept (in the place of
        the first), so this is exact when every node exists and none would overflow
        ``max_annotations_per_node``; otherwise nothing is done and False is returned.
        """
        self._nodes_due()
        last: dict[tuple[str, int, int, str, str], Annotation] = {}
        newest: dict[str, int] = {}
        for ip, port, proto, note in notes:
            last[(ip, port, proto, note.key, note.source)] = note
            if note.updated_ns > newest.get(ip, -1):
                newest[ip] = note.updated_ns
        nodes = self._nodes
        if not all(ip in nodes for ip in newest):
            return False
        count = {ip: nodes[ip].annotation_count() for ip in newest}
        for ip, port, proto, key, source in last:
            node = nodes[ip]
            bucket = node.services.get((port, proto), ()) if proto else node.annotations
            if not any(a.key == key and a.source == source for a in bucket):
                count[ip] += 1
        cap = self.limits.max_annotations_per_node
        if any(n > cap for n in count.values()):
            return False
        for (ip, port, proto, _key, _source), note in last.items():
            node = nodes[ip]
            bucket = node.services.setdefault((port, proto), []) if proto else node.annotations
            self._annotate(node, bucket, note)
        for ip, ts in newest.items():
            node = nodes[ip]
            if ts > node.touched_ns:  # noqa: PLR1730
                node.touched_ns = ts
        return True

    # -- outputs --------------------------------------------------------------------------

    def snapshot(self, now_ns: int | None = None) -> GraphView:
        """Expire idle entries, then return an immutable copy of the graph.

        ``now_ns`` is the current time for the idle TTL (a live agent passes the wall clock,
        so a quiet graph still ages); by default the newest event time seen.
        """
        self.expire(now_ns)
        with gc_paused():  # tens of thousands of acyclic records: nothing to collect
            return self._snapshot()

    def _snapshot(self) -> GraphView:
        if self._unloaded is not None and not self._local:
            folded, names = self._unloaded
            table = np.empty(len(names), dtype=object)
            table[:] = names
            edges, newest, rank = _folded_edges(folded, table)
            if self._unloaded_nodes is not None:
                nodes = _folded_nodes(folded, table, newest, rank)
            else:
                seen = np.flatnonzero(newest >= 0).tolist()
                activity = dict(zip([names[i] for i in seen], newest[seen].tolist(), strict=True))
                nodes = self._node_records(activity)
        else:
            self._loaded_due()
            edges, activity = self._live_edges()
            nodes = self._node_records(activity)
        return GraphView(
            nodes=nodes,
            edges=edges,
            evictions=self.evictions,
            events=self.events,
            flows_tracked=(len(self._flows) + self._unloaded_keys) // 2,
            now_ns=self._now,
        )

    def _live_edges(self) -> tuple[tuple[Edge, ...], dict[str, int]]:
        """Every edge's record in (client, server, protocol, port) order, and the newest
        edge time of every address that has an edge."""
        live = list(self._edges.values())
        activity: dict[str, int] = {}
        for e in live:
            last = e.last_ns
            if last > activity.get(e.client, 0):
                activity[e.client] = last
            if last > activity.get(e.server, 0):
                activity[e.server] = last
        rank = {ip: i for i, ip in enumerate(sorted(self._nodes.keys() | activity.keys()))}
        order = _edge_order(
            np.fromiter((rank[e.client] for e in live), np.int64, len(live)),
            np.fromiter((rank[e.server] for e in live), np.int64, len(live)),
            np.fromiter((e.proto for e in live), np.int64, len(live)),
            np.fromiter((e.port for e in live), np.int64, len(live)),
        )
        return self._edge_records([live[k] for k in order.tolist()]), activity

    @property
    def evictions(self) -> Evictions:
        """Counts of everything evicted so far, by kind and reason."""
        return Evictions(**self._ev)

    @property
    def now_ns(self) -> int:
        """Newest event time seen (nanoseconds since the epoch)."""
        return self._now

    def expire(self, now_ns: int | None = None) -> None:
        """Drop flows, edges and edge-less nodes idle for longer than the idle TTL."""
        ttl = self.limits.idle_ttl_ns
        now = self._now if now_ns is None else max(now_ns, self._now)
        self._last_expire = now
        if not ttl:
            return
        self._loaded_due()
        cutoff = now - ttl
        idle = {id(f): f for f in self._flows.values() if f.last_ns < cutoff or f.edge.dead}
        for flow in idle.values():
            self._drop_flow(flow)
        self._ev["flows_idle"] += sum(1 for f in idle.values() if not f.edge.dead)
        doomed = [e for e in self._edges.values() if e.last_ns < cutoff]
        self._drop_edges(doomed)
        self._ev["edges_idle"] += len(doomed)
        for node in [n for n in self._nodes.values() if not n.edges and n.touched_ns < cutoff]:
            del self._nodes[node.ip]
            self._ev["nodes_idle"] += 1

    # -- flows and edges ------------------------------------------------------------------

    def _open_unseen(
        self, proto: int, src: str, sport: int, dst: str, dport: int, ts: int
    ) -> _Flow:
        """A flow first seen without its handshake: decide who is the server."""
        by_listener = self._listener_side(proto, src, sport, dst, dport)
        if proto == PROTO_UDP:
            if by_listener is None:
                flip = sport < WELL_KNOWN_LIMIT <= dport
            else:
                flip = by_listener == "src"
            if flip:
                return self._open(proto, dst, dport, src, sport, ts, True, NO_ISN)
            return self._open(proto, src, sport, dst, dport, ts, False, NO_ISN)
        # Else the lower port serves (a well-known port is always the lower one).
        server_is_dst = by_listener == "dst" if by_listener is not None else dport <= sport
        if server_is_dst:
            return self._open(proto, src, sport, dst, dport, ts, True, NO_ISN)
        return self._open(proto, dst, dport, src, sport, ts, True, NO_ISN)

    def _listener_side(self, proto: int, src: str, sport: int, dst: str, dport: int) -> str | None:
        if not self._listen and not self._listen_any:
            return None
        local = self._local
        if (proto, dst, dport) in self._listen or (
            (proto, dport) in self._listen_any and dst in local
        ):
            return "dst"
        if (proto, src, sport) in self._listen or (
            (proto, sport) in self._listen_any and src in local
        ):
            return "src"
        return None

    def _open(
        self,
        proto: int,
        client: str,
        cport: int,
        server: str,
        sport: int,
        ts: int,
        inferred: bool,
        isn: int,
    ) -> _Flow:
        key: EdgeKey = (client, server, sport, proto)
        edge = self._edges.get(key)
        if edge is None:
            edge = self._new_edge(key, ts, inferred)
        else:
            if not inferred:
                edge.inferred = False
            if ts < edge.first_ns:  # noqa: PLR1730 - once per new flow, keep it cheap
                edge.first_ns = ts
            if ts > edge.last_ns:  # noqa: PLR1730
                edge.last_ns = ts
        edge.flows += 1
        flows = self._flows
        if len(flows) >= self._flow_slots:
            self._evict_flows()
        flow = _Flow(edge, client, cport, ts, inferred, isn)
        flows[(proto, client, cport, server, sport)] = flow
        flows[(proto, server, sport, client, cport)] = flow
        return flow

    def _reopen(
        self, old: _Flow, client: str, cport: int, server: str, sport: int, ts: int, isn: int
    ) -> _Flow:
        """Replace a tracked flow: a new connection on its 5-tuple, or its handshake at last.

        A flow whose direction was guessed moves to the edge its handshake shows: the guess
        is taken back from the old edge (flow, packets and bytes), and an edge left with no
        flow goes (a correction, not an eviction).
        """
        self._drop_flow(old)
        if old.inferred:
            edge = old.edge
            edge.flows -= 1
            edge.pkts_c2s -= old.pkts_c2s
            edge.bytes_c2s -= old.bytes_c2s
            edge.pkts_s2c -= old.pkts_s2c
            edge.bytes_s2c -= old.bytes_s2c
            if edge.flows <= 0 and not edge.dead:
                self._drop_edges([edge])
        return self._open(old.edge.proto, client, cport, server, sport, ts, False, isn)

    def _new_edge(self, key: EdgeKey, ts: int, inferred: bool) -> _Edge:
        if len(self._edges) >= self.limits.max_edges:
            self._evict_edges()
        edge = _Edge(key, ts, inferred)
        self._edges[key] = edge
        self._node(key[0], ts).edges.add(key)
        self._node(key[1], ts).edges.add(key)
        return edge

    def _node(self, ip: str, ts: int) -> _Node:
        if self._unloaded_nodes is not None:
            self._nodes_due()
        node = self._nodes.get(ip)
        if node is None:
            if len(self._nodes) >= self.limits.max_nodes:
                self._evict_nodes()
            node = _Node(ip, ts)
            self._nodes[ip] = node
        elif ts > node.touched_ns:
            node.touched_ns = ts
        return node

    def _take_counters(self, c: FlowCounters) -> None:
        self._count(
            c.protocol, c.a, c.a_port, c.b, c.b_port, c.packets_a_to_b, c.bytes_a_to_b,
            c.packets_b_to_a, c.bytes_b_to_a, c.first_seen_ns, c.last_seen_ns, c.handshake_seen,
        )  # fmt: skip

    def _count(
        self, proto: int, a: str, a_port: int, b: str, b_port: int, p_ab: int, b_ab: int,
        p_ba: int, b_ba: int, first: int, last: int, handshake_seen: bool,
    ) -> None:  # fmt: skip
        """One flow's cumulative counters (``a`` sent its first packet)."""
        flow = self._flows.get((proto, a, a_port, b, b_port))
        if flow is not None and flow.edge.dead:
            self._drop_flow(flow)  # its edge was evicted: open it again
            flow = None
        if flow is None:
            if handshake_seen:
                flow = self._open(proto, a, a_port, b, b_port, first, False, NO_ISN)
            else:
                flow = self._open_unseen(proto, a, a_port, b, b_port, first)
        if a == flow.client and a_port == flow.client_port:
            p_c2s, b_c2s, p_s2c, b_s2c = p_ab, b_ab, p_ba, b_ba
        else:
            p_c2s, b_c2s, p_s2c, b_s2c = p_ba, b_ba, p_ab, b_ab
        edge = flow.edge
        # Counters are cumulative per flow: add only the growth since the last read.
        if p_c2s > flow.pkts_c2s:
            edge.pkts_c2s += p_c2s - flow.pkts_c2s
            flow.pkts_c2s = p_c2s
        if b_c2s > flow.bytes_c2s:
            edge.bytes_c2s += b_c2s - flow.bytes_c2s
            flow.bytes_c2s = b_c2s
        if p_s2c > flow.pkts_s2c:
            edge.pkts_s2c += p_s2c - flow.pkts_s2c
            flow.pkts_s2c = p_s2c
        if b_s2c > flow.bytes_s2c:
            edge.bytes_s2c += b_s2c - flow.bytes_s2c
            flow.bytes_s2c = b_s2c
        if first < edge.first_ns:  # noqa: PLR1730 - hot path
            edge.first_ns = first
        if last > flow.last_ns:  # noqa: PLR1730
            flow.last_ns = last
        if last > edge.last_ns:  # noqa: PLR1730
            edge.last_ns = last
        if last > self._now:  # noqa: PLR1730
            self._now = last

    # -- eviction -------------------------------------------------------------------------

    def _drop_flow(self, flow: _Flow) -> None:
        flows = self._flows
        for key in flow.table_keys():
            if flows.get(key) is flow:
                del flows[key]

    def _drop_edges(self, doomed: list[_Edge]) -> None:
        """Remove edges and their node links.

        Their tracked flows are only marked (``dead``): the flow table drops them when
        they are seen again, at the idle TTL, or at capacity, so an edge costs O(1) to drop.
        """
        for edge in doomed:
            edge.dead = True
            del self._edges[edge.key]
            for ip in (edge.client, edge.server):
                node = self._nodes.get(ip)
                if node is not None:
                    node.edges.discard(edge.key)

    def _evict_flows(self) -> None:
        unique = {id(f): f for f in self._flows.values()}
        dead = [f for f in unique.values() if f.edge.dead]
        for flow in dead:  # flows of evicted edges were already counted with their edge
            self._drop_flow(flow)
        if dead:
            return
        batch = _batch(len(unique))
        for flow in heapq.nsmallest(batch, unique.values(), key=lambda f: f.last_ns):
            self._drop_flow(flow)
            self._ev["flows_capacity"] += 1

    def _evict_edges(self) -> None:
        batch = _batch(len(self._edges))
        doomed = heapq.nsmallest(batch, self._edges.values(), key=lambda e: e.last_ns)
        self._drop_edges(doomed)
        self._ev["edges_capacity"] += len(doomed)

    def _node_activity(self, node: _Node) -> int:
        edges = self._edges
        return max([node.touched_ns, *(edges[k].last_ns for k in node.edges if k in edges)])

    def _evict_nodes(self) -> None:
        self._loaded_due()
        # Edges carry the activity; a node's own stamp only moves when an edge is made or it
        # is annotated. Rank by the stamp first, then by true activity among the stalest.
        batch = _batch(len(self._nodes))
        stale = heapq.nsmallest(4 * batch, self._nodes.values(), key=lambda n: n.touched_ns)
        victims = sorted(stale, key=self._node_activity)[:batch]
        doomed = {k: self._edges[k] for n in victims for k in n.edges if k in self._edges}
        self._drop_edges(list(doomed.values()))
        self._ev["edges_capacity"] += len(doomed)
        for node in victims:
            self._nodes.pop(node.ip, None)
            self._ev["nodes_capacity"] += 1

    def _annotate(self, node: _Node, bucket: list[Annotation], note: Annotation) -> None:
        for i, old in enumerate(bucket):
            if old.key == note.key and old.source == note.source:
                bucket[i] = note
                return
        bucket.append(note)
        if node.annotation_count() > self.limits.max_annotations_per_node:
            self._drop_oldest_annotation(node)
            self._ev["annotations_capacity"] += 1

    def _drop_oldest_annotation(self, node: _Node) -> None:
        buckets = [node.annotations, *node.services.values()]
        oldest = min(
            ((b, i) for b in buckets for i in range(len(b))), key=lambda bi: bi[0][bi[1]].updated_ns
        )
        del oldest[0][oldest[1]]
        for port_proto in [k for k, v in node.services.items() if not v]:
            del node.services[port_proto]

    # -- records --------------------------------------------------------------------------

    def _edge_records(self, live: list[_Edge]) -> tuple[Edge, ...]:
        """The records of ``live`` edges, in that order (built column by column)."""
        n = len(live)
        server_process: list[str | None] = [None] * n
        client_process: list[str | None] = [None] * n
        if self._local:
            server_process = [self._process_of(e) for e in live]
            client_process = [
                self._outbound.get((e.proto, e.server, e.port)) if e.client in self._local
                else None
                for e in live
            ]  # fmt: skip
        names = {p: protocol_name(p) for p in {e.proto for e in live}}
        return tuple(
            _build_edges(
                (e.client, e.server, e.port, names[e.proto], e.flows, e.pkts_c2s, e.bytes_c2s,
                 e.pkts_s2c, e.bytes_s2c, e.first_ns, e.last_ns, e.inferred, sp, cp)
                for e, sp, cp in zip(live, server_process, client_process, strict=True)
            )
        )  # fmt: skip

    def _process_of(self, e: _Edge) -> str | None:
        """The local process serving edge ``e``'s server end, when known."""
        if e.server not in self._local:
            return None
        return self._listen.get(
            (e.proto, e.server, e.port), self._listen_any.get((e.proto, e.port))
        )

    def _node_records(self, activity: dict[str, int]) -> tuple[Node, ...]:
        """The records of every node, by address text; ``activity``: newest edge time."""
        nodes, local = self._nodes, self._local
        out: list[Node] = []
        add = out.append
        for ip in sorted(nodes):
            n = nodes[ip]
            if n.services or ip in local:
                add(self._node_record(n, activity.get(ip, 0)))
                continue
            last = activity.get(ip, 0)
            add(_make_node(ip, False, None, (), n.first_ns, max(n.touched_ns, last),
                           tuple(n.annotations), ()))  # fmt: skip
        return tuple(out)

    def _node_record(self, n: _Node, edge_activity: int) -> Node:
        local = n.ip in self._local
        processes: set[str] = set()
        if local:
            for lst in self._inventory.listeners:
                if lst.process and (lst.address == n.ip or lst.address in WILDCARDS):
                    processes.add(lst.process)
            for key in n.edges:
                edge = self._edges.get(key)
                if edge is not None and edge.client == n.ip:
                    proc = self._outbound.get((edge.proto, edge.server, edge.port))
                    if proc:
                        processes.add(proc)
        services: tuple[Service, ...] = ()
        if n.services:
            services = tuple(
                Service(port, protocol_name(proto), tuple(notes))
                for (port, proto), notes in sorted(n.services.items())
            )
        return _make_node(
            n.ip, local, self._host if local else None,
            tuple(sorted(processes)) if processes else (), n.first_ns,
            max(n.touched_ns, edge_activity), tuple(n.annotations), services,
        )  # fmt: skip
