"""The column path into the graph (add_batch) builds exactly the graph the per-event path does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.columns import FlowColumns, columns_of_events, empty_columns
from netweave.capture.events import (
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.graph import accumulator
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import inventory_from
from netweave.graph.model import GraphLimits

S = 1_000_000_000
T0 = 1_700_000_000 * S
HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2")
PORTS = (22, 53, 80, 1023, 1024, 40000, 40001)

hosts = st.sampled_from(HOSTS)
ports = st.sampled_from(PORTS)
times = st.integers(0, 40).map(lambda k: T0 + k * S // 4)
Endpoints = tuple[str, int, str, int]


def _ends(draw: st.DrawFn, flows: list[Endpoints]) -> Endpoints:
    """A flow of the example's few, in either direction (so events of one flow meet)."""
    a, ap, b, bp = draw(st.sampled_from(flows))
    return (a, ap, b, bp) if draw(st.booleans()) else (b, bp, a, ap)


@st.composite
def stream_event(draw: st.DrawFn, flows: list[Endpoints]) -> CaptureEvent:
    src, sport, dst, dport = _ends(draw, flows)
    v = 6 if ":" in src else 4
    pick = draw(st.integers(0, 3))
    if pick <= 1:
        flags = draw(st.sampled_from((0x002, 0x012, 0x0C2, 0x003, 0x014)))
        seq = draw(st.sampled_from((0, 1000, 1000, 2**32 - 1)))
        return TcpHandshake(draw(times), 1, v, src, dst, sport, dport, 64, 0, 2, 0, 0, 0, 60,
                            seq, 0, 64240, flags, 0, b"", 0)  # fmt: skip
    proto = draw(st.sampled_from((6, 6, 17)))
    if pick == 2:
        return FirstPayload(draw(times), 1, 1, v, proto, src, dst, sport, dport, b"x", False)
    return FlowSeen(draw(times), 1, v, proto, src, dst, sport, dport, 0x18)


@st.composite
def counters(draw: st.DrawFn, flows: list[Endpoints]) -> FlowCounters:
    a, ap, b, bp = _ends(draw, flows)
    first = draw(times)
    return FlowCounters(4, draw(st.sampled_from((6, 17))), a, b, ap, bp,
                        draw(st.integers(0, 9)), draw(st.integers(0, 900)),
                        draw(st.integers(0, 9)), draw(st.integers(0, 900)), first,
                        first + draw(st.integers(0, 3)) * S, 0x1B, draw(st.booleans()))  # fmt: skip


@st.composite
def chunk_lists(draw: st.DrawFn) -> list[list[CaptureEvent]]:
    """Chunks of stream events (one batch each) and of counters, over a few flows."""
    flows = draw(st.lists(st.tuples(hosts, ports, hosts, ports), min_size=1, max_size=6))
    out: list[list[CaptureEvent]] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.lists(counters(flows), min_size=1, max_size=3)))
        else:
            out.append(draw(st.lists(stream_event(flows), min_size=1, max_size=40)))
    return out


bounds = st.one_of(
    st.just(GraphLimits()),
    st.builds(
        GraphLimits,
        max_nodes=st.integers(2, 8),
        max_edges=st.integers(2, 10),
        max_flows=st.integers(2, 12),
        idle_ttl_ns=st.sampled_from((0, 2 * S, 3600 * S)),
    ),
)


@dataclass(frozen=True, slots=True)
class _Listener:
    """A listener with the socket table's field names."""

    proto: str
    address: str
    port: int
    comm: str | None


def _pair(limits: GraphLimits, listeners: bool) -> tuple[GraphAccumulator, GraphAccumulator]:
    graphs = GraphAccumulator(limits), GraphAccumulator(limits)
    if listeners:
        inventory = inventory_from(
            [_Listener("tcp", "10.0.0.2", 1024, "svc"), _Listener("udp", "::", 40000, "d")],
            ["10.0.0.2", "fd00::2"],
            [],
        )
        for g in graphs:
            g.set_inventory(inventory, "host")
    return graphs


