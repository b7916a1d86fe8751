"""One compiled pass over every packet: decode headers, group flows, pick what matters.

For each packet the header walk of :mod:`netweave.capture.decode` runs into a scratch
buffer (nothing per packet is written to memory but a problem code), then a hash table
keyed by the direction-free 5-tuple (open addressing, exact comparison) gives the packet
its flow. The same pass counts packets and bytes each way, first/last time and TCP flags
per flow, and lists the packets worth a record: segments with SYN set and the first
``MAX_SEGMENTS`` payload packets of each flow direction, as long as the direction can still
carry a TLS hello (most directions: one segment). Only those (and each flow's first
packet) are decoded again into columns and reach Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from netweave.capture import decode as d
from netweave.capture.compiled import jit
from netweave.capture.containers import Frames

MAX_SEGMENTS = 8
"""First payload segments per flow direction considered for reassembly."""
PICK_ROWS = 10

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Scan:
    """What the pass over all packets found (indices are packet indices, 0-based)."""

    problem: npt.NDArray[np.int8]  # per packet: 0 or a decode.PROBLEM_* code
    syn: I64  # packets with SYN set, in order
    syn_bad_options: Mask  # per entry of ``syn``: an option length is impossible
    syn_flow: I64  # per entry of ``syn``: its flow (index into the per-flow arrays)
    syn_forward: Mask  # per entry of ``syn``: sent by the endpoint that opened the flow
    pick: I64  # payload packets picked for reassembly, in order
    pick_flow: I64
    pick_forward: Mask
    pick_seq: I64  # per entry of ``pick``: what reassembly reads of the packet
    pick_offset: I64  # payload's offset in the image
    pick_captured: I64  # payload bytes captured
    pick_wire: I64  # payload length the headers claim
    pick_udp: Mask
    pick_version: I64
    pick_tunnel: I64
    first: I64  # per flow (first-seen order): index of its first packet
    packets_ab: I64
    packets_ba: I64
    bytes_ab: I64
    bytes_ba: I64
    first_ns: I64
    last_ns: I64
    flags: I64
    syn_opened: Mask
    version: I64  # per flow: IP version, protocol, and the first packet's ports
    proto: I64
    sport: I64
    dport: I64
    addr: npt.NDArray[np.uint64]  # per flow: (4, flows) first packet's src hi/lo, dst hi/lo


def scan(frames: Frames) -> Scan:
    """Decode and group every packet of ``frames`` in one compiled pass."""
    n = len(frames)
    img = np.frombuffer(frames.image, dtype=np.uint8)
    kind = frames.linktype.astype(np.int64)
    kind[np.isin(kind, d.RAW_ALIASES)] = d.LINK_RAW
    size = 1 << max(4, (2 * max(n, 1) - 1).bit_length())
    slots = np.full(size, -1, dtype=np.int64)
    problem = np.zeros(n, dtype=np.int8)
    keys_i = np.zeros((4, n), dtype=np.int64)  # per flow: version, proto, sport, dport
    keys_u = np.zeros((4, n), dtype=np.uint64)  # per flow: src hi/lo, dst hi/lo
    per_flow = np.zeros((9, n), dtype=np.int64)
    seg = np.zeros((2, n), dtype=np.int64)
    syn = np.empty(n, dtype=np.int64)
    syn_bad = np.empty(n, dtype=np.int64)
    syn_flow = np.empty((2, n), dtype=np.int64)
    picks = np.empty((PICK_ROWS, n), dtype=np.int64)
    flows, n_syn, n_picks = _scan(
        img, len(frames.image), frames.data_offset, frames.data_offset + frames.caplen, kind,
        frames.ts_ns, slots, problem, keys_i, keys_u, per_flow, seg, syn, syn_bad, syn_flow,
        picks, MAX_SEGMENTS,
    )  # fmt: skip
    f = per_flow[:, :flows]
    return Scan(
        problem=problem,
        syn=syn[:n_syn].copy(),
        syn_bad_options=syn_bad[:n_syn] != 0,
        syn_flow=syn_flow[0, :n_syn].copy(),
        syn_forward=syn_flow[1, :n_syn] != 0,
        pick=picks[0, :n_picks].copy(),
        pick_flow=picks[1, :n_picks].copy(),
        pick_forward=picks[2, :n_picks] != 0,
        pick_seq=picks[3, :n_picks].copy(),
        pick_offset=picks[4, :n_picks].copy(),
        pick_captured=picks[5, :n_picks].copy(),
        pick_wire=picks[6, :n_picks].copy(),
        pick_udp=picks[7, :n_picks] != 0,
        pick_version=picks[8, :n_picks].copy(),
        pick_tunnel=picks[9, :n_picks].copy(),
        first=f[0].copy(),
        packets_ab=f[1].copy(),
        packets_ba=f[2].copy(),
        bytes_ab=f[3].copy(),
        bytes_ba=f[4].copy(),
        first_ns=f[5].copy(),
        last_ns=f[6].copy(),
        flags=f[7].copy(),
        syn_opened=f[8] != 0,
        version=keys_i[0, :flows].copy(),
        proto=keys_i[1, :flows].copy(),
        sport=keys_i[2, :flows].copy(),
        dport=keys_i[3, :flows].copy(),
        addr=keys_u[:, :flows].copy(),
    )


@jit
def _mix(x: Any) -> Any:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@jit
def _options_bad(img: Any, pos: int, end: int) -> int:
    """1 when a TCP option's length byte is missing or impossible, else 0."""
    while pos < end:
        kind = img[pos]
        if kind in (0, 1):
            pos += 1
            continue
        if pos + 1 >= end:
            return 1
        length = int(img[pos + 1])
        if length < 2 or pos + length > end:
            return 1
        pos += length
    return 0


