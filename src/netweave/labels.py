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

from collections.abc import Iterable
from dataclasses import dataclass

from netweave.capture.events import PROTO_TCP, CaptureEvent, FirstPayload, TcpHandshake
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


@dataclass(slots=True)
class _Talk:
    """The first payloads of one TCP connection whose SYN-ACK was seen."""

    client_first: bytes | None = None
    done: bool = False


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
        # (server, server_port, client, client_port) -> what was said so far
        self._talks: dict[tuple[str, int, str, int], _Talk] = {}
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
                    self._expect(event)
                elif isinstance(event, FirstPayload) and event.protocol == PROTO_TCP:
                    self._payload(event)

    # -- fingerprints ---------------------------------------------------------------------
    def _fingerprint(self, r: FingerprintRecord) -> None:
        self.fingerprints += 1
        ts = r.timestamp_ns
        if r.kind == KIND_SYN:
            if r.ja4t:
                self.graph.annotate_node(r.src, Annotation("ja4t", r.ja4t, "ja4t", ts))
            self._p0f(r.src, r, ts)
        elif r.kind == KIND_SYNACK:
            if r.ja4ts:
                self.graph.annotate_node(r.src, Annotation("ja4ts", r.ja4ts, "ja4ts", ts))
            self._p0f(r.src, r, ts)
        elif r.kind == KIND_CLIENT_HELLO and r.ja4:
            key = f"ja4 {r.dst}:{r.dst_port}"
            self.graph.annotate_node(r.src, Annotation(key, r.ja4, "ja4", ts))
        elif r.kind == KIND_SERVER_HELLO and r.ja4s:
            self.graph.annotate_service(
                r.src, r.src_port, PROTO_TCP, Annotation("ja4s", r.ja4s, "ja4s", ts)
            )

    def _p0f(self, ip: str, r: FingerprintRecord, ts: int) -> None:
        p = r.p0f
        if p is None:
            return
        self.graph.annotate_node(ip, Annotation("p0f_signature", p.raw_sig, "p0f", ts))
        if p.name:
            label = " ".join(x for x in (p.name, p.flavor) if x)
            tag = "os" if p.kind == "os" else "app"
            self.graph.annotate_node(ip, Annotation(tag, label, "p0f", ts))

    # -- passive services ---------------------------------------------------------------
    def _expect(self, synack: TcpHandshake) -> None:
        key = (synack.src, synack.src_port, synack.dst, synack.dst_port)
        if key not in self._talks:
            if len(self._talks) >= MAX_PENDING:
                del self._talks[next(iter(self._talks))]
            self._talks[key] = _Talk()

    def _payload(self, p: FirstPayload) -> None:
        as_server = self._talks.get((p.src, p.src_port, p.dst, p.dst_port))
        if as_server is not None:
            if not as_server.done:
                as_server.done = True
                self._identify(p, as_server.client_first)
            return
        as_client = self._talks.get((p.dst, p.dst_port, p.src, p.src_port))
        if as_client is not None and as_client.client_first is None and not as_client.done:
            as_client.client_first = p.data

    def _identify(self, server_payload: FirstPayload, client_first: bytes | None) -> None:
        assert self.services is not None
        port, data = server_payload.src_port, server_payload.data
        match = None
        if client_first is not None:  # the client spoke first: its request picks the probe
            match = self.services.identify(None, client_first, data, port, "tcp")
        if match is None:
            # A banner; or both ends spoke at once (SSH clients send their version string
            # without waiting), so the server's first bytes did not answer the client's.
            match = self.services.identify(data, None, None, port, "tcp")
        if match is not None:
            self._annotate_service(server_payload, match)

    def _annotate_service(self, p: FirstPayload, m: ServiceMatch) -> None:
        self.services_found += 1
        ts, source = p.timestamp_ns, "nmap-probes"
        notes = [
            Annotation("service", m.service, source, ts),
            Annotation("method", "passive", source, ts),
        ]
        notes += [
            Annotation(name, value, source, ts)
            for name in SERVICE_FIELDS
            if (value := getattr(m, name))
        ]
        if m.cpe:
            notes.append(Annotation("cpe", " ".join(m.cpe), source, ts))
        for note in notes:
            self.graph.annotate_service(p.src, p.src_port, PROTO_TCP, note)


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
