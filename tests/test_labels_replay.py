"""Replay labels nodes as live capture does: fingerprints to the endpoint that produced them."""

from __future__ import annotations

import json

from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.records import FingerprintRecord
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions
from netweave.graph.replay import replay
from netweave.labels import default_labeler

from fingerprint_fixtures import fixtures, p0f_entries, pcap


def _reference(name: str) -> dict[str, str]:
    """ja4t/ja4ts/ja4s values of one capture from the fixtures' reference outputs."""
    out: dict[str, str] = {}
    for line in (fixtures() / "ja4" / "ja4t-ja4ts-reference.txt").read_text().splitlines():
        file, _frame, value = line.split(" ", 2)
        if file == name:
            key, _, fp = value.partition("=")
            out.setdefault(key, fp)
    expected = json.loads((fixtures() / "ja4" / "expected-wireshark" / f"{name}.json").read_text())
    for packet in expected:
        layers = packet["_source"]["layers"]
        for key in ("ja4.ja4s",):
            if key in layers:
                out.setdefault(key.split(".")[1], layers[key][0])
    return out


def _p0f_sigs(name: str) -> dict[str, str]:
    """mod -> raw_sig of the first SYN and SYN+ACK in p0f's log of the capture."""
    sigs: dict[str, str] = {}
    for fields in p0f_entries(fixtures() / "p0f" / f"{name}.log"):
        if fields["mod"] in ("syn", "syn+ack"):
            sigs.setdefault(fields["mod"], fields["raw_sig"])
    return sigs


def _records(name: str) -> list[FingerprintRecord]:
    fingerprinter = Fingerprinter(FingerprintOptions())
    return list(fingerprinter.run(read_capture(pcap(name)).events()))


def test_replay_puts_each_fingerprint_on_its_endpoint() -> None:
    name = "tls-alpn-h2.pcap"
    result = replay(pcap(name), labels=lambda g: default_labeler(g)[0])
    (edge,) = result.view.edges
    nodes = {n.ip: n for n in result.view.nodes}
    client = {(a.key, a.source): a.value for a in nodes[edge.client].annotations}
    server = {(a.key, a.source): a.value for a in nodes[edge.server].annotations}
    want, sigs = _reference(name), _p0f_sigs(name)
    assert client[("ja4t", "ja4t")] == want["ja4t"]
    assert server[("ja4ts", "ja4ts")] == want["ja4ts"]
    assert client[("p0f_signature", "p0f")] == sigs["syn"]
    assert server[("p0f_signature", "p0f")] == sigs["syn+ack"]
    # The JA4 value itself is checked against the references in the fingerprint tests (this
    # capture has none); here what counts is that it lands on the client, per server:port.
    hello = next(r for r in _records(name) if r.kind == "client_hello")
    assert (hello.src, hello.dst, hello.dst_port) == (edge.client, edge.server, edge.port)
    assert client[(f"ja4 {edge.server}:{edge.port}", "ja4")] == hello.ja4
    (service,) = nodes[edge.server].services
    notes = {a.key: a.value for a in service.annotations}
    assert service.port == edge.port == 443
    assert notes["ja4s"] == want["ja4s"]
    assert (notes["service"], notes["method"]) == ("ssl", "passive")
    assert "ja4t" not in {a.key for a in nodes[edge.server].annotations}