@jit
def _scan(
    img: Any, limit: int, start: Any, end: Any, kind: Any, ts: Any, slots: Any,
    problem: Any, keys_i: Any, keys_u: Any, per_flow: Any, seg: Any, syn: Any, syn_bad: Any,
    syn_flow: Any, picks: Any, max_segments: int,
) -> tuple[int, int, int]:  # fmt: skip
    out = np.zeros((d.N_COLUMNS, 1), dtype=np.int64)
    addr = np.zeros((4, 1), dtype=np.uint64)
    mask = slots.shape[0] - 1
    flows = 0
    n_syn = 0
    n_picks = 0
    for i in range(start.shape[0]):
        d._clear(out, 0)
        for k in range(4):
            addr[k, 0] = 0
        d._decode_one(img, limit, 0, start[i], end[i], kind[i], out, addr)
        problem[i] = out[d.C_PROBLEM, 0]
        tcp = out[d.C_TCP_OK, 0] != 0
        if not tcp and out[d.C_UDP_OK, 0] == 0:
            continue
        flags = out[d.C_FLAGS, 0] if tcp else 0
        if tcp and (flags & 0x02) != 0:
            syn[n_syn] = i
            l4 = out[d.C_L4, 0]
            syn_bad[n_syn] = _options_bad(img, l4 + 20, l4 + out[d.C_DOFF, 0])
            n_syn += 1
        version = out[d.C_VERSION, 0]
        proto = out[d.C_PROTO, 0]
        sport = out[d.C_SPORT, 0]
        dport = out[d.C_DPORT, 0]
        sh, sl, dh, dl = addr[0, 0], addr[1, 0], addr[2, 0], addr[3, 0]
        a = _mix(_mix(_mix(sh) ^ sl) ^ np.uint64(sport))
        b = _mix(_mix(_mix(dh) ^ dl) ^ np.uint64(dport))
        tag = (np.uint64(proto) << np.uint64(8)) | np.uint64(version)
        h = _mix(min(a, b) * np.uint64(0x9E3779B97F4A7C15) ^ max(a, b) ^ tag)
        pos = np.int64(h & np.uint64(mask))
        f = -1
        fwd = True
        while True:
            j = slots[pos]
            if j < 0:
                break
            if keys_i[0, j] == version and keys_i[1, j] == proto:
                if (keys_u[0, j] == sh and keys_u[1, j] == sl and keys_i[2, j] == sport
                        and keys_u[2, j] == dh and keys_u[3, j] == dl
                        and keys_i[3, j] == dport):  # fmt: skip
                    f = j
                    break
                if (keys_u[0, j] == dh and keys_u[1, j] == dl and keys_i[2, j] == dport
                        and keys_u[2, j] == sh and keys_u[3, j] == sl
                        and keys_i[3, j] == sport):  # fmt: skip
                    f = j
                    fwd = False
                    break
            pos = (pos + 1) & mask
        if f < 0:
            f = flows
            flows += 1
            slots[pos] = f
            keys_i[0, f] = version
            keys_i[1, f] = proto
            keys_i[2, f] = sport
            keys_i[3, f] = dport
            keys_u[0, f] = sh
            keys_u[1, f] = sl
            keys_u[2, f] = dh
            keys_u[3, f] = dl
            per_flow[0, f] = i
            per_flow[5, f] = ts[i]
            per_flow[6, f] = ts[i]
            per_flow[8, f] = 1 if tcp and (flags & 0x02) != 0 else 0
        if tcp and (flags & 0x02) != 0:
            syn_flow[0, n_syn - 1] = f
            syn_flow[1, n_syn - 1] = 1 if fwd else 0
        direction = 0 if fwd else 1
        per_flow[1 + direction, f] += 1
        per_flow[3 + direction, f] += out[d.C_IP_TOTAL, 0]
        per_flow[5, f] = min(per_flow[5, f], ts[i])
        per_flow[6, f] = max(per_flow[6, f], ts[i])
        per_flow[7, f] |= flags
        if out[d.C_PAYLOAD_CAP, 0] > 0 and 0 <= seg[direction, f] < max_segments:
            first_byte = img[out[d.C_PAYLOAD_OFF, 0]]
            picks[0, n_picks] = i
            picks[1, n_picks] = f
            picks[2, n_picks] = 1 if fwd else 0
            picks[3, n_picks] = out[d.C_SEQ, 0]
            picks[4, n_picks] = out[d.C_PAYLOAD_OFF, 0]
            picks[5, n_picks] = out[d.C_PAYLOAD_CAP, 0]
            picks[6, n_picks] = out[d.C_PAYLOAD_WIRE, 0]
            picks[7, n_picks] = out[d.C_UDP_OK, 0]
            picks[8, n_picks] = version
            picks[9, n_picks] = out[d.C_TUNNEL, 0]
            n_picks += 1
            # Later segments matter only to a stream that can still carry a TLS hello:
            # one opening with TLS handshake/CCS records or an HTTP CONNECT exchange, until
            # application data or an alert shows up.
            if seg[direction, f] == 0:
                more = first_byte in (0x16, 0x14, 0x43, 0x48)  # 0x43 'C', 0x48 'H'
            else:
                more = first_byte not in (0x17, 0x15)
            seg[direction, f] = seg[direction, f] + 1 if more else -1
    return flows, n_syn, n_picks
