"""The graph accumulator: direction, inferred edges, counters, bounds, idle TTL, annotations."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.capture.events import (
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import inventory_from
from netweave.graph.model import Annotation, Edge, GraphLimits

S = 1_000_000_000
T0 = 1_700_000_000 * S


def syn(src: str, sport: int, dst: str, dport: int, *, ts: int = T0, seq: int = 1000,
        flags: int = 0x002) -> TcpHandshake:  # fmt: skip
    version = 6 if ":" in src else 4
    return TcpHandshake(ts, 1, version, src, dst, sport, dport, 64, 0, 2, 0, 0, 0, 60, seq, 0,
                        64240, flags, 0, b"", 0)  # fmt: skip


def synack(src: str, sport: int, dst: str, dport: int, *, ts: int = T0) -> TcpHandshake:
    return syn(src, sport, dst, dport, ts=ts, seq=77, flags=0x012)


def seen(src: str, sport: int, dst: str, dport: int, *, proto: int = 6, ts: int = T0) -> FlowSeen:
    return FlowSeen(ts, 1, 6 if ":" in src else 4, proto, src, dst, sport, dport, 0x18)


def payload(src: str, sport: int, dst: str, dport: int, *, proto: int = 6,
            ts: int = T0) -> FirstPayload:  # fmt: skip
    return FirstPayload(ts, 1, 1, 6 if ":" in src else 4, proto, src, dst, sport, dport, b"x",
                        False)  # fmt: skip


def counters(
    a: str, ap: int, b: str, bp: int, ab: tuple[int, int], ba: tuple[int, int], *,
             hs: bool = True, proto: int = 6, first: int = T0, last: int = T0 + S,
             ) -> FlowCounters:  # fmt: skip
    return FlowCounters(4, proto, a, b, ap, bp, ab[0], ab[1], ba[0], ba[1], first, last, 0x1B, hs)


def edges(graph: GraphAccumulator) -> set[tuple[str, str, int, str, bool]]:
    return {(e.client, e.server, e.port, e.protocol, e.inferred) for e in graph.snapshot().edges}


def only_edge(graph: GraphAccumulator) -> Edge:
    view = graph.snapshot()
    assert len(view.edges) == 1, view.edges
    return view.edges[0]


def test_syn_sender_is_the_client_even_from_a_high_port_to_a_lower_one() -> None:
    g = GraphAccumulator()
    g.feed_many([syn("10.0.0.2", 80, "10.0.0.9", 50000), synack("10.0.0.9", 50000, "10.0.0.2", 80),
                 payload("10.0.0.9", 50000, "10.0.0.2", 80)])  # fmt: skip
    assert edges(g) == {("10.0.0.2", "10.0.0.9", 50000, "tcp", False)}


def test_a_synack_alone_names_the_client() -> None:
    g = GraphAccumulator()
    g.feed(synack("fd00::1", 443, "fd00::2", 40000))
    assert edges(g) == {("fd00::2", "fd00::1", 443, "tcp", False)}


def test_retransmitted_syn_is_one_flow_and_a_new_isn_is_another() -> None:
    g = GraphAccumulator()
    first = syn("10.0.0.1", 40000, "10.0.0.2", 22, seq=5)
    g.feed_many([first, first, synack("10.0.0.2", 22, "10.0.0.1", 40000), first])
    assert only_edge(g).flows == 1
    g.feed(syn("10.0.0.1", 40000, "10.0.0.2", 22, seq=99_999, ts=T0 + 100 * S))
    assert only_edge(g).flows == 2


def test_midstream_tcp_uses_the_local_listener_over_the_port_numbers() -> None:
    # A server listening on a high port, the client on a lower one: ports alone would lie.
    listener = inventory_from(listeners=[_L("tcp", "0.0.0.0", 40000, "srv")],
                              local_ips=["10.0.0.2"])  # fmt: skip
    g = GraphAccumulator()
    g.set_inventory(listener, host="box")
    g.feed(seen("10.0.0.2", 40000, "10.0.0.1", 5000))
    assert edges(g) == {("10.0.0.1", "10.0.0.2", 40000, "tcp", True)}
    edge = only_edge(g)
    assert edge.server_process == "srv"
    node = {n.ip: n for n in g.snapshot().nodes}["10.0.0.2"]
    assert (node.local, node.host, node.processes) == (True, "box", ("srv",))

    plain = GraphAccumulator()
    plain.feed(seen("10.0.0.2", 40000, "10.0.0.1", 5000))
    assert edges(plain) == {("10.0.0.2", "10.0.0.1", 5000, "tcp", True)}


def test_midstream_tcp_without_listeners_prefers_a_well_known_port_then_the_lower() -> None:
    g = GraphAccumulator()
    g.feed(seen("10.0.0.5", 443, "10.0.0.6", 1500))  # server's packet seen first
    g.feed(seen("10.0.0.7", 9000, "10.0.0.8", 8080))
    assert edges(g) == {
        ("10.0.0.6", "10.0.0.5", 443, "tcp", True),
        ("10.0.0.7", "10.0.0.8", 8080, "tcp", True),
    }


def test_an_inferred_edge_is_confirmed_by_a_later_handshake_on_it() -> None:
    g = GraphAccumulator()
    g.feed(seen("10.0.0.1", 41000, "10.0.0.2", 80))
    assert only_edge(g).inferred
    g.feed(syn("10.0.0.1", 41001, "10.0.0.2", 80, ts=T0 + S))
    edge = only_edge(g)
    assert (edge.inferred, edge.flows) == (False, 2)


def test_a_syn_on_a_flow_first_seen_midstream_replaces_the_guess() -> None:
    g = GraphAccumulator()
    g.feed(seen("10.0.0.1", 3000, "10.0.0.2", 5000))  # guessed: the lower port serves
    g.feed(counters("10.0.0.1", 3000, "10.0.0.2", 5000, (2, 200), (1, 100), hs=False))
    assert edges(g) == {("10.0.0.2", "10.0.0.1", 3000, "tcp", True)}
    g.feed(syn("10.0.0.1", 3000, "10.0.0.2", 5000, ts=T0 + S, seq=9))
    g.feed(counters("10.0.0.1", 3000, "10.0.0.2", 5000, (3, 300), (2, 200), first=T0 + S))
    assert edges(g) == {("10.0.0.1", "10.0.0.2", 5000, "tcp", False)}
    edge = only_edge(g)
    assert (edge.flows, edge.packets_to_server, edge.bytes_to_client) == (1, 3, 200)
    assert g.evictions.total == 0


def test_udp_first_sender_is_the_client_unless_it_was_a_reply() -> None:
    g = GraphAccumulator()
    g.feed_many([seen("10.0.0.1", 53124, "10.0.0.53", 53, proto=17),
                 payload("10.0.0.1", 53124, "10.0.0.53", 53, proto=17),
                 payload("10.0.0.53", 53, "10.0.0.1", 53124, proto=17)])  # fmt: skip
    g.feed(seen("10.0.0.53", 123, "10.0.0.9", 40001, proto=17))  # a reply seen first
    assert edges(g) == {
        ("10.0.0.1", "10.0.0.53", 53, "udp", False),
        ("10.0.0.9", "10.0.0.53", 123, "udp", True),
    }


def test_cumulative_counters_add_only_their_growth_in_the_right_direction() -> None:
    g = GraphAccumulator()
    g.feed(syn("10.0.0.1", 40000, "10.0.0.2", 80))
    # ``a`` is the server here (its packet came first in this reading): directions swap.
    g.feed(counters("10.0.0.2", 80, "10.0.0.1", 40000, (3, 3000), (5, 500)))
    g.feed(counters("10.0.0.2", 80, "10.0.0.1", 40000, (4, 4200), (7, 700), last=T0 + 9 * S))
    g.feed(counters("10.0.0.2", 80, "10.0.0.1", 40000, (4, 4200), (7, 700)))  # stale read
    edge = only_edge(g)
    assert (edge.packets_to_server, edge.bytes_to_server) == (7, 700)
    assert (edge.packets_to_client, edge.bytes_to_client) == (4, 4200)
    assert (edge.first_seen_ns, edge.last_seen_ns, edge.flows) == (T0, T0 + 9 * S, 1)


def test_counters_of_an_unknown_flow_open_it() -> None:
    g = GraphAccumulator()
    g.feed(counters("10.0.0.1", 40000, "10.0.0.2", 6379, (2, 120), (1, 60), hs=False))
    edge = only_edge(g)
    assert (edge.client, edge.server, edge.port, edge.inferred) == ("10.0.0.1", "10.0.0.2",
                                                                    6379, True)  # fmt: skip
    assert (edge.packets_to_server, edge.bytes_to_client) == (2, 60)


def test_edge_bound_evicts_the_least_recent_and_counts_every_eviction() -> None:
    g = GraphAccumulator(GraphLimits(max_nodes=1000, max_edges=20, idle_ttl_ns=0))
    for i in range(100):
        g.feed(syn("10.0.0.1", 40000 + i, f"10.1.0.{i}", 80, ts=T0 + i * S))
    view = g.snapshot()
    assert len(view.edges) <= 20
    assert view.evictions.edges_capacity + len(view.edges) == 100
    assert view.edges[-1].server == "10.1.0.99" or any(e.server == "10.1.0.99" for e in view.edges)
    assert all(e.server != "10.1.0.0" for e in view.edges)  # the oldest went first
    # An evicted edge's flow seen again comes back as a fresh edge, not lost silently.
    g.feed(payload("10.0.0.1", 40000, "10.1.0.0", 80, ts=T0 + 200 * S))
    assert any(e.server == "10.1.0.0" and e.inferred for e in g.snapshot().edges)


def test_node_bound_takes_the_nodes_edges_with_them() -> None:
    g = GraphAccumulator(GraphLimits(max_nodes=10, max_edges=1000, idle_ttl_ns=0))
    for i in range(30):
        g.feed(syn(f"10.2.0.{i}", 40000, f"10.3.0.{i}", 443, ts=T0 + i * S))
    view = g.snapshot()
    assert len(view.nodes) <= 10
    assert view.evictions.nodes_capacity + len(view.nodes) == 60
    assert view.evictions.edges_capacity + len(view.edges) == 30
    ips = {n.ip for n in view.nodes}
    assert all(e.client in ips and e.server in ips for e in view.edges)


def test_flow_bound_keeps_edge_flow_counts() -> None:
    g = GraphAccumulator(GraphLimits(max_flows=32, idle_ttl_ns=0))
    for i in range(100):
        g.feed(syn("10.0.0.1", 40000 + i, "10.0.0.2", 80, ts=T0 + i))
    view = g.snapshot()
    assert view.flows_tracked <= 32
    assert view.evictions.flows_capacity + view.flows_tracked == 100
    assert view.edges[0].flows == 100


def test_idle_ttl_expires_flows_edges_and_lonely_nodes_in_packet_time() -> None:
    g = GraphAccumulator(GraphLimits(idle_ttl_ns=10 * S))
    g.feed(syn("10.0.0.1", 40000, "10.0.0.2", 80, ts=T0))
    g.feed(syn("10.0.0.3", 40000, "10.0.0.4", 80, ts=T0 + 8 * S))
    g.feed(syn("10.0.0.3", 40001, "10.0.0.4", 80, ts=T0 + 15 * S))
    view = g.snapshot()
    assert {(e.client, e.server) for e in view.edges} == {("10.0.0.3", "10.0.0.4")}
    assert {n.ip for n in view.nodes} == {"10.0.0.3", "10.0.0.4"}
    ev = view.evictions
    assert (ev.edges_idle, ev.nodes_idle, ev.flows_idle) == (1, 2, 1)
    g.expire(T0 + 40 * S)
    assert g.snapshot().edges == ()
    assert g.evictions.edges_idle == 2


def test_annotations_replace_by_key_and_source_and_are_bounded() -> None:
    g = GraphAccumulator(GraphLimits(max_annotations_per_node=3))
    g.feed(syn("10.0.0.1", 40000, "10.0.0.2", 443))
    g.annotate_node("10.0.0.1", Annotation("os", "Linux 2.2.x-3.x", "p0f", T0))
    g.annotate_node("10.0.0.1", Annotation("os", "Linux 3.11 and newer", "p0f", T0 + 1))
    g.annotate_node("10.0.0.1", Annotation("os", "Linux", "ja4t", T0 + 2, 0.5))
    g.annotate_service("10.0.0.2", 443, 6, Annotation("service", "https", "nmap-probes", T0 + 3))
    nodes = {n.ip: n for n in g.snapshot().nodes}
    assert [(a.value, a.source) for a in nodes["10.0.0.1"].annotations] == [
        ("Linux 3.11 and newer", "p0f"),
        ("Linux", "ja4t"),
    ]
    svc = nodes["10.0.0.2"].services
    assert [(s.port, s.protocol, s.annotations[0].value) for s in svc] == [(443, "tcp", "https")]
    for i in range(3):
        g.annotate_node("10.0.0.1", Annotation(f"k{i}", "v", "test", T0 + 10 + i))
    kept = {a.key for a in {n.ip: n for n in g.snapshot().nodes}["10.0.0.1"].annotations}
    assert kept == {"k0", "k1", "k2"}
    assert g.evictions.annotations_capacity == 2


def test_outbound_list_names_the_client_process() -> None:
    inv = inventory_from(local_ips=["10.0.0.1"], outbound=[_O("tcp", "10.0.0.2", 5432, "psql")])
    g = GraphAccumulator()
    g.set_inventory(inv, host="box")
    g.feed(syn("10.0.0.1", 40000, "10.0.0.2", 5432))
    assert only_edge(g).client_process == "psql"


_addr = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"])
_port = st.sampled_from([22, 53, 80, 443, 8080, 40000, 50000])


@st.composite
def _events(draw: st.DrawFn) -> CaptureEvent:
    src, dst, sport, dport = draw(_addr), draw(_addr), draw(_port), draw(_port)
    ts = T0 + draw(st.integers(0, 100)) * S
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return syn(src, sport, dst, dport, ts=ts, seq=draw(st.integers(0, 3)))
    if kind == 1:
        return synack(src, sport, dst, dport, ts=ts)
    if kind == 2:
        return seen(src, sport, dst, dport, proto=draw(st.sampled_from([6, 17])), ts=ts)
    if kind == 3:
        return payload(src, sport, dst, dport, proto=draw(st.sampled_from([6, 17])), ts=ts)
    n = draw(st.integers(0, 5))
    return counters(src, sport, dst, dport, (n, n * 100), (n, n * 50), hs=draw(st.booleans()),
                    first=ts, last=ts)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(_events(), max_size=60))
def test_any_event_sequence_keeps_the_graph_within_bounds_and_consistent(
    events: list[CaptureEvent],
) -> None:
    g = GraphAccumulator(GraphLimits(max_nodes=3, max_edges=4, max_flows=5, idle_ttl_ns=50 * S))
    g.feed_many(events)
    view = g.snapshot()
    assert len(view.nodes) <= 3
    assert len(view.edges) <= 4
    assert view.flows_tracked <= 5
    ips = {n.ip for n in view.nodes}
    for e in view.edges:
        assert e.flows >= 1
        assert e.client in ips and e.server in ips
        assert e.first_seen_ns <= e.last_seen_ns


@dataclass(frozen=True, slots=True)
class _L:
    """A listener as the socket table reports it (netweave.sockets.records.Listener's fields)."""

    proto: str
    address: str
    port: int
    comm: str | None


@dataclass(frozen=True, slots=True)
class _O:
    """An outbound entry with the socket table's field names."""

    proto: str
    ip: str
    port: int
    comm: str
    first_seen: float = 1.0
    last_seen: float = 2.0
    connections: int = 1


def test_counters_move_the_graph_clock_within_a_batch() -> None:
    g = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
    late = counters("10.0.0.1", 40000, "10.0.0.2", 80, (1, 60), (1, 60), last=T0 + 7 * S)
    g.feed_many([syn("10.0.0.1", 40000, "10.0.0.2", 80, ts=T0), late])
    assert g.now_ns == T0 + 7 * S
