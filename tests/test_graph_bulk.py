"""A whole capture at once (take_capture, one compiled pass) builds the graph the per-event
path builds, and leaves flows that later events find as they would."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.columns import columns_of_capture
from netweave.capture.events import CaptureEvent, FlowCounters, TcpHandshake
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import inventory_from
from netweave.graph.model import Annotation, GraphLimits
from test_graph_batch import HOSTS, T0, S, _Listener, counters, hosts, ports, stream_event

TAKEN: list[bool] = []


@st.composite
def captures(draw: st.DrawFn) -> tuple[list[CaptureEvent], list[FlowCounters], list[CaptureEvent]]:
    """Events, then one counter per flow at most (as a capture has), then later events."""
    flows = draw(st.lists(st.tuples(hosts, ports, hosts, ports), min_size=1, max_size=6))
    events = draw(st.lists(stream_event(flows), max_size=60))
    counted = draw(st.lists(counters(flows), max_size=6))
    later = draw(st.lists(stream_event(flows), max_size=10))
    return events, counted, later


limits = st.one_of(
    st.just(GraphLimits(idle_ttl_ns=0)),
    st.builds(
        GraphLimits,
        max_nodes=st.integers(2, 8),
        max_edges=st.integers(2, 10),
        max_flows=st.integers(2, 12),
        idle_ttl_ns=st.just(0),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capture=captures(), bounds=limits)
def test_whole_capture_equals_the_per_event_path(capture, bounds) -> None:
    events, counted, later = capture
    by_event, whole = GraphAccumulator(bounds), GraphAccumulator(bounds)
    by_event.feed_many(events)
    by_event.feed_many(counted)
    stream, counter_columns = columns_of_capture(events, counted)
    taken = whole.take_capture(stream, counter_columns)
    TAKEN.append(taken)
    if not taken:  # a bound would have evicted: nothing was taken, the caller goes per event
        assert whole.snapshot() == GraphAccumulator(bounds).snapshot()
        return
    assert whole.snapshot() == by_event.snapshot()
    # A new node may evict others (and their edges) on a full graph.
    for graph in (by_event, whole):
        graph.annotate_node("10.9.9.9", Annotation("os", "Linux", "p0f", T0))
    assert whole.snapshot() == by_event.snapshot()
    # The flows it left behind are the ones later events find (new connections, corrections).
    by_event.feed_many(later)
    whole.feed_many(later)
    assert whole.snapshot() == by_event.snapshot()


def test_most_examples_took_the_compiled_path() -> None:
    """The property above is not vacuous: the compiled path ran in most examples."""
    if not TAKEN:
        pytest.skip("run with the property test above")
    assert sum(TAKEN) >= len(TAKEN) // 2


def test_a_graph_that_holds_something_or_has_listeners_or_a_ttl_goes_per_event() -> None:
    syn = TcpHandshake(T0, 1, 4, "10.0.0.1", "10.0.0.2", 40000, 80, 64, 0, 2, 0, 0, 0, 60, 7, 0,
                       64240, 0x002, 0, b"", 0)  # fmt: skip
    stream, cols = columns_of_capture([syn], [])
    assert not GraphAccumulator(GraphLimits(idle_ttl_ns=3600 * S)).take_capture(stream, cols)
    listening = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
    listening.set_inventory(inventory_from([_Listener("tcp", "10.0.0.2", 80, "web")],
                                           ["10.0.0.2"], []), "host")  # fmt: skip
    assert not listening.take_capture(stream, cols)
    busy = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
    busy.feed(syn)
    assert not busy.take_capture(stream, cols)
    assert busy.events == 1
    fresh = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
    assert fresh.take_capture(stream, cols)
    (edge,) = fresh.snapshot().edges
    assert (edge.client, edge.server, edge.port, edge.flows) == ("10.0.0.1", "10.0.0.2", 80, 1)


@st.composite
def notes(draw: st.DrawFn) -> list[tuple[str, int, int, Annotation]]:
    out = []
    for _ in range(draw(st.integers(0, 40))):
        service = draw(st.booleans())
        out.append((
            draw(st.sampled_from(HOSTS[:3])),
            draw(st.sampled_from((22, 443))) if service else 0,
            6 if service else 0,
            Annotation(draw(st.sampled_from(("os", "ja4t", "p0f_signature", "a", "b", "c"))),
                       draw(st.sampled_from(("x", "y"))), draw(st.sampled_from(("p0f", "ja4"))),
                       T0 + draw(st.integers(0, 9)) * S),
        ))  # fmt: skip
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=notes(), cap=st.integers(1, 12), earlier=notes())
def test_annotations_at_once_equal_them_one_by_one(batch, cap, earlier) -> None:
    limits = GraphLimits(max_annotations_per_node=cap, idle_ttl_ns=0)
    one, many = GraphAccumulator(limits), GraphAccumulator(limits)
    syns = [TcpHandshake(T0, 1, 4, a, b, 40000, 80, 64, 0, 2, 0, 0, 0, 60, 7, 0, 64240, 0x002,
                         0, b"", 0) for a, b in (HOSTS[:2], HOSTS[1:3])]  # fmt: skip
    for graph in (one, many):
        graph.feed_many(syns)
        _one_by_one(graph, earlier)
    _one_by_one(one, batch)
    before = many.snapshot()
    if not many.annotate_all(batch):  # it would overflow a node: nothing was done
        assert many.snapshot() == before
        _one_by_one(many, batch)
    assert many.snapshot() == one.snapshot()


def _one_by_one(graph: GraphAccumulator, batch: list[tuple[str, int, int, Annotation]]) -> None:
    for ip, port, proto, note in batch:
        if proto:
            graph.annotate_service(ip, port, proto, note)
        else:
            graph.annotate_node(ip, note)
