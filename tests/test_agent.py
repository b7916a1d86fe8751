"""The agent on real traffic: its slice's edges equal the connections the test made."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import jsonschema
import pytest

from netweave import netns
from netweave.agent import Agent, AgentConfig
from netweave.graph.slice import slice_to_json

from testbed import TestBed
from tests_paths import SCHEMAS


def _dns_query(server: str, name: str) -> bytes:
    """Send one A query over UDP from the calling namespace; return the answer."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query, (server, 53))
        return s.recv(512)


@pytest.mark.parametrize("backend", ["ebpf", "afpacket"])
def test_slice_edges_equal_the_connections_made(testbed: TestBed, backend: str) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    for port in (8080, 9090):
        testbed.start(b, f"http{port}", ["python3", "-m", "http.server", str(port), "--bind", "::"])
        testbed.wait_tcp(a, link.ipv4_b, port)
    dnsmasq = ["dnsmasq", "--no-daemon", "--port=53", "--no-resolv", "--no-hosts",
               f"--listen-address={link.ipv4_b}", "--bind-interfaces",
               "--address=/example.test/10.1.2.3"]  # fmt: skip
    testbed.start(b, "dnsmasq", dnsmasq)
    time.sleep(0.5)
    # A long-lived connection, open before the agent starts: its handshake is never seen.
    early = netns.run_in(a, socket.create_connection, (link.ipv4_b, 9090))
    with early, Agent(AgentConfig(agent_id="bed-agent", netns=b, backend=backend)) as agent:
        assert not agent.degraded
        testbed.run(a, ["curl", "-s", "-o", "/dev/null", f"http://{link.ipv4_b}:8080/"])
        testbed.run(a, ["curl", "-s", "-o", "/dev/null", f"http://[{link.ipv6_b}]:8080/"])
        answer = netns.run_in(a, _dns_query, link.ipv4_b, "example.test")
        assert bytes([10, 1, 2, 3]) in answer
        early.sendall(b"GET / HTTP/1.0\r\n\r\n")
        early.recv(100)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            agent.step(0.2)
        agent.refresh()
        agent_slice = agent.slice()
    edges = {(e.client, e.server, e.port, e.protocol, e.inferred) for e in agent_slice.edges}
    assert edges == {
        (link.ipv4_a, link.ipv4_b, 8080, "tcp", False),
        (link.ipv6_a, link.ipv6_b, 8080, "tcp", False),
        (link.ipv4_a, link.ipv4_b, 53, "udp", False),
        (link.ipv4_a, link.ipv4_b, 9090, "tcp", True),
    }
    by_key = {(e.client, e.port, e.protocol): e for e in agent_slice.edges}
    http4 = by_key[(link.ipv4_a, 8080, "tcp")]
    assert http4.flows == 1 and http4.bytes_to_client > http4.bytes_to_server > 0
    assert agent_slice.agent_id == "bed-agent"
    document = json.loads(slice_to_json(agent_slice))
    schema = json.loads((SCHEMAS / "slice.schema.json").read_text())
    jsonschema.validate(document, schema)


def test_agent_once_prints_a_valid_slice(testbed: TestBed) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    testbed.start(b, "http", ["python3", "-m", "http.server", "8080", "--bind", link.ipv4_b])
    testbed.wait_tcp(a, link.ipv4_b, 8080)
    agent = subprocess.Popen(
        [sys.executable, "-m", "netweave", "agent", "--once", "--window", "3", "--netns", b],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert agent.stderr is not None
    assert agent.stderr.readline().strip() == f"netweave agent: observing {link.dev_b}"
    testbed.run(a, ["curl", "-s", "-o", "/dev/null", f"http://{link.ipv4_b}:8080/"])
    out, _ = agent.communicate(timeout=60)
    assert agent.returncode == 0
    document = json.loads(out)
    jsonschema.validate(document, json.loads((SCHEMAS / "slice.schema.json").read_text()))
    pairs = {(e["client"], e["server"], e["port"]) for e in document["edges"]}
    assert (link.ipv4_a, link.ipv4_b, 8080) in pairs
