"""The edge table ``netweave replay FILE`` prints: aligned columns, one line per edge.

Checked on hand-made edges against the exact text, on random edges for alignment and
round trip, and end to end: the table printed for a capture names the handshakes tshark
finds in it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.graph.cli import edge_table
from netweave.graph.model import Edge

TITLES = ("client", "server", "port", "proto", "flows", "bytes c->s", "bytes s->c")


def edge(
    client: str,
    server: str,
    port: int,
    *,
    protocol: str = "tcp",
    flows: int = 1,
    up: int = 0,
    down: int = 0,
    inferred: bool = False,
) -> Edge:
    """An edge with the fields the table shows; the rest zero."""
    return Edge(client, server, port, protocol, flows, 1, up, 1, down, 0, 0, inferred)


def test_table_text_of_known_edges() -> None:
    edges = [
        edge("10.0.0.1", "10.0.0.2", 443, flows=3, up=557, down=123456),
        edge("2001:db8::1", "2001:db8::53", 53, protocol="udp", up=40, down=1200, inferred=True),
        edge("192.168.133.129", "34.117.237.239", 8080, flows=12, up=9, down=0),
    ]
    assert edge_table(edges) == (
        "client           server          port  proto  flows  bytes c->s  bytes s->c\n"
        "10.0.0.1         10.0.0.2        443   tcp    3      557         123456\n"
        "2001:db8::1      2001:db8::53    53    udp    1      40          1200        inferred\n"
        "192.168.133.129  34.117.237.239  8080  tcp    12     9           0\n"
    )


def test_a_table_without_inferred_edges_ends_each_line_at_its_last_number() -> None:
    text = edge_table([edge("a", "b", 1, up=12345678901234, down=7)])
    assert text == (
        "client  server  port  proto  flows  bytes c->s      bytes s->c\n"
        "a       b       1     tcp    1      12345678901234  7\n"
    )


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.sampled_from(["*", "?"])
)
edges_strategy = st.lists(
    st.builds(
        edge,
        addresses,
        addresses,
        st.integers(0, 65535),
        protocol=st.sampled_from(["tcp", "udp", "sctp"]),
        flows=st.integers(1, 10**6),
        up=st.integers(0, 2**63),
        down=st.integers(0, 2**63),
        inferred=st.booleans(),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(edges_strategy)
def test_every_line_reads_back_its_edge_in_the_headers_columns(edges: list[Edge]) -> None:
    lines = edge_table(edges).split("\n")
    assert lines[-1] == ""  # ends with a newline
    header, rows = lines[0], lines[1:-1]
    assert header.split() == ["client", "server", "port", "proto", "flows", "bytes", "c->s",
                              "bytes", "s->c"]  # fmt: skip
    starts = [header.index(title) for title in TITLES]
    assert len(rows) == len(edges)
    for row, e in zip(rows, edges, strict=True):
        assert row == row.rstrip()
        cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        last, _, mark = cells[-1].partition("  ")
        assert [*cells[:-1], last] == [e.client, e.server, str(e.port), e.protocol, str(e.flows),
                                       str(e.bytes_to_server), str(e.bytes_to_client)]  # fmt: skip
        assert mark.strip() == ("inferred" if e.inferred else "")
        for start in starts[1:]:
            assert row[start - 2 : start] == "  "  # two spaces before every column


def write_handshakes_pcap(path: Path, flows: int) -> Path:
    """``flows`` TCP handshakes (SYN, SYN-ACK) and two data-only flows (no handshake)."""
    frames = []
    for i in range(flows + 2):
        client = bytes((10, 1, i // 250, i % 250 + 1))
        server = bytes((10, 9, 0, i % 7 + 1))
        sport, dport = 30000 + i, (80, 443, 5432)[i % 3]
        script = ((True, 0x002), (False, 0x012)) if i < flows else ((True, 0x018),)
        for to_server, flags in script:
            src, dst, sp, dp = (
                (client, server, sport, dport) if to_server else (server, client, dport, sport)
            )
            payload = b"" if flags != 0x018 else b"x" * 20
            tcp = struct.pack("!HHIIBBHHH", sp, dp, 1, 0, 5 << 4, flags, 64240, 0, 0)
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst
            )
            frames.append(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload)
    records = b"".join(
        struct.pack("<IIII", 1_700_000_000, i, len(f), len(f)) + f for i, f in enumerate(frames)
    )
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + records)
    return path


def tshark_handshakes(path: Path) -> set[tuple[str, str, str]]:
    """(client, server, port) of every SYN tshark reads in ``path``."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (scripts/bootstrap.sh --test installs it)")
    proc = subprocess.run(
        [tshark, "-r", str(path), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0", "-T", "fields",
         "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {tuple(line.split("\t")) for line in proc.stdout.splitlines()}  # type: ignore[misc]


def test_replay_prints_one_line_per_edge_naming_tsharks_handshakes(tmp_path: Path) -> None:
    pcap = write_handshakes_pcap(tmp_path / "handshakes.pcap", flows=600)
    proc = subprocess.run(
        [sys.executable, "-m", "netweave", "replay", "-q", "--no-labels", str(pcap)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1000:]
    summary, header, *rows = proc.stdout.splitlines()
    assert summary.startswith(f"{pcap}: 1202 packets") and "602 edges" in summary
    assert header.split()[:2] == ["client", "server"]
    seen = [row.split() for row in rows]
    handshakes = {(c, s, p) for c, s, p, *rest in seen if rest[-1] != "inferred"}
    assert handshakes == tshark_handshakes(pcap)
    assert len(handshakes) == 600
    assert sum(1 for cells in seen if cells[-1] == "inferred") == 2
