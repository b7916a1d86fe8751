"""Which events of a column batch change the graph's structure, and what the rest add up to.

The graph accumulator takes events one at a time; most of them only move the time stamps of
a flow it already tracks (a SYN-ACK after its SYN, first payloads, a retransmitted SYN).
:func:`plan_segment` finds, in one compiled pass over a whole segment of a
:class:`FlowColumns` batch, the events that may do more (the *anchors*) and folds every
other event into its anchor:

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
from netweave.capture.compiled import jit
from netweave.capture.events import TCP_ACK
from netweave.capture.keys import factorize

PORT_SPACE: Final = 1 << 16
PROTO_SPACE: Final = 1 << 8
DIRECT_SPACE: Final = 1 << 27  # endpoints below this pack in pairs (with protocol) in 63 bits

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
    part = slice(start, stop)
    flows = _flow_ids(cols, part)
    index, touched, last_ts, max_ts, count = _anchors(
        flows, cols.kind[part], cols.tcp_flags[part], cols.seq[part], cols.timestamp_ns[part]
    )
    return SegmentPlan(
        index=index[:count] + start,
        touched=touched[:count],
        last_ts=last_ts[:count],
        max_ts=max_ts[:count],
        max_ts_all=int(cols.timestamp_ns[part].max()) if stop > start else 0,
    )


def _flow_ids(cols: FlowColumns, part: slice) -> IntColumn:
    """One id per flow of events ``part`` of ``cols`` (see :func:`flow_ids`)."""
    ids, _first = flow_ids(
        cols.src[part], cols.src_port[part], cols.dst[part], cols.dst_port[part],
        cols.protocol[part], len(cols.addresses),
    )  # fmt: skip
    return ids


def flow_ids(
    near: IntColumn, near_port: IntColumn, far: IntColumn, far_port: IntColumn,
    protocol: IntColumn, addresses: int,
) -> tuple[IntColumn, IntColumn]:  # fmt: skip
    """One id per flow (unordered endpoints and protocol), the same for both directions;
    and for each id the index of its first row. Addresses are ids below ``addresses``."""
    a = near * PORT_SPACE + near_port
    b = far * PORT_SPACE + far_port
    space = max(addresses, 1) * PORT_SPACE
    if space > DIRECT_SPACE:  # too many addresses to pack two endpoints in 64 bits: number them
        ends, _first = factorize(np.concatenate((a, b)).astype(np.uint64))
        a, b = ends[: len(a)], ends[len(a) :]
        space = max(len(a), 1) * 2
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    return factorize(((lo * space + hi) * PROTO_SPACE + protocol).astype(np.uint64))


@jit
def _anchors(
    flow: IntColumn, kind: IntColumn, flags: IntColumn, seq: IntColumn, ts: IntColumn
) -> tuple[IntColumn, npt.NDArray[np.bool_], IntColumn, IntColumn, int]:
    """One pass in arrival order: each event is an anchor or a touch of its flow's anchor."""
    n = len(flow)
    current = np.full(n, -1, np.int64)  # per flow id: the slot of its latest anchor
    seen_handshake = np.zeros(n, np.bool_)
    seen_plain = np.zeros(n, np.bool_)
    plain_seq = np.zeros(n, np.int64)
    index = np.empty(n, np.int64)
    touched = np.zeros(n, np.bool_)
    last_ts = np.empty(n, np.int64)
    max_ts = np.empty(n, np.int64)
    count = 0
    for i in range(n):
        f = flow[i]
        handshake = kind[i] == KIND_HANDSHAKE
        ack = (flags[i] & TCP_ACK) != 0
        if current[f] < 0:
            anchor = True
        elif handshake and ack:
            anchor = not seen_handshake[f]
        elif handshake:
            anchor = not (seen_plain[f] and plain_seq[f] == seq[i])
        else:
            anchor = False
        if handshake:
            seen_handshake[f] = True
            if not ack:
                seen_plain[f] = True
                plain_seq[f] = seq[i]
        t = ts[i]
        if anchor:
            index[count] = i
            last_ts[count] = t
            max_ts[count] = t
            current[f] = count
            count += 1
        else:
            slot = current[f]
            touched[slot] = True
            last_ts[slot] = t
            max_ts[slot] = max(max_ts[slot], t)
    return index, touched, last_ts, max_ts, count
