"""A whole capture's events and counters folded into graph state in one compiled pass.

The graph accumulator takes events one at a time, each a few dict lookups and attribute
writes on Python objects; a capture of a million packets in a hundred thousand short flows
makes that the cost of a replay. :func:`fold` runs the same rules (see
:mod:`netweave.graph.accumulator`: direction, new connections on a known 5-tuple, inferred
flows corrected by their handshake, cumulative counters) over a whole capture at once, on
arrays indexed by flow, edge and address ids, for a graph that starts empty, has no local
listeners and no idle TTL. The accumulator then makes objects only for what is left: the
nodes, the live edges and the tracked flows.

The pass also watches the bounds: when a table would have had to evict (more flows, edges
or nodes than the limits allow at some moment), :attr:`Folded.ok` is false and the caller
takes the per-event path, where evictions happen in the order they must.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from netweave.capture.columns import KIND_HANDSHAKE, CounterColumns, FlowColumns
from netweave.capture.compiled import jit
from netweave.capture.events import PROTO_UDP, TCP_ACK
from netweave.capture.keys import factorize
from netweave.graph.batch import PORT_SPACE, PROTO_SPACE, flow_ids

IntColumn = npt.NDArray[np.int64]

NO_ISN: Final = -1
WELL_KNOWN_LIMIT: Final = 1024

# Rows of the per-flow state.
(F_EXISTS, F_CLIENT, F_ISN, F_INFERRED, F_LAST, F_PC2S, F_BC2S, F_PS2C, F_BS2C,
 F_EDGE) = range(10)  # fmt: skip
# Rows of the per-edge state.
(E_ALIVE, E_FLOWS, E_PC2S, E_BC2S, E_PS2C, E_BS2C, E_FIRST, E_LAST, E_INFERRED,
 E_BORN) = range(10)  # fmt: skip
# Rows of the per-address (node) state.
N_EXISTS, N_FIRST, N_TOUCHED, N_BORN = range(4)
# Slots of the counts.
C_FLOWS, C_EDGES, C_NODES, C_SEQ, C_OK, C_NOW = range(6)


@dataclass(frozen=True, slots=True)
class Folded:
    """Graph state after a whole capture. Flows, edges and nodes are numbered by id.

    Flow ``f`` joins endpoints ``end_addr[k, f]``:``end_port[k, f]`` (k = 0, 1; endpoint 0
    sent the flow's first event) over ``proto[f]``; ``flow[F_CLIENT, f]`` is the endpoint that
    is its client. Edge ``e`` is client ``edge_client[e]`` -> ``edge_server[e]``:
    ``edge_port[e]``/``edge_proto[e]``. Node ids are address ids (indices into the
    columns' ``addresses``).
    """

    ok: bool
    now_ns: int
    end_addr: IntColumn
    end_port: IntColumn
    proto: IntColumn
    flow: IntColumn
    edge_client: IntColumn
    edge_server: IntColumn
    edge_port: IntColumn
    edge_proto: IntColumn
    edge: IntColumn
    node: IntColumn


def fold(
    stream: FlowColumns, counters: CounterColumns, *, max_nodes: int, max_edges: int,
    max_flows: int,
) -> Folded:  # fmt: skip
    """The graph state that ``stream`` then ``counters`` leave in an empty accumulator.

    Both must index one address table (``stream.addresses == counters.addresses``).
    """
    if stream.addresses != counters.addresses:
        raise ValueError("fold: the events and the counters index different address tables")
    n_addr = max(len(stream.addresses), 1)
    near = np.concatenate((stream.src, counters.a))
    near_port = np.concatenate((stream.src_port, counters.a_port))
    far = np.concatenate((stream.dst, counters.b))
    far_port = np.concatenate((stream.dst_port, counters.b_port))
    protocol = np.concatenate((stream.protocol, counters.protocol))
    ids, first = flow_ids(near, near_port, far, far_port, protocol, n_addr)
    end_addr = np.stack((near[first], far[first]))
    end_port = np.stack((near_port[first], far_port[first]))
    proto = protocol[first]
    n_flows = int(first.shape[0])
    # Each flow may make one of two edges (either endpoint the client): number them all.
    client = np.concatenate((end_addr[0], end_addr[1]))
    server = np.concatenate((end_addr[1], end_addr[0]))
    server_port = np.concatenate((end_port[1], end_port[0]))
    edge_proto = np.concatenate((proto, proto))
    pair, _first = factorize((client * n_addr + server).astype(np.uint64))
    key = (pair * PORT_SPACE + server_port) * PROTO_SPACE + edge_proto
    edge_id, edge_first = factorize(key.astype(np.uint64))
    candidates = edge_id.reshape(2, n_flows) if n_flows else np.zeros((2, 0), np.int64)
    n_edges = int(edge_first.shape[0])
    flow = np.zeros((10, n_flows), np.int64)
    edge = np.zeros((10, n_edges), np.int64)
    node = np.zeros((4, n_addr), np.int64)
    counts = np.zeros(6, np.int64)
    counts[C_OK] = 1
    n_events = len(stream)
    _fold(
        ids[:n_events], stream.kind, stream.timestamp_ns, stream.src, stream.src_port,
        stream.tcp_flags, stream.seq, ids[n_events:], counters.a, counters.a_port,
        counters.packets_ab, counters.bytes_ab, counters.packets_ba, counters.bytes_ba,
        counters.first_ns, counters.last_ns, counters.handshake_seen, end_addr, end_port,
        proto, candidates, max_nodes, max_edges, max_flows, flow, edge, node, counts,
    )  # fmt: skip
    return Folded(
        ok=bool(counts[C_OK]),
        now_ns=int(counts[C_NOW]),
        end_addr=end_addr,
        end_port=end_port,
        proto=proto,
        flow=flow,
        edge_client=client[edge_first],
        edge_server=server[edge_first],
        edge_port=server_port[edge_first],
        edge_proto=edge_proto[edge_first],
        edge=edge,
        node=node,
    )


@jit
def _node(node: Any, counts: Any, ip: int, ts: int, max_nodes: int) -> None:
    if node[N_EXISTS, ip] == 0:
        if counts[C_NODES] >= max_nodes:
            counts[C_OK] = 0  # the per-event path would evict here
        node[N_EXISTS, ip] = 1
        node[N_FIRST, ip] = ts
        node[N_TOUCHED, ip] = ts
        node[N_BORN, ip] = counts[C_SEQ]
        counts[C_SEQ] += 1
        counts[C_NODES] += 1
    elif ts > node[N_TOUCHED, ip]:
        node[N_TOUCHED, ip] = ts


@jit
def _open(
    f: int, side: int, ts: int, inferred: int, isn: int, end_addr: Any, candidates: Any,
    flow: Any, edge: Any, node: Any, counts: Any, max_nodes: int, max_edges: int,
    max_flows: int,
) -> None:  # fmt: skip
    e = candidates[side, f]
    if edge[E_ALIVE, e] == 0:
        if counts[C_EDGES] >= max_edges:
            counts[C_OK] = 0
        for row in range(10):
            edge[row, e] = 0
        edge[E_ALIVE, e] = 1
        edge[E_FIRST, e] = ts
        edge[E_LAST, e] = ts
        edge[E_INFERRED, e] = inferred
        edge[E_BORN, e] = counts[C_SEQ]
        counts[C_SEQ] += 1
        counts[C_EDGES] += 1
        _node(node, counts, end_addr[side, f], ts, max_nodes)
        _node(node, counts, end_addr[1 - side, f], ts, max_nodes)
    else:
        if inferred == 0:
            edge[E_INFERRED, e] = 0
        edge[E_FIRST, e] = min(edge[E_FIRST, e], ts)
        edge[E_LAST, e] = max(edge[E_LAST, e], ts)
    edge[E_FLOWS, e] += 1
    if counts[C_FLOWS] >= max_flows:
        counts[C_OK] = 0
    counts[C_FLOWS] += 1
    for row in range(10):
        flow[row, f] = 0
    flow[F_EXISTS, f] = 1
    flow[F_CLIENT, f] = side
    flow[F_ISN, f] = isn
    flow[F_INFERRED, f] = inferred
    flow[F_LAST, f] = ts
    flow[F_EDGE, f] = e


@jit
def _drop(f: int, flow: Any, counts: Any) -> None:
    flow[F_EXISTS, f] = 0
    counts[C_FLOWS] -= 1


@jit
def _reopen(
    f: int, side: int, ts: int, isn: int, end_addr: Any, candidates: Any, flow: Any,
    edge: Any, node: Any, counts: Any, max_nodes: int, max_edges: int, max_flows: int,
) -> None:  # fmt: skip
    """A new connection on the flow's 5-tuple, or its handshake at last (the accumulator's
    ``_reopen``): a guessed direction is taken back from its edge first."""
    _drop(f, flow, counts)
    if flow[F_INFERRED, f] != 0:
        e = flow[F_EDGE, f]
        edge[E_FLOWS, e] -= 1
        for k in range(4):
            edge[E_PC2S + k, e] -= flow[F_PC2S + k, f]
        if edge[E_FLOWS, e] <= 0 and edge[E_ALIVE, e] != 0:
            edge[E_ALIVE, e] = 0
            counts[C_EDGES] -= 1
    _open(f, side, ts, 0, isn, end_addr, candidates, flow, edge, node, counts, max_nodes,
          max_edges, max_flows)  # fmt: skip


@jit
def _open_unseen(
    f: int, side: int, ts: int, end_port: Any, proto: Any, end_addr: Any, candidates: Any,
    flow: Any, edge: Any, node: Any, counts: Any, max_nodes: int, max_edges: int,
    max_flows: int,
) -> None:  # fmt: skip
    """A flow first seen without its handshake, sent by endpoint ``side`` (no listeners)."""
    sport = end_port[side, f]
    dport = end_port[1 - side, f]
    if proto[f] == PROTO_UDP:
        if sport < WELL_KNOWN_LIMIT <= dport:  # a reply from a well-known port
            client, inferred = 1 - side, 1
        else:
            client, inferred = side, 0
    elif dport <= sport:  # the lower port serves
        client, inferred = side, 1
    else:
        client, inferred = 1 - side, 1
    _open(f, client, ts, inferred, NO_ISN, end_addr, candidates, flow, edge, node, counts,
          max_nodes, max_edges, max_flows)  # fmt: skip


@jit
def _fold(
    ev_flow: Any, kind: Any, ts: Any, src: Any, sport: Any, flags: Any, seq: Any,
    ct_flow: Any, ct_a: Any, ct_a_port: Any, p_ab: Any, b_ab: Any, p_ba: Any, b_ba: Any,
    ct_first: Any, ct_last: Any, ct_seen: Any, end_addr: Any, end_port: Any, proto: Any,
    candidates: Any, max_nodes: int, max_edges: int, max_flows: int, flow: Any, edge: Any,
    node: Any, counts: Any,
) -> None:  # fmt: skip
    now = 0
    for i in range(ev_flow.shape[0]):
        f = ev_flow[i]
        t = ts[i]
        now = max(now, t)
        side = 0 if src[i] == end_addr[0, f] and sport[i] == end_port[0, f] else 1
        exists = flow[F_EXISTS, f] != 0
        if kind[i] == KIND_HANDSHAKE:
            if flags[i] & TCP_ACK:
                if not exists:
                    _open(f, 1 - side, t, 0, NO_ISN, end_addr, candidates, flow, edge, node,
                          counts, max_nodes, max_edges, max_flows)  # fmt: skip
                    continue
                if flow[F_INFERRED, f] != 0:
                    _reopen(f, 1 - side, t, NO_ISN, end_addr, candidates, flow, edge, node,
                            counts, max_nodes, max_edges, max_flows)  # fmt: skip
                    continue
            elif not exists:
                _open(f, side, t, 0, seq[i], end_addr, candidates, flow, edge, node, counts,
                      max_nodes, max_edges, max_flows)  # fmt: skip
                continue
            elif flow[F_ISN, f] != seq[i]:
                client_addr = end_addr[flow[F_CLIENT, f], f]
                if (flow[F_ISN, f] == NO_ISN and flow[F_INFERRED, f] == 0
                        and client_addr == src[i]):  # fmt: skip
                    flow[F_ISN, f] = seq[i]  # the SYN-ACK came first
                else:
                    _reopen(f, side, t, seq[i], end_addr, candidates, flow, edge, node,
                            counts, max_nodes, max_edges, max_flows)  # fmt: skip
                    continue
        elif not exists:
            _open_unseen(f, side, t, end_port, proto, end_addr, candidates, flow, edge, node,
                         counts, max_nodes, max_edges, max_flows)  # fmt: skip
            continue
        flow[F_LAST, f] = t
        e = flow[F_EDGE, f]
        edge[E_LAST, e] = max(edge[E_LAST, e], t)
    for j in range(ct_flow.shape[0]):
        f = ct_flow[j]
        first = ct_first[j]
        side = 0 if ct_a[j] == end_addr[0, f] and ct_a_port[j] == end_port[0, f] else 1
        if flow[F_EXISTS, f] == 0:
            if ct_seen[j]:
                _open(f, side, first, 0, NO_ISN, end_addr, candidates, flow, edge, node,
                      counts, max_nodes, max_edges, max_flows)  # fmt: skip
            else:
                _open_unseen(f, side, first, end_port, proto, end_addr, candidates, flow,
                             edge, node, counts, max_nodes, max_edges, max_flows)  # fmt: skip
        client = flow[F_CLIENT, f]
        if ct_a[j] == end_addr[client, f] and ct_a_port[j] == end_port[client, f]:
            grown = (p_ab[j], b_ab[j], p_ba[j], b_ba[j])
        else:
            grown = (p_ba[j], b_ba[j], p_ab[j], b_ab[j])
        e = flow[F_EDGE, f]
        for k in range(4):
            value = grown[k]
            if value > flow[F_PC2S + k, f]:
                edge[E_PC2S + k, e] += value - flow[F_PC2S + k, f]
                flow[F_PC2S + k, f] = value
        edge[E_FIRST, e] = min(edge[E_FIRST, e], first)
        last = ct_last[j]
        flow[F_LAST, f] = max(flow[F_LAST, f], last)
        edge[E_LAST, e] = max(edge[E_LAST, e], last)
        now = max(now, last)
    counts[C_NOW] = now
