"""Labels on graph nodes from what flows show: fingerprints and passively matched services.

:class:`NodeLabeler` sits beside the graph accumulator and sees the same capture events
(live or replayed). Fingerprints go to the endpoint that produced them: the client's JA4T
and p0f OS on the client node, JA4TS and the server's p0f result on the server node, JA4 on
the client per server:port, JA4S on the server's service. Services come from the server's
first payload only (the endpoint that sent the SYN-ACK, so a client's request is never taken
for a server's banner), matched against nmap's probes as :mod:`netweave.services.passive`
does, and land on the server node's port.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

import numpy as np

from netweave.capture.columns import KIND_HANDSHAKE, KIND_PAYLOAD
from netweave.capture.events import (
    PROTO_TCP,
    TCP_ACK,
    TCP_SYN,
    CaptureEvent,
    FirstPayload,
    TcpHandshake,
)
from netweave.capture.pcapfile import Capture
from netweave.capture.recordmaker import record_builder
from netweave.fingerprint.columnar import fingerprint_capture
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB, P0fDatabaseError, load_p0f_database
from netweave.fingerprint.records import (
    KIND_CLIENT_HELLO,
    KIND_SERVER_HELLO,
    KIND_SYN,
    KIND_SYNACK,
    FingerprintRecord,
)
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.model import Annotation
from netweave.services.passive import PassiveIdentifier, default_identifier
from netweave.services.probes_file import DEFAULT_PROBES_PATH
from netweave.services.records import ServiceMatch

SERVICE_FIELDS = ("product", "version", "info", "hostname", "ostype", "devicetype")
MAX_PENDING = 65536
# Many thousands per capture: built without the frozen dataclass's per-field guard.
_note = record_builder(Annotation)
_E = TypeVar("_E")
_P = TypeVar("_P")


@dataclass(slots=True)
class _Talk(Generic[_P]):
    """The first payloads of one TCP connection whose SYN-ACK was seen."""

    client_first: _P | None = None
    done: bool = False


class _Conversations(Generic[_E, _P]):
    """TCP connections whose SYN-ACK was seen, until the server's first payload.

    Endpoints ``_E`` are addresses (text, or numbers of one capture); a payload ``_P`` is
    whatever stands for its bytes. At most ``MAX_PENDING`` are kept (oldest out first).
    """

    def __init__(self) -> None:
        # (server, server_port, client, client_port) -> what was said so far
        # OrderedDict: dropping the oldest is O(1) (a plain dict's first key is found by
        # skipping every slot deleted before it).
        self._talks: OrderedDict[tuple[_E, int, _E, int], _Talk[_P]] = OrderedDict()

    def synack(self, server: _E, server_port: int, client: _E, client_port: int) -> None:
        """A SYN-ACK from ``server``: its connection's first payloads are awaited."""
        key = (server, server_port, client, client_port)
        if key not in self._talks:
            if len(self._talks) >= MAX_PENDING:
                self._talks.popitem(last=False)
            self._talks[key] = _Talk()

    def payload(
        self, src: _E, src_port: int, dst: _E, dst_port: int, payload: _P
    ) -> tuple[bool, _P | None]:
        """A first payload: whether it is the server's (to identify, once per connection),
        and the client's first payload when the client spoke before it."""
        as_server = self._talks.get((src, src_port, dst, dst_port))
        if as_server is not None:
            if as_server.done:
                return False, None
            as_server.done = True
            return True, as_server.client_first
        as_client = self._talks.get((dst, dst_port, src, src_port))
        if as_client is not None and as_client.client_first is None and not as_client.done:
            as_client.client_first = payload
        return False, None


