"""Conformance with the reference tools on the shared fixture captures.

* JA4T/JA4TS: every line of ``ja4t-ja4ts-reference.txt`` (FoxIO's Wireshark dissector)
  except those on RST frames and on TCP headers quoted inside ICMP errors.
* p0f: every ``mod=syn`` / ``mod=syn+ack`` line of p0f 3.09b's logs: endpoints, raw_sig,
  os label, dist and params.
* JA4S: every TCP ``ja4.ja4s`` of FoxIO's expected Wireshark output.
* JA4: FoxIO's reference implementation's expected values (rust/ja4 snapshots).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.p0f_db import load_p0f_database
from netweave.fingerprint.records import FingerprintRecord
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions

from fingerprint_fixtures import fixtures, pcap

P0F_DB = Path("/etc/p0f/p0f.fp")


def records(name: str, *, with_p0f: bool = False) -> list[FingerprintRecord]:
    db = load_p0f_database(P0F_DB) if with_p0f else None
    capture = read_capture(pcap(name))
    return list(Fingerprinter(FingerprintOptions(p0f_db=db)).run(capture.events()))


def excluded_frames(path: Path) -> set[int]:
    """Frames whose JA4TS reference lines the issue leaves out: RSTs and ICMP errors."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "tcp.flags.reset==1 || icmp || icmpv6",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {int(x) for x in out.split()}


def test_ja4t_ja4ts_equal_reference() -> None:
    reference = fixtures() / "ja4" / "ja4t-ja4ts-reference.txt"
    wanted: dict[str, dict[tuple[int, str], str]] = defaultdict(dict)
    for line in reference.read_text().splitlines():
        name, frame, pair = line.split()
        key, value = pair.split("=", 1)
        wanted[name][(int(frame), key)] = value
    equal = total = 0
    mismatches = []
    for name, lines in sorted(wanted.items()):
        skip = excluded_frames(pcap(name))
        got: dict[tuple[int, str], str] = {}
        for r in records(name):
            if r.ja4t:
                got[(r.frame, "ja4t")] = r.ja4t
            if r.ja4ts:
                got[(r.frame, "ja4ts")] = r.ja4ts
        for key, value in lines.items():
            if key[0] in skip:
                continue
            total += 1
            if got.get(key) == value:
                equal += 1
            else:
                mismatches.append((name, key, value, got.get(key)))
    print(f"JA4T/JA4TS: {equal} of {total} reference lines equal")
    assert total >= 38
    assert mismatches == []


P0F_LINE = re.compile(
    r"mod=(?P<mod>syn|syn\+ack)\|cli=(?P<cli>[^|]+)\|srv=(?P<srv>[^|]+)\|subj=\w+\|"
    r"(?:os|app)=(?P<os>[^|]*)\|dist=(?:<= )?(?P<dist>\d+)\|"
    r"params=(?P<params>[^|]*)\|raw_sig=(?P<sig>.*)$"
)


def _endpoint(address: str, port: int) -> str:
    if ":" in address:  # p0f prints IPv6 groups unabbreviated, without leading zeros
        import ipaddress

        groups = ipaddress.IPv6Address(address).exploded.split(":")
        address = ":".join(format(int(g, 16), "x") for g in groups)
    return f"{address}/{port}"


def test_p0f_equal_p0f_logs() -> None:
    if not P0F_DB.exists():
        pytest.skip("Debian's p0f package (/etc/p0f/p0f.fp) is not installed")
    equal = total = 0
    mismatches = []
    for log in sorted((fixtures() / "p0f").glob("*.log")):
        name = log.name.removesuffix(".log")
        ours = []
        for r in records(name, with_p0f=True):
            if r.p0f is None:
                continue
            client, server = (r.src, r.src_port), (r.dst, r.dst_port)
            if r.kind == "synack":
                client, server = server, client
            ours.append(
                (
                    "syn" if r.kind == "syn" else "syn+ack",
                    _endpoint(*client),
                    _endpoint(*server),
                    r.p0f.label,
                    str(r.p0f.dist),
                    r.p0f.params,
                    r.p0f.raw_sig,
                )
            )
        theirs = []
        for line in log.read_text().splitlines():
            m = P0F_LINE.search(line)
            if m:
                theirs.append(
                    tuple(m.group(k) for k in ("mod", "cli", "srv", "os", "dist", "params", "sig"))
                )
        for want in theirs:
            total += 1
            if want in ours:
                equal += 1
                ours.remove(want)
            else:
                mismatches.append((name, want))
    print(f"p0f: {equal} of {total} mod=syn/syn+ack lines equal")
    assert total >= 36
    assert mismatches == []


