"""Replay of the shared fixture captures into the graph, checked against tshark.

Needs ``../shared/fixtures/ja4/pcap`` (fails under CI=true when it is missing) and tshark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from netweave.graph.replay import replay

REPO = Path(__file__).resolve().parent.parent
PCAPS = REPO.parent / "shared" / "fixtures" / "ja4" / "pcap"
SCHEMA = REPO / "schemas" / "slice.schema.json"


def _pcaps() -> list[Path]:
    if not PCAPS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"fixture captures missing at {PCAPS} (CI=true: they must be present)")
        pytest.skip(f"fixture captures not found at {PCAPS}")
    return sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))


def _tshark() -> str:
    found = shutil.which("tshark")
    if found is None:
        pytest.skip("tshark is not installed (scripts/bootstrap.sh --test installs it)")
    return found


def _innermost(field: str) -> str:
    return field.rsplit(",", maxsplit=1)[-1]


def tshark_handshakes(path: Path) -> set[tuple[str, str, int]]:
    """(client, server, port) of every TCP handshake tshark sees: SYN senders are clients."""
    out: set[tuple[str, str, int]] = set()
    proc = subprocess.run(
        [_tshark(), "-r", str(path), "-Y", "tcp.flags.syn==1 && !icmp && !icmpv6", "-T", "fields",
         "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.ack"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        ip4s, ip6s, ip4d, ip6d, sport, dport, ack = line.split("\t")
        src = _innermost(ip6s or ip4s)
        dst = _innermost(ip6d or ip4d)
        if _innermost(ack) in ("1", "True"):  # a SYN-ACK: the receiver is the client
            out.add((dst, src, int(_innermost(sport))))
        else:
            out.add((src, dst, int(_innermost(dport))))
    return out


def test_replayed_handshake_edges_equal_tshark_on_every_fixture() -> None:
    checked = 0
    for path in _pcaps():
        result = replay(path)
        got = {(e.client, e.server, e.port) for e in result.view.edges
               if e.protocol == "tcp" and not e.inferred}  # fmt: skip
        assert got == tshark_handshakes(path), path.name
        for e in result.view.edges:
            assert e.flows >= 1, (path.name, e)
        checked += bool(got)
    assert checked >= 14  # fixtures holding TCP handshakes


def test_tunnelled_capture_gives_the_inner_flow_with_tshark_counts() -> None:
    path = next(p for p in _pcaps() if p.name == "gre-erspan-vxlan.pcap")
    result = replay(path)
    assert [(e.client, e.server, e.port, e.protocol, e.inferred) for e in result.view.edges] == [
        ("10.16.27.12", "10.16.27.131", 80, "tcp", False)
    ]
    edge = result.view.edges[0]
    proc = subprocess.run(
        [_tshark(), "-r", str(path), "-Y", "tcp", "-T", "fields", "-e", "ip.src", "-e", "ip.len"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    to_server = [int(_innermost(ln.split("\t")[1])) for ln in proc.stdout.splitlines()
                 if _innermost(ln.split("\t")[0]) == "10.16.27.12"]  # fmt: skip
    to_client = [int(_innermost(ln.split("\t")[1])) for ln in proc.stdout.splitlines()
                 if _innermost(ln.split("\t")[0]) == "10.16.27.131"]  # fmt: skip
    assert (edge.packets_to_server, edge.bytes_to_server) == (len(to_server), sum(to_server))
    assert (edge.packets_to_client, edge.bytes_to_client) == (len(to_client), sum(to_client))


def _netweave(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netweave", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_replay_command_writes_a_valid_slice_and_dot_graphviz_renders(tmp_path: Path) -> None:
    path = next(p for p in _pcaps() if p.name == "latest.pcapng")
    out_json, out_dot = tmp_path / "g.json", tmp_path / "g.dot"
    proc = _netweave("replay", str(path), "--json", str(out_json), "--dot", str(out_dot),
                     "--agent-id", "lab")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(doc)
    assert doc["agent_id"] == "lab"
    want = tshark_handshakes(path)
    assert {(e["client"], e["server"], e["port"]) for e in doc["edges"]
            if e["protocol"] == "tcp" and not e["inferred"]} == want  # fmt: skip
    dot_text = out_dot.read_text()
    for client, server, _port in want:
        assert f'"{client}" -> "{server}"' in dot_text
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed (scripts/bootstrap.sh --test installs it)")
    svg = subprocess.run(["dot", "-Tsvg", str(out_dot)], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert "<svg" in svg.stdout and "52.249.29.248" in svg.stdout


def test_replay_of_a_damaged_capture_keeps_what_came_before(tmp_path: Path) -> None:
    source = next(p for p in _pcaps() if p.name == "latest.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(source[: len(source) * 2 // 3])
    out_json = tmp_path / "cut.json"
    proc = _netweave("replay", str(cut), "--json", str(out_json), "-q")
    assert proc.returncode == 1
    assert str(cut) in proc.stderr and "byte offset" in proc.stderr, proc.stderr
    edges = json.loads(out_json.read_text())["edges"]
    assert 0 < len(edges) < len(replay(next(p for p in _pcaps() if p.name == "latest.pcapng"))
                                .view.edges) + 1  # fmt: skip

    garbage = tmp_path / "notes.txt"
    garbage.write_text("this is not a capture file\n")
    proc = _netweave("replay", str(garbage))
    assert proc.returncode == 2
    assert f"{garbage}: byte offset 0: not a pcap or pcapng file" in proc.stderr


def test_every_fixture_gives_a_slice_the_schema_accepts() -> None:
    from netweave.graph.slice import build_slice, slice_to_json

    schema = json.loads(SCHEMA.read_text())
    check = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for path in _pcaps():
        doc = json.loads(slice_to_json(build_slice(replay(path).view, agent_id=path.name)))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(doc)]
        assert errors == [], path.name
        assert doc["edges"] or path.name == "single-packets.pcap", path.name
