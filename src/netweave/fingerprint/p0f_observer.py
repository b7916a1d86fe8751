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

from collections.abc import Sequence
from dataclasses import dataclass, field

from netweave.capture.events import TcpHandshake
from netweave.fingerprint.p0f import (
    SPECIAL_MSS,
    SPECIAL_WIN,
    AckRule,
    P0fPacket,
    match,
    p0f_view,
    params,
    raw_signature,
)
from netweave.fingerprint.p0f_db import P0fDatabase

MAX_FLOWS = 200_000
MAX_CACHED = 65_536

_ViewKey = tuple[int, int, int, int, bool, bool, int, bool, int, bool, int, int, bool, bytes, bool]
"""The header fields p0f's view of a packet depends on (arguments of ``p0f_view``)."""


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


@dataclass(slots=True)
class _View:
    """p0f's view of one distinct set of header fields, with the results it gave."""

    packet: P0fPacket | None
    sendsyn: bool = False
    syn_result: P0fResult | None = None
    synack_results: dict[int, P0fResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sendsyn = P0fObserver.is_sendsyn(self.packet)


class P0fObserver:
    """Feeds handshake records through p0f's flow logic and matcher."""

    def __init__(self, db: P0fDatabase, *, ack_rule: AckRule = AckRule.P0F_X86) -> None:
        self._db = db
        self._ack_rule = ack_rule
        self._x86 = ack_rule is AckRule.P0F_X86
        # keyed by IP version and the two endpoints in a fixed order (either direction)
        self._flows: dict[tuple[int, str, int, str, int], _Flow] = {}
        # p0f's view of a packet depends only on the header fields in ``_ViewKey``, and a
        # result only on that view and the peer MSS: traffic repeats a handful of stacks,
        # so most lookups hit (bounded: cleared when full).
        self._views: dict[_ViewKey, _View] = {}
        self._memo: dict[tuple[P0fPacket, int, bool, bool], P0fResult] = {}

    def observe(self, h: TcpHandshake) -> P0fResult | None:
        """p0f's result for this record, or ``None`` when p0f would not fingerprint it."""
        return self.observe_many((h,))[0]

    def observe_many(self, handshakes: Sequence[TcpHandshake]) -> list[P0fResult | None]:
        """:meth:`observe` of each record in turn (one loop: replay's batch path)."""
        out: list[P0fResult | None] = []
        add = out.append
        views = self._views
        flows = self._flows
        x86 = self._x86
        for h in handshakes:
            ack = h.ack
            seq = h.seq
            view: _ViewKey = (
                h.ip_version, h.ttl, h.tos, h.ip_flags, h.ip_id == 0, h.flow_label != 0,
                h.ip_options_length, seq == 0, (ack >> 24) & 1 if x86 else int(ack != 0),
                ack == 0, h.window, h.tcp_flags, h.urgent_pointer != 0, h.tcp_options,
                h.payload_length != 0,
            )  # fmt: skip
            entry = views.get(view)
            if entry is None:
                if len(views) >= MAX_CACHED:
                    views.clear()
                entry = views[view] = _View(p0f_view(*view))
            pk = entry.packet
            if pk is None:
                add(None)
                continue
            src = (h.src, h.src_port)
            dst = (h.dst, h.dst_port)
            key = (h.ip_version, *src, *dst) if src <= dst else (h.ip_version, *dst, *src)
            flow = flows.get(key)
            if pk.to_server:
                if flow is not None:
                    if flow.client == src and flow.syn_seq == seq:
                        add(None)  # a retransmitted SYN
                        continue
                    del flows[key]
                if len(flows) >= MAX_FLOWS:
                    flows.pop(next(iter(flows)))
                # p0f-sendsyn probes (window 1337, MSS 1331) are logged under their own name.
                sendsyn = entry.sendsyn
                result = entry.syn_result
                if result is None:
                    result = entry.syn_result = self._compute(pk, 0, synack=False,
                                                              sendsyn=sendsyn)  # fmt: skip
                if result.kind != "app" or sendsyn:
                    flows[key] = _Flow(src, dst, seq, pk.mss, False, sendsyn)
                add(result)
                continue
            if flow is None:
                add(None)
                continue
            if flow.sendsyn:
                del flows[key]
                add(self._synack_result(entry, pk, flow.syn_mss, sendsyn=True))
                continue
            if flow.client == src or flow.acked:
                add(None)
                continue
            flow.acked = True
            result = self._synack_result(entry, pk, flow.syn_mss, sendsyn=False)
            if result.kind == "app":
                del flows[key]
            add(result)
        return out

    @staticmethod
    def is_sendsyn(pk: P0fPacket | None) -> bool:
        """Whether ``pk`` is a p0f-sendsyn probe (window 1337, MSS 1331)."""
        return pk is not None and pk.win == SPECIAL_WIN and pk.mss == SPECIAL_MSS

    def result(self, pk: P0fPacket, syn_mss: int, *, synack: bool, sendsyn: bool) -> P0fResult:
        """p0f's verdict on ``pk`` (``syn_mss``: MSS of the flow's SYN, for a SYN-ACK)."""
        key = (pk, syn_mss, synack, sendsyn)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._compute(pk, syn_mss, synack=synack, sendsyn=sendsyn)
        return found

    def _synack_result(
        self, entry: _View, pk: P0fPacket, syn_mss: int, *, sendsyn: bool
    ) -> P0fResult:
        memo = entry.synack_results
        key = syn_mss * 2 + sendsyn
        result = memo.get(key)
        if result is None:
            result = memo[key] = self._compute(pk, syn_mss, synack=True, sendsyn=sendsyn)
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