def _run_both(chunks: list[list[CaptureEvent]], limits: GraphLimits, listeners: bool) -> None:
    by_event, by_batch = _pair(limits, listeners)
    for chunk in chunks:
        if isinstance(chunk[0], FlowCounters):
            by_event.feed_many(chunk)
            by_batch.feed_many(chunk)
        else:
            assert by_event.feed_many(chunk) == by_batch.add_batch(columns_of_events(chunk))
        assert by_batch.snapshot() == by_event.snapshot()
    late = T0 + 7200 * S
    assert by_batch.snapshot(now_ns=late) == by_event.snapshot(now_ns=late)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=chunk_lists(), limits=bounds, listeners=st.booleans())
def test_batch_path_equals_event_path(chunks, limits, listeners) -> None:
    _run_both(chunks, limits, listeners)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=chunk_lists(), limits=bounds, listeners=st.booleans())
def test_batch_path_equals_event_path_in_small_segments(
    chunks, limits, listeners, monkeypatch_module
) -> None:
    """Segments as short as the bounds allow: evictions fall between planned segments."""
    _run_both(chunks, limits, listeners)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accumulator, "MIN_SEGMENT", 1)
        yield mp


def test_handshake_flow_with_payloads_is_one_edge_with_its_times() -> None:
    """The touches of a flow move its edge's last-seen time as the per-event path does."""
    c, s = "10.0.0.1", "10.0.0.9"
    hs = (64, 0, 2, 0, 0, 0, 60)
    events: list[CaptureEvent] = [
        TcpHandshake(T0, 1, 4, c, s, 40000, 443, *hs, 5, 0, 1, 0x002, 0, b"", 0),
        TcpHandshake(T0 + 1, 2, 4, s, c, 443, 40000, *hs, 9, 6, 1, 0x012, 0, b"", 0),
        FirstPayload(T0 + 5, 3, 3, 4, 6, c, s, 40000, 443, b"GET", False),
        FirstPayload(T0 + 3, 4, 4, 4, 6, s, c, 443, 40000, b"HTTP", False),
    ]
    g = GraphAccumulator()
    assert g.add_batch(columns_of_events(events)) == 4
    (edge,) = g.snapshot().edges
    assert (edge.client, edge.server, edge.port, edge.flows, edge.inferred) == (c, s, 443, 1, False)
    assert (edge.first_seen_ns, edge.last_seen_ns) == (T0, T0 + 5)
    assert g.events == 4


def test_empty_batch_and_counters_refused() -> None:
    g = GraphAccumulator()
    assert g.add_batch(empty_columns()) == 0
    with pytest.raises(TypeError, match="FlowCounters"):
        columns_of_events([FlowCounters(4, 6, "a", "b", 1, 2, 0, 0, 0, 0, 0, 0, 0, True)])


def test_columns_of_different_lengths_are_refused() -> None:
    one = columns_of_events([FlowSeen(T0, 1, 4, 6, "10.0.0.1", "10.0.0.2", 1, 2, 0)])
    with pytest.raises(ValueError, match="'seq' has 0 rows"):
        FlowColumns(one.kind, one.timestamp_ns, one.protocol, one.src, one.dst, one.src_port,
                    one.dst_port, one.tcp_flags, one.seq[:0], one.addresses)  # fmt: skip


def test_a_handshake_column_that_is_not_tcp_is_refused() -> None:
    one = columns_of_events([TcpHandshake(T0, 1, 4, "10.0.0.1", "10.0.0.2", 1, 2, 64, 0, 2, 0,
                                          0, 0, 60, 5, 0, 1, 0x002, 0, b"", 0)])  # fmt: skip
    with pytest.raises(ValueError, match="row 0 is a handshake with protocol 17"):
        FlowColumns(one.kind, one.timestamp_ns, one.protocol + 11, one.src, one.dst,
                    one.src_port, one.dst_port, one.tcp_flags, one.seq, one.addresses)  # fmt: skip