class NodeLabeler:
    """Feeds fingerprinters and the passive matcher, and annotates the graph with results."""

    def __init__(
        self,
        graph: GraphAccumulator,
        fingerprinter: Fingerprinter | None = None,
        services: PassiveIdentifier | None = None,
    ) -> None:
        self.graph = graph
        self.fingerprinter = fingerprinter
        self.services = services
        self._talks: _Conversations[str, bytes] = _Conversations()
        # Annotations held back to be put on the graph at once (see plan), else None.
        self._held: list[tuple[str, int, int, Annotation]] | None = None
        self.fingerprints = 0
        self.services_found = 0

    @property
    def wants_events(self) -> bool:
        """False when neither fingerprints nor services are on (feeding would do nothing)."""
        return self.fingerprinter is not None or self.services is not None

    def feed(self, events: Iterable[CaptureEvent]) -> None:
        """Take events in arrival order (the same ones the graph takes)."""
        for event in events:
            if self.fingerprinter is not None:
                for record in self.fingerprinter.feed(event):
                    self._fingerprint(record)
            if self.services is not None:
                if isinstance(event, TcpHandshake) and event.is_synack:
                    self._talks.synack(event.src, event.src_port, event.dst, event.dst_port)
                elif isinstance(event, FirstPayload) and event.protocol == PROTO_TCP:
                    self._payload(event)

    def plan(self, capture: Capture) -> Callable[[int], None]:
        """The labels of a whole capture, to put on the graph as its events go in.

        Returns ``apply(frame)``, which annotates the graph with the labels of the events up
        to ``frame`` (called with growing frames; the graph has taken those events). The
        labels are those :meth:`feed` of ``capture.events()`` gives, in the same order; they
        are computed from the capture's columns (fingerprints by
        :func:`~netweave.fingerprint.columnar.fingerprint_capture`), without event records.
        """
        prints: list[FingerprintRecord] = []
        if self.fingerprinter is not None:
            prints = fingerprint_capture(capture, self.fingerprinter.options)
        found = self._capture_services(capture) if self.services is not None else []
        cursor = [0, 0]
        last_frame = max(max((r.frame for r in prints), default=0),
                         max((f[0] for f in found), default=0))  # fmt: skip

        def apply(frame: int) -> None:
            k, j = cursor
            whole = k == 0 and j == 0 and frame >= last_frame
            if whole:  # everything at once: one bulk update where the graph can take it
                self._held = []
            while k < len(prints) or j < len(found):
                take_print = k < len(prints) and (j >= len(found) or prints[k].frame <= found[j][0])
                if take_print and prints[k].frame <= frame:
                    self._fingerprint(prints[k])
                    k += 1
                elif not take_print and found[j][0] <= frame:
                    _frame, ip, port, ts, match = found[j]
                    self._annotate_service(ip, port, ts, match)
                    j += 1
                else:
                    break
            cursor[:] = [k, j]
            if whole:
                held, self._held = self._held or [], None
                if not self.graph.annotate_all(held):
                    for ip, port, proto, note in held:
                        if proto:
                            self.graph.annotate_service(ip, port, proto, note)
                        else:
                            self.graph.annotate_node(ip, note)

        return apply

    def _capture_services(self, capture: Capture) -> list[tuple[int, str, int, int, ServiceMatch]]:
        """(frame, server, port, time, match) of every server identified in ``capture``."""
        pc, stream = capture.payload_columns, capture.stream
        if pc is None:
            return []
        synack = (stream.kind == KIND_HANDSHAKE) & (stream.tcp_flags == TCP_SYN | TCP_ACK)
        tcp_payload = (stream.kind == KIND_PAYLOAD) & (stream.protocol == PROTO_TCP)
        at = np.flatnonzero(synack | tcp_payload)
        rows = (capture.event_order[at] - (len(stream) - len(pc))).tolist()
        talks: _Conversations[int, int] = _Conversations()
        found: list[tuple[int, str, int, int, ServiceMatch]] = []
        for is_payload, src, sport, dst, dport, row in zip(
            tcp_payload[at].tolist(), stream.src[at].tolist(), stream.src_port[at].tolist(),
            stream.dst[at].tolist(), stream.dst_port[at].tolist(), rows, strict=True,
        ):  # fmt: skip
            if not is_payload:
                talks.synack(src, sport, dst, dport)
                continue
            server, client_row = talks.payload(src, sport, dst, dport, row)
            if not server:
                continue
            client_first = pc.payload(client_row) if client_row is not None else None
            match = self._identify(sport, pc.payload(row), client_first)
            if match is not None:
                found.append((int(pc.last_frame[row]), pc.names[pc.src_id[row]], sport,
                              int(pc.time_ns[row]), match))  # fmt: skip
        return found

    # -- annotations ----------------------------------------------------------------------
    def _node_note(self, ip: str, note: Annotation) -> None:
        if self._held is not None:
            self._held.append((ip, 0, 0, note))
        else:
            self.graph.annotate_node(ip, note)

    def _service_note(self, ip: str, port: int, note: Annotation) -> None:
        if self._held is not None:
            self._held.append((ip, port, PROTO_TCP, note))
        else:
            self.graph.annotate_service(ip, port, PROTO_TCP, note)

    # -- fingerprints ---------------------------------------------------------------------
    def _fingerprint(self, r: FingerprintRecord) -> None:
        self.fingerprints += 1
        ts = r.timestamp_ns
        if r.kind == KIND_SYN:
            if r.ja4t:
                self._node_note(r.src, _note("ja4t", r.ja4t, "ja4t", ts, None))
            self._p0f(r.src, r, ts)
        elif r.kind == KIND_SYNACK:
            if r.ja4ts:
                self._node_note(r.src, _note("ja4ts", r.ja4ts, "ja4ts", ts, None))
            self._p0f(r.src, r, ts)
        elif r.kind == KIND_CLIENT_HELLO and r.ja4:
            key = f"ja4 {r.dst}:{r.dst_port}"
            self._node_note(r.src, _note(key, r.ja4, "ja4", ts, None))
        elif r.kind == KIND_SERVER_HELLO and r.ja4s:
            self._service_note(r.src, r.src_port, _note("ja4s", r.ja4s, "ja4s", ts, None))

    def _p0f(self, ip: str, r: FingerprintRecord, ts: int) -> None:
        p = r.p0f
        if p is None:
            return
        self._node_note(ip, _note("p0f_signature", p.raw_sig, "p0f", ts, None))
        if p.name:
            tag, label = _p0f_label(p.kind, p.name, p.flavor)
            self._node_note(ip, _note(tag, label, "p0f", ts, None))

    # -- passive services ---------------------------------------------------------------
    def _payload(self, p: FirstPayload) -> None:
        server, client_first = self._talks.payload(p.src, p.src_port, p.dst, p.dst_port, p.data)
        if server:
            match = self._identify(p.src_port, p.data, client_first)
            if match is not None:
                self._annotate_service(p.src, p.src_port, p.timestamp_ns, match)

    def _identify(self, port: int, data: bytes, client_first: bytes | None) -> ServiceMatch | None:
        assert self.services is not None
        match = None
        if client_first is not None:  # the client spoke first: its request picks the probe
            match = self.services.identify(None, client_first, data, port, "tcp")
        if match is None:
            # A banner; or both ends spoke at once (SSH clients send their version string
            # without waiting), so the server's first bytes did not answer the client's.
            match = self.services.identify(data, None, None, port, "tcp")
        return match

    def _annotate_service(self, ip: str, port: int, ts: int, m: ServiceMatch) -> None:
        self.services_found += 1
        source = "nmap-probes"
        notes = [
            _note("service", m.service, source, ts, None),
            _note("method", "passive", source, ts, None),
        ]
        notes += [
            _note(name, value, source, ts, None)
            for name in SERVICE_FIELDS
            if (value := getattr(m, name))
        ]
        if m.cpe:
            notes.append(_note("cpe", " ".join(m.cpe), source, ts, None))
        for note in notes:
            self._service_note(ip, port, note)


