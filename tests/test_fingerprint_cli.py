"""``netweave fingerprint`` end to end: JSON lines valid against the schema, table output,
the FoxIO switch, JA4TS retransmission gaps, and damaged input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import jsonschema

from fingerprint_fixtures import REPO, pcap

SCHEMA = json.loads((REPO / "schemas" / "fingerprint-record.schema.json").read_text())


def netweave(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from netweave.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "fingerprint", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_jsonl_records_follow_the_schema() -> None:
    result = netweave(str(pcap("latest.pcapng")))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in records:
        jsonschema.validate(record, SCHEMA)
    kinds = {r["kind"] for r in records}
    assert kinds == {"syn", "synack", "client_hello", "server_hello"}
    first = records[0]
    assert first["frame"] == 7 and first["ja4t"] == "64240_2-1-3-1-1-4_1460_8"
    assert first["p0f"]["label"] == "Windows NT kernel"
    assert [r["frame"] for r in records] == sorted(r["frame"] for r in records)


def test_table_and_no_foxio() -> None:
    table = netweave(str(pcap("tls-alpn-h2.pcap")), "--format", "table")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["frame", "kind", "source"]
    assert "t12d4605h2_85626a9a5f7f_aaf95bb78ec9" in table.stdout
    assert "t1204h2_cca9_1428ce7b4018" in table.stdout
    off = netweave(str(pcap("tls-alpn-h2.pcap")), "--no-foxio")
    records = [json.loads(line) for line in off.stdout.splitlines()]
    assert not any(k in r for r in records for k in ("ja4t", "ja4ts", "ja4s"))
    assert any("ja4" in r for r in records)


def frame(src: int, dst: int, sport: int, dport: int, flags: int) -> bytes:
    options = b"\x02\x04\x05\xb4\x01\x03\x03\x07"
    tcp = (
        struct.pack(
            "!HHIIBBHHH", sport, dport, 100, 1 if flags & 0x10 else 0, 0x70, flags, 65160, 0, 0
        )
        + options
    )
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def test_retransmitted_synack_carries_whole_second_gaps(tmp_path: Path) -> None:
    c, s = 0x0A000001, 0x0A000002
    packets = [
        (0.0, frame(c, s, 5555, 80, 0x02)),
        (0.1, frame(s, c, 80, 5555, 0x12)),
        (1.3, frame(s, c, 80, 5555, 0x12)),
        (3.8, frame(s, c, 80, 5555, 0x12)),
        (8.2, frame(s, c, 80, 5555, 0x12)),
    ]
    body = b"".join(
        struct.pack("<IIII", 1000 + int(t), round(t % 1 * 1e6), len(f), len(f)) + f
        for t, f in packets
    )
    path = tmp_path / "retrans.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + body)
    result = netweave(str(path), "--no-foxio")
    assert all("ja4ts" not in json.loads(x) for x in result.stdout.splitlines())
    result = netweave(str(path))
    ja4ts = [json.loads(x).get("ja4ts") for x in result.stdout.splitlines()][1:]
    base = "65160_2-1-3_1460_7"
    assert ja4ts == [base, f"{base}_1", f"{base}_1-3", f"{base}_1-3-4"]


def test_damaged_file_prints_what_came_before_and_names_the_offset(tmp_path: Path) -> None:
    data = pcap("latest.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:20000])
    result = netweave(str(cut))
    assert result.returncode == 2
    assert f"{cut}: byte offset" in result.stderr and "truncated" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["frame"] == 7
    missing = netweave(str(tmp_path / "nope.pcap"))
    assert missing.returncode == 2 and "nope.pcap: byte offset 0" in missing.stderr
    bad_db = netweave(str(pcap("latest.pcapng")), "--p0f-db", str(tmp_path / "none.fp"))
    assert bad_db.returncode == 2 and "none.fp" in bad_db.stderr
