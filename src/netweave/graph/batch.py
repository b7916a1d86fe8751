"""Which events of a column batch change the graph's structure, and what the rest add up to.

The graph accumulator takes events one at a time; most of them only move the time stamps of
a flow it already tracks (a SYN-ACK after its SYN, first payloads, a retransmitted SYN).
:func:`plan_segment` finds, with numpy over a whole segment of a :class:`FlowColumns` batch,
the events that may do more (the *anchors*) and folds every other event into its anchor:

* the first event of each flow (unordered 5-tuple and protocol) in the segment: the flow may
  be new, or its edge evicted;
* a handshake with ACK set when no earlier handshake of its flow is in the segment (the flow
  may have an inferred direction, which the handshake corrects);
* a handshake without ACK unless the latest earlier one of its flow in the segment had the
  same sequence number (a new sequence number is a new connection on the 5-tuple).

Every other event is a *touch*: for the per-event path its flow exists, is alive, and the
event only sets the flow's last-seen time and raises its edge's. A touch belongs to the
anchor before it of the same flow; :class:`SegmentPlan` carries, per anchor, the time of
its last touch and the latest time among its touches, so the accumulator runs Python only
for anchors and applies each anchor's touches right after it. That is exact as long as no
capacity eviction can happen inside the segment (evictions read last-seen times): the
accumulator sizes segments so that none can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from netweave.capture.columns import KIND_HANDSHAKE, FlowColumns
from netweave.capture.events import TCP_ACK

PORT_SPACE: Final = 1 << 16
PROTO_SPACE: Final = 1 << 8

IntColumn = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """The anchors of one segment in arrival order, with what their touches add up to.

    ``index`` is each anchor's position in the batch; ``touched`` is true when touches
    follow it; ``last_ts`` is the time of its last touch and ``max_ts`` the latest time
    among the anchor and its touches. ``max_ts_all`` is the latest time in the segment.
    """

    index: IntColumn
    touched: npt.NDArray[np.bool_]
    last_ts: IntColumn
    max_ts: IntColumn
    max_ts_all: int


def plan_segment(cols: FlowColumns, start: int, stop: int) -> SegmentPlan:
    """The anchors of events ``start:stop`` of ``cols`` and the touches folded into them."""
    n = stop - start
    ts = cols.timestamp_ns[start:stop]
    if n == 0:
        empty = np.zeros(0, np.int64)
        return SegmentPlan(empty, np.zeros(0, np.bool_), empty, empty, 0)
    # One key per flow, the same for both directions: ordered endpoint ids and protocol.
    near = cols.src[start:stop] * PORT_SPACE + cols.src_port[start:stop]
    far = cols.dst[start:stop] * PORT_SPACE + cols.dst_port[start:stop]
    ends, ids = np.unique(np.concatenate((near, far)), return_inverse=True)
    ids = ids.reshape(-1)
    lo = np.minimum(ids[:n], ids[n:])
    hi = np.maximum(ids[:n], ids[n:])
    key = (lo * len(ends) + hi) * PROTO_SPACE + cols.protocol[start:stop]
    order = np.argsort(key, kind="stable")  # by flow, arrival order within a flow
    key_s = key[order]
    ts_s = ts[order]
    positions = np.arange(n)
    first = np.ones(n, np.bool_)
    first[1:] = key_s[1:] != key_s[:-1]
    flow_start = np.maximum.accumulate(np.where(first, positions, 0))

    handshake = cols.kind[start:stop][order] == KIND_HANDSHAKE
    ack = (cols.tcp_flags[start:stop][order] & TCP_ACK) != 0
    seq = cols.seq[start:stop][order]
    prev_hs = _previous(handshake, positions)
    plain = handshake & ~ack
    prev_plain = _previous(plain, positions)
    has_prev_hs = prev_hs >= flow_start
    has_prev_plain = prev_plain >= flow_start
    same_seq = has_prev_plain & (seq[np.maximum(prev_plain, 0)] == seq)
    anchor = first | (handshake & ack & ~has_prev_hs) | (plain & ~same_seq)

    starts = np.flatnonzero(anchor)
    stops = np.append(starts[1:], n)
    touched = stops - 1 > starts
    last_ts = ts_s[stops - 1]
    max_ts = np.maximum.reduceat(ts_s, starts)
    index = order[starts]
    arrival = np.argsort(index, kind="stable")
    return SegmentPlan(
        index=index[arrival] + start,
        touched=touched[arrival],
        last_ts=last_ts[arrival],
        max_ts=max_ts[arrival],
        max_ts_all=int(ts.max()),
    )


def _previous(mask: npt.NDArray[np.bool_], positions: IntColumn) -> IntColumn:
    """For each position, the latest earlier position where ``mask`` holds, else -1."""
    latest = np.maximum.accumulate(np.where(mask, positions, -1))
    out = np.empty_like(latest)
    out[0] = -1
    out[1:] = latest[:-1]
    return out