@lru_cache(maxsize=1024)
def _p0f_label(kind: str, name: str, flavor: str | None) -> tuple[str, str]:
    """The annotation key and text of a p0f match (``os``/``app``, name and flavor)."""
    return ("os" if kind == "os" else "app"), " ".join(x for x in (name, flavor) if x)


def default_labeler(
    graph: GraphAccumulator,
    *,
    foxio: bool = True,
    p0f_db: str = str(DEFAULT_P0F_DB),
    probes_file: str = str(DEFAULT_PROBES_PATH),
) -> tuple[NodeLabeler, list[str]]:
    """A labeler over Debian's p0f and nmap databases, and what could not be used and why.

    A database that cannot be read leaves its labels out rather than stopping the caller.
    """
    problems: list[str] = []
    try:
        database = load_p0f_database(p0f_db)
    except (OSError, P0fDatabaseError) as e:
        database = None
        problems.append(f"p0f database unusable ({e}); no p0f labels")
    fingerprinter = Fingerprinter(FingerprintOptions(p0f_db=database, foxio=foxio))
    services: PassiveIdentifier | None
    try:
        services = default_identifier(probes_file)
    except (OSError, ValueError) as e:
        services = None
        problems.append(f"nmap service probes unusable ({e}); no passive service labels")
    return NodeLabeler(graph, fingerprinter, services), problems
