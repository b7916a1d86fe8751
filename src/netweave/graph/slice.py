"""The per-agent slice: this host's part of the service graph, as versioned JSON.

A slice carries the agent id (default: the host name), when it was generated, the host's
local IPs, listeners and outbound list (from the socket table), the graph's nodes (with the
annotations the fingerprint and service layers filled) and edges, and what the graph evicted
to stay within its bounds. ``schemas/slice.schema.json`` (JSON Schema Draft 2020-12) is the
contract; :func:`slice_to_json` writes it and :func:`slice_from_json` reads it back.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Final

from netweave.graph.inventory import Inventory, Listener, Outbound
from netweave.graph.model import (
    Annotation,
    Edge,
    Evictions,
    GraphView,
    Node,
    Service,
)

__all__ = [
    "SLICE_SCHEMA_ID",
    "SLICE_VERSION",
    "AgentSlice",
    "SliceError",
    "build_slice",
    "slice_from_json",
    "slice_to_json",
]

SLICE_VERSION: Final = 1
SLICE_SCHEMA_ID: Final = "https://netweave.dev/schemas/slice.schema.json"


class SliceError(ValueError):
    """A slice document is not valid: the message names the field path and the problem."""


@dataclass(frozen=True, slots=True)
class AgentSlice:
    """One agent's view of the graph at ``generated_ns`` (nanoseconds since the epoch)."""

    agent_id: str
    generated_ns: int
    local_ips: tuple[str, ...]
    listeners: tuple[Listener, ...]
    outbound: tuple[Outbound, ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    evictions: Evictions
    events: int
    flows_tracked: int
    version: int = SLICE_VERSION


def build_slice(
    view: GraphView,
    inventory: Inventory | None = None,
    *,
    agent_id: str | None = None,
    generated_ns: int | None = None,
) -> AgentSlice:
    """Assemble a slice from a graph snapshot and this host's inventory."""
    inv = inventory or Inventory()
    return AgentSlice(
        agent_id=agent_id or socket.gethostname(),
        generated_ns=time.time_ns() if generated_ns is None else generated_ns,
        local_ips=inv.local_ips,
        listeners=inv.listeners,
        outbound=inv.outbound,
        nodes=view.nodes,
        edges=view.edges,
        evictions=view.evictions,
        events=view.events,
        flows_tracked=view.flows_tracked,
    )


def slice_to_json(agent_slice: AgentSlice, *, indent: int | None = 2) -> str:
    """The slice as JSON text (schema ``schemas/slice.schema.json``).

    With ``indent``, each top-level field is on its own line and every node, edge,
    listener and outbound entry on a line of its own (compact inside), so a slice of a
    hundred thousand edges stays readable and is written by the C encoder (``json``'s
    indenting encoder is pure Python, about twenty times slower); without, one line.
    """
    doc = _document(agent_slice)
    if indent is None:
        return json.dumps(doc, separators=(",", ":"))
    pad = " " * indent
    fields = []
    for key, value in doc.items():
        name = json.dumps(key)
        if isinstance(value, list) and value:
            items = f",\n{pad}{pad}".join(json.dumps(item) for item in value)
            fields.append(f"{pad}{name}: [\n{pad}{pad}{items}\n{pad}]")
        else:
            fields.append(f"{pad}{name}: {json.dumps(value)}")
    return "{\n" + ",\n".join(fields) + "\n}"


def slice_from_json(text: str | bytes) -> AgentSlice:
    """Read a slice written by :func:`slice_to_json`.

    Raises :class:`SliceError` naming the field when the document is not a slice of a
    supported version (validate against the schema first for a full report).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SliceError(f"not JSON: {exc}") from exc
    reader = _Reader(doc, "$")
    version = reader.integer("version")
    if version != SLICE_VERSION:
        raise SliceError(f"$.version: unsupported slice version {version} (want {SLICE_VERSION})")
    return AgentSlice(
        agent_id=reader.text("agent_id"),
        generated_ns=reader.integer("generated_ns"),
        local_ips=tuple(reader.strings("local_ips")),
        listeners=tuple(_listener(r) for r in reader.objects("listeners")),
        outbound=tuple(_outbound(r) for r in reader.objects("outbound")),
        nodes=tuple(_node(r) for r in reader.objects("nodes")),
        edges=tuple(_edge(r) for r in reader.objects("edges")),
        evictions=Evictions(**{k: reader.sub("evictions").integer(k) for k in _EVICTION_FIELDS}),
        events=reader.sub("stats").integer("events"),
        flows_tracked=reader.sub("stats").integer("flows_tracked"),
        version=version,
    )


# -- writing ------------------------------------------------------------------------------

_EVICTION_FIELDS: Final = (
    "nodes_capacity",
    "nodes_idle",
    "edges_capacity",
    "edges_idle",
    "flows_capacity",
    "flows_idle",
    "annotations_capacity",
)


def _iso(ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _document(s: AgentSlice) -> dict[str, Any]:
    return {
        "$schema": SLICE_SCHEMA_ID,
        "version": s.version,
        "agent_id": s.agent_id,
        "generated_at": _iso(s.generated_ns),
        "generated_ns": s.generated_ns,
        "local_ips": list(s.local_ips),
        "listeners": [
            {"protocol": x.proto, "address": x.address, "port": x.port, "process": x.process}
            for x in s.listeners
        ],
        "outbound": [
            {
                "protocol": o.proto,
                "ip": o.ip,
                "port": o.port,
                "first_seen": o.first_seen,
                "last_seen": o.last_seen,
                "process": o.process,
                "connections": o.connections,
            }
            for o in s.outbound
        ],
        "nodes": [_node_doc(n) for n in s.nodes],
        "edges": [_edge_doc(e) for e in s.edges],
        "evictions": {k: getattr(s.evictions, k) for k in _EVICTION_FIELDS}
        | {"total": s.evictions.total},
        "stats": {"events": s.events, "flows_tracked": s.flows_tracked},
    }


def _note_doc(a: Annotation) -> dict[str, Any]:
    return {
        "key": a.key,
        "value": a.value,
        "source": a.source,
        "updated_ns": a.updated_ns,
        "confidence": a.confidence,
    }


def _node_doc(n: Node) -> dict[str, Any]:
    return {
        "ip": n.ip,
        "local": n.local,
        "host": n.host,
        "processes": list(n.processes),
        "first_seen_ns": n.first_seen_ns,
        "last_seen_ns": n.last_seen_ns,
        "annotations": [_note_doc(a) for a in n.annotations],
        "services": [
            {
                "port": svc.port,
                "protocol": svc.protocol,
                "annotations": [_note_doc(a) for a in svc.annotations],
            }
            for svc in n.services
        ],
    }


def _edge_doc(e: Edge) -> dict[str, Any]:
    return {
        "client": e.client,
        "server": e.server,
        "port": e.port,
        "protocol": e.protocol,
        "flows": e.flows,
        "packets_to_server": e.packets_to_server,
        "bytes_to_server": e.bytes_to_server,
        "packets_to_client": e.packets_to_client,
        "bytes_to_client": e.bytes_to_client,
        "first_seen_ns": e.first_seen_ns,
        "last_seen_ns": e.last_seen_ns,
        "inferred": e.inferred,
        "server_process": e.server_process,
        "client_process": e.client_process,
    }


# -- reading ------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object, with errors naming the field path."""

    def __init__(self, doc: object, path: str) -> None:
        if not isinstance(doc, dict):
            raise SliceError(f"{path}: expected an object, got {type(doc).__name__}")
        self.doc: dict[str, object] = doc
        self.path = path

    def _get(self, key: str) -> object:
        if key not in self.doc:
            raise SliceError(f"{self.path}.{key}: missing")
        return self.doc[key]

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise SliceError(f"{self.path}.{key}: expected a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise SliceError(f"{self.path}.{key}: expected a string or null")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SliceError(f"{self.path}.{key}: expected an integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SliceError(f"{self.path}.{key}: expected a number")
        return float(value)

    def opt_number(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise SliceError(f"{self.path}.{key}: expected true or false")
        return value

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.path}.{key}")

    def strings(self, key: str) -> list[str]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SliceError(f"{self.path}.{key}: expected a list of strings")
        return value

    def objects(self, key: str) -> list[_Reader]:
        value = self._get(key)
        if not isinstance(value, list):
            raise SliceError(f"{self.path}.{key}: expected a list")
        return [_Reader(v, f"{self.path}.{key}[{i}]") for i, v in enumerate(value)]


def _listener(r: _Reader) -> Listener:
    return Listener(r.text("protocol"), r.text("address"), r.integer("port"), r.opt_text("process"))


def _outbound(r: _Reader) -> Outbound:
    return Outbound(
        proto=r.text("protocol"),
        ip=r.text("ip"),
        port=r.integer("port"),
        first_seen=r.number("first_seen"),
        last_seen=r.number("last_seen"),
        process=r.opt_text("process"),
        connections=r.integer("connections"),
    )


def _note(r: _Reader) -> Annotation:
    return Annotation(
        key=r.text("key"),
        value=r.text("value"),
        source=r.text("source"),
        updated_ns=r.integer("updated_ns"),
        confidence=r.opt_number("confidence"),
    )


def _node(r: _Reader) -> Node:
    return Node(
        ip=r.text("ip"),
        local=r.flag("local"),
        host=r.opt_text("host"),
        processes=tuple(r.strings("processes")),
        first_seen_ns=r.integer("first_seen_ns"),
        last_seen_ns=r.integer("last_seen_ns"),
        annotations=tuple(_note(a) for a in r.objects("annotations")),
        services=tuple(
            Service(
                port=s.integer("port"),
                protocol=s.text("protocol"),
                annotations=tuple(_note(a) for a in s.objects("annotations")),
            )
            for s in r.objects("services")
        ),
    )


def _edge(r: _Reader) -> Edge:
    return Edge(
        client=r.text("client"),
        server=r.text("server"),
        port=r.integer("port"),
        protocol=r.text("protocol"),
        flows=r.integer("flows"),
        packets_to_server=r.integer("packets_to_server"),
        bytes_to_server=r.integer("bytes_to_server"),
        packets_to_client=r.integer("packets_to_client"),
        bytes_to_client=r.integer("bytes_to_client"),
        first_seen_ns=r.integer("first_seen_ns"),
        last_seen_ns=r.integer("last_seen_ns"),
        inferred=r.flag("inferred"),
        server_process=r.opt_text("server_process"),
        client_process=r.opt_text("client_process"),
    )
