"""p0f's per-flow bookkeeping: which SYN and SYN-ACK get fingerprinted, and with what.

p0f 3.09b (``flow_dispatch()`` in ``process.c``) fingerprints the first SYN of a flow
(a retransmission with the same sequence number is a dupe; a SYN with a new sequence
number restarts the flow), and the first SYN-ACK travelling server to client of a flow
opened by a SYN. A SYN matching a userland-tool signature (class ``!``) ends the flow, so
its SYN-ACK is not fingerprinted. The MSS of the flow's SYN is used when reading the
SYN-ACK's window (``mss*N`` of the peer's MSS).

Handshake records are all this observer sees: p0f's flow teardown on RST/FIN and its
30-second connection expiry are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from netweave.capture.events import TcpHandshake
from netweave.fingerprint.p0f import (
    SPECIAL_MSS,
    SPECIAL_WIN,
    AckRule,
    P0fPacket,
    match,
    p0f_packet,
    params,
    raw_signature,
)
from netweave.fingerprint.p0f_db import P0fDatabase

MAX_FLOWS = 200_000
MAX_CACHED = 65_536


@dataclass(frozen=True, slots=True)
class P0fResult:
    """p0f's verdict on one SYN or SYN-ACK, with the fields p0f logs."""

    module: str  # p0f's log module: "syn", "syn+ack", "sendsyn probe", "sendsyn response"
    raw_sig: str
    label: str  # "???" when no signature matched
    os_class: str | None  # None for no match and for userland tools
    name: str | None
    flavor: str | None
    kind: str  # "os", or "app" for a userland-tool signature
    dist: int
    params: str
    generic: bool
    fuzzy: bool
    matched_line: int | None


@dataclass(slots=True)
class _Flow:
    client: tuple[str, int]
    server: tuple[str, int]
    syn_seq: int
    syn_mss: int
    acked: bool = False
    sendsyn: bool = False


class P0fObserver:
    """Feeds handshake records through p0f's flow logic and matcher."""

    def __init__(self, db: P0fDatabase, *, ack_rule: AckRule = AckRule.P0F_X86) -> None:
        self._db = db
        self._ack_rule = ack_rule
        self._flows: dict[tuple[int, frozenset[tuple[str, int]]], _Flow] = {}
        # Results depend only on the packet's p0f view and the peer MSS: traffic repeats a
        # handful of stacks, so most lookups hit (bounded: cleared when full).
        self._results: dict[tuple[P0fPacket, int, bool, bool], P0fResult] = {}

    def observe(self, h: TcpHandshake) -> P0fResult | None:
        """p0f's result for this record, or ``None`` when p0f would not fingerprint it."""
        pk = p0f_packet(h, ack_rule=self._ack_rule)
        if pk is None:
            return None
        src = (h.src, h.src_port)
        dst = (h.dst, h.dst_port)
        key = (h.ip_version, frozenset((src, dst)))
        flow = self._flows.get(key)
        if pk.to_server:
            if flow is not None:
                if flow.client == src and flow.syn_seq == h.seq:
                    return None  # a retransmitted SYN
                del self._flows[key]
            if len(self._flows) >= MAX_FLOWS:
                self._flows.pop(next(iter(self._flows)))
            # p0f-sendsyn probes (window 1337, MSS 1331) are logged under their own name.
            sendsyn = pk.win == SPECIAL_WIN and pk.mss == SPECIAL_MSS
            flow = _Flow(client=src, server=dst, syn_seq=h.seq, syn_mss=0, sendsyn=sendsyn)
            self._flows[key] = flow
            result = self._result(pk, 0, synack=False, sendsyn=sendsyn)
            flow.syn_mss = pk.mss
            if result.kind == "app" and not sendsyn:
                del self._flows[key]
            return result
        if flow is None:
            return None
        if flow.sendsyn:
            del self._flows[key]
            return self._result(pk, flow.syn_mss, synack=True, sendsyn=True)
        if flow.client == src or flow.acked:
            return None
        flow.acked = True
        result = self._result(pk, flow.syn_mss, synack=True, sendsyn=False)
        if result.kind == "app":
            del self._flows[key]
        return result

    def _result(self, pk: P0fPacket, syn_mss: int, *, synack: bool, sendsyn: bool) -> P0fResult:
        key = (pk, syn_mss, synack, sendsyn)
        result = self._results.get(key)
        if result is None:
            if len(self._results) >= MAX_CACHED:
                self._results.clear()
            result = self._results[key] = self._compute(pk, syn_mss, synack=synack,
                                                        sendsyn=sendsyn)  # fmt: skip
        return result

    def _compute(self, pk: P0fPacket, syn_mss: int, *, synack: bool, sendsyn: bool) -> P0fResult:
        found = match(self._db, pk, syn_mss)
        sig = found.signature
        label = sig.label if sig is not None else None
        if sendsyn:
            module = "sendsyn response" if synack else "sendsyn probe"
        else:
            module = "syn+ack" if synack else "syn"
        return P0fResult(
            module=module,
            raw_sig=raw_signature(pk, syn_mss, synack=synack),
            label=label.text if label is not None else "???",
            os_class=label.os_class if label is not None else None,
            name=label.name if label is not None else None,
            flavor=(label.flavor or None) if label is not None else None,
            kind="app" if sendsyn or (label is not None and label.os_class is None) else "os",
            dist=found.dist,
            params=params(pk, found),
            generic=bool(label is not None and label.generic),
            fuzzy=found.fuzzy,
            matched_line=sig.line if sig is not None else None,
        )