def test_ja4s_equal_expected_wireshark() -> None:
    equal = total = quic = 0
    mismatches = []
    for path in sorted((fixtures() / "ja4" / "expected-wireshark").glob("*.json")):
        name = path.name.removesuffix(".json")
        expected = json.loads(path.read_text())
        if not expected:
            continue
        got = {r.frame: r.ja4s for r in records(name) if r.ja4s}
        for entry in expected:
            layers = entry["_source"]["layers"]
            frame = int(layers["frame.number"][0])
            for value in layers.get("ja4.ja4s", []):
                if value.startswith("q"):
                    quic += 1  # QUIC Initial decryption is not implemented
                    continue
                total += 1
                if got.get(frame) == value:
                    equal += 1
                else:
                    mismatches.append((name, frame, value, got.get(frame)))
    print(f"JA4S: {equal} of {total} TCP values equal ({quic} QUIC values not covered)")
    assert total >= 70
    assert mismatches == []


# Expected JA4 values of FoxIO's reference implementation (github.com/FoxIO-LLC/ja4,
# rust/ja4/src/snapshots/ja4__insta@<capture>.snap), keyed by the client's source port.
FOXIO_JA4 = {
    "latest.pcapng": {
        52936: "t13d1516h2_8daaf6152771_e5627efa2ab1",
        52937: "t12d190800_d83cc789557e_7af1ed941c26",
        52938: "t13d1516h2_8daaf6152771_9b887d9acb53",
        52940: "t13d1516h2_8daaf6152771_e5627efa2ab1",
        52941: "t13d1516h2_8daaf6152771_e5627efa2ab1",
    },
    "badcurveball.pcap": {55318: "t13d1615h2_46e7e9700bed_45f260be83e2"},
    "https-connect.pcap": {54723: "t12i860500_e18388e7f3a3_a1e935682795"},
    "tls-alpn-h2.pcap": {64034: "t12d4605h2_85626a9a5f7f_aaf95bb78ec9"},
    "http2-with-cookies.pcapng": {58847: "t13d1516h2_8daaf6152771_e5627efa2ab1"},
    "tls-handshake.pcapng": {
        **{
            port: "t13d1516h2_8daaf6152771_e5627efa2ab1"
            for port in (
                50112,
                50113,
                50114,
                50115,
                50116,
                50126,
                50127,
                50128,
                50130,
                50131,
                50132,
                50133,
                50134,
                50135,
                50136,
                50137,
                50139,
                50141,
                50142,
                50143,
                50144,
                50145,
                50146,
                50147,
                50148,
                50149,
                50151,
                50155,
                50157,
                50158,
                50159,
                50160,
                50161,
                50162,
                50163,
                50164,
                50165,
                50166,
                50167,
                50168,
                50169,
                50170,
                50172,
                50174,
                50175,
            )
        },
        50122: "t13d1516h1_8daaf6152771_e5627efa2ab1",
        50123: "t13d151400_8daaf6152771_de4a06bb82e3",
        50140: "t13d1516h1_8daaf6152771_e5627efa2ab1",
        50152: "t13d1516h1_8daaf6152771_e5627efa2ab1",
        50153: "t13d1517h1_8daaf6152771_6cdcb247c39b",
    },
}


def test_ja4_equal_foxio_reference() -> None:
    equal = total = 0
    mismatches = []
    for name, by_port in FOXIO_JA4.items():
        first: dict[int, str] = {}
        for r in records(name):
            if r.kind == "client_hello" and r.ja4 is not None:
                first.setdefault(r.src_port, r.ja4)  # the reference keeps a stream's first
        for port, value in by_port.items():
            total += 1
            if first.get(port) == value:
                equal += 1
            else:
                mismatches.append((name, port, value, first.get(port)))
    print(f"JA4: {equal} of {total} reference values equal")
    assert mismatches == []


def test_foxio_switch_leaves_only_bsd_and_p0f_fingerprints() -> None:
    capture = read_capture(pcap("latest.pcapng"))
    off = list(Fingerprinter(FingerprintOptions(foxio=False)).run(capture.events()))
    assert off and all(r.ja4t is None and r.ja4ts is None and r.ja4s is None for r in off)
    assert any(r.ja4 for r in off)
