"""The per-agent slice: JSON that validates against schemas/slice.schema.json and reads back."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.capture.events import FlowCounters, FlowSeen, TcpHandshake
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.inventory import inventory_from
from netweave.graph.model import Annotation, GraphLimits
from netweave.graph.slice import SliceError, build_slice, slice_from_json, slice_to_json

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "slice.schema.json"
T0 = 1_700_000_000 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Listener:
    proto: str
    address: str
    port: int
    comm: str | None


@dataclass(frozen=True, slots=True)
class _Outbound:
    proto: str
    ip: str
    port: int
    first_seen: float
    last_seen: float
    comm: str
    connections: int


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def sample_slice_text() -> str:
    inv = inventory_from(
        listeners=[
            _Listener("tcp", "::", 22, "sshd"),
            _Listener("udp", "::ffff:10.0.0.1", 53, "dnsmasq"),
        ],
        local_ips=["10.0.0.1", "fd00::1"],
        outbound=[_Outbound("tcp", "10.0.0.9", 5432, 1.5, 2.5, "psql", 3)],
    )
    g = GraphAccumulator(GraphLimits(max_edges=3))
    g.set_inventory(inv, host="box")
    g.feed_many([
        FlowSeen(T0 - 1000, 1, 4, 6, "10.0.0.66", "10.0.0.1", 41000, 22, 0x18),  # evicted
        TcpHandshake(T0, 1, 4, "10.0.0.1", "10.0.0.9", 40000, 5432, 64, 0, 2, 0, 0, 0, 60, 1, 0,
                     64240, 2, 0, b"", 0),
        FlowSeen(T0 + 1, 2, 6, 6, "fd00::7", "fd00::1", 50000, 22, 0x18),
        FlowSeen(T0 + 2, 3, 4, 17, "10.0.0.5", "10.0.0.1", 40001, 53, 0),
        FlowCounters(4, 6, "10.0.0.1", "10.0.0.9", 40000, 5432, 4, 400, 3, 3000, T0, T0 + 5,
                     0x1B, True),
    ])  # fmt: skip
    g.annotate_node("10.0.0.9", Annotation("os", "Linux 3.11 and newer", "p0f", T0, None))
    g.annotate_service("10.0.0.9", 5432, 6, Annotation("service", "postgresql", "nmap", T0, 0.9))
    return slice_to_json(build_slice(g.snapshot(), inv, agent_id="agent-1", generated_ns=T0))


def test_slice_validates_against_the_schema_and_reads_back_equal() -> None:
    text = sample_slice_text()
    doc = json.loads(text)
    errors = [e.message for e in validator().iter_errors(doc)]
    assert errors == []
    assert doc["version"] == 1
    assert doc["agent_id"] == "agent-1"
    assert doc["generated_at"] == "2023-11-14T22:13:20.000Z"
    assert doc["evictions"]["edges_capacity"] == 1  # four edges into a bound of three
    assert doc["evictions"]["total"] == 1
    assert {(x["protocol"], x["address"], x["port"], x["process"]) for x in doc["listeners"]} == {
        ("tcp", "::", 22, "sshd"),
        ("udp", "10.0.0.1", 53, "dnsmasq"),
    }
    edges = {(e["client"], e["server"], e["port"], e["protocol"]): e for e in doc["edges"]}
    assert edges[("fd00::7", "fd00::1", 22, "tcp")]["server_process"] == "sshd"
    assert edges[("fd00::7", "fd00::1", 22, "tcp")]["inferred"] is True
    assert edges[("10.0.0.5", "10.0.0.1", 53, "udp")]["server_process"] == "dnsmasq"
    nodes = {n["ip"]: n for n in doc["nodes"]}
    assert nodes["10.0.0.1"]["host"] == "box"
    assert "10.0.0.66" not in nodes or not any(e["client"] == "10.0.0.66" for e in doc["edges"])
    assert nodes["10.0.0.9"]["services"][0]["annotations"][0]["value"] == "postgresql"
    again = slice_from_json(text)
    assert slice_to_json(again) == text


def test_schema_rejects_what_the_slice_never_writes() -> None:
    doc = json.loads(sample_slice_text())
    check = validator()
    bad_port = json.loads(json.dumps(doc))
    bad_port["edges"][0]["port"] = 70000
    bad_ip = json.loads(json.dumps(doc))
    bad_ip["nodes"][0]["ip"] = "10.0.0.300"
    extra = json.loads(json.dumps(doc))
    extra["edges"][0]["colour"] = "red"
    missing = json.loads(json.dumps(doc))
    del missing["evictions"]["flows_idle"]
    for broken in (bad_port, bad_ip, extra, missing):
        assert list(check.iter_errors(broken)), broken


def test_reading_a_broken_slice_names_the_field() -> None:
    doc = json.loads(sample_slice_text())
    doc["edges"][0]["port"] = "eighty"
    with pytest.raises(SliceError, match=r"\$\.edges\[0\]\.port: expected an integer"):
        slice_from_json(json.dumps(doc))
    doc["version"] = 99
    with pytest.raises(SliceError, match="unsupported slice version 99"):
        slice_from_json(json.dumps(doc))
    with pytest.raises(SliceError, match="not JSON"):
        slice_from_json("{")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=_json, field=st.sampled_from(["edges", "nodes", "listeners", "evictions", "version"]))
def test_reading_any_json_raises_only_slice_errors(doc: object, field: str) -> None:
    base = json.loads(sample_slice_text())
    for candidate in (doc, {**base, field: doc}):
        with contextlib.suppress(SliceError):
            slice_from_json(json.dumps(candidate))
