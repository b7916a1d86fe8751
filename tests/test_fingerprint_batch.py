"""The batch paths give the records the record-by-record path gives.

``fingerprint_capture`` (what ``netweave fingerprint`` runs: compiled flow bookkeeping over
the capture's columns), ``Fingerprinter.run`` (batches, compiled hello scan) and
``Fingerprinter.feed`` event by event must agree on every fixture capture and on random
handshake traffic; the compiled hello scan must find exactly the hellos the Python parser
finds, and hellos with the same key must have the same JA4/JA4S.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.pcapfile import Capture, read_capture
from netweave.fingerprint import columnar
from netweave.fingerprint.columnar import fingerprint_capture
from netweave.fingerprint.foxio import ja4s
from netweave.fingerprint.hello_scan import scan_hellos
from netweave.fingerprint.ja4 import ja4
from netweave.fingerprint.p0f import AckRule
from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB, load_p0f_database, parse_p0f_database
from netweave.fingerprint.records import FingerprintRecord
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions
from netweave.fingerprint.tls_hello import ClientHello, stream_hellos

from fingerprint_fixtures import all_pcaps, pcap

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A database with a userland-tool ("!") SYN-ACK signature: a SYN-ACK matching it ends its
# p0f flow, which only the record-by-record observer follows (the batch path hands over).
TOOL_DB = parse_p0f_database(
    "classes = win,unix,other\n[tcp:request]\nlabel = s:unix:Linux:3.11 and newer\n"
    "sig = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n"
    "label = s:!:NMap:SYN scan\nsig = *:64-:0:1460:1024,0:mss::0\n"
    "[tcp:response]\nlabel = s:unix:Linux:3.x\n"
    "sig = *:64:0:*:mss*10,*:mss,nop,nop,sok,nop,ws:df:0\n"
    "label = s:!:Tool:odd responder\nsig = 4:64:0:*:8192,0:mss:df,id+:0\n"
)


def _options() -> list[FingerprintOptions]:
    db = load_p0f_database(DEFAULT_P0F_DB) if DEFAULT_P0F_DB.exists() else TOOL_DB
    return [
        FingerprintOptions(p0f_db=db),
        FingerprintOptions(p0f_db=db, foxio=False, ack_rule=AckRule.CORRECTED),
        FingerprintOptions(p0f_db=TOOL_DB),
        FingerprintOptions(),
    ]


def _by_feed(capture: Capture, options: FingerprintOptions) -> list[FingerprintRecord]:
    fingerprinter = Fingerprinter(options)
    out: list[FingerprintRecord] = []
    for event in capture.events():
        out.extend(sorted(fingerprinter.feed(event), key=lambda r: r.frame))
    return out


def _agree(capture: Capture) -> None:
    for options in _options():
        expected = _by_feed(capture, options)
        assert list(Fingerprinter(options).run(capture.events())) == expected
        assert fingerprint_capture(capture, options) == expected


@pytest.mark.parametrize("name", all_pcaps())
def test_batch_paths_equal_record_by_record_on_every_fixture(name: str) -> None:
    capture = read_capture(pcap(name))
    _agree(capture)
    if capture.handshakes:  # and the capture path really ran on its own
        assert columnar._columnar(capture, _options()[0]) is not None


def test_the_benchmark_style_capture_takes_the_columnar_path(tmp_path: Path) -> None:
    path = tmp_path / "flows.pcap"
    packets = [_tcp4(1 + i % 2, 40000 + i, 443, 0x02, seq=i, window=29200, options=MSS_TS)
               for i in range(30)]  # fmt: skip
    packets += [_tcp4(1 + i % 2, 40000 + i, 443, 0x12, seq=7, window=28960, options=MSS_TS,
                      reply=True) for i in range(30)]  # fmt: skip
    _write(path, packets)
    capture = read_capture(path)
    options = _options()[0]
    found = columnar._columnar(capture, options)
    assert found is not None
    assert found == _by_feed(capture, options)
    assert sum(1 for r in found if r.kind == "syn") == 30


def test_a_tool_syn_ack_hands_the_capture_to_the_observer(tmp_path: Path) -> None:
    path = tmp_path / "tool.pcap"
    mss = bytes.fromhex("020405b4")
    _write(path, [
        _tcp4(1, 40000, 443, 0x02, seq=1, window=29200, options=MSS_TS),
        _tcp4(1, 40000, 443, 0x12, seq=9, ack=2, window=8192, options=mss, reply=True),
        _tcp4(1, 40000, 443, 0x02, seq=1, window=29200, options=MSS_TS),  # same SYN again
        _tcp4(1, 40000, 443, 0x12, seq=9, ack=2, window=8192, options=mss, reply=True),
    ])  # fmt: skip
    capture = read_capture(path)
    options = FingerprintOptions(p0f_db=TOOL_DB)
    assert columnar._columnar(capture, options) is None
    records = fingerprint_capture(capture, options)
    assert records == _by_feed(capture, options)
    # The tool SYN-ACK ended p0f's flow, so the repeated SYN is a new flow for p0f.
    labels = [r.p0f.label if r.p0f else None for r in records]
    assert labels[1] == "Tool odd responder"
    assert labels[2] is not None


# ---- random handshake traffic -----------------------------------------------------------
MSS_TS = bytes.fromhex("020405b40402080a0000000100000000010303 07".replace(" ", ""))
SENDSYN = bytes.fromhex("0204053301010402")  # MSS 1331: with window 1337, p0f-sendsyn
OPTIONS = (b"", bytes.fromhex("020405b4"), MSS_TS, SENDSYN, bytes.fromhex("0204"),
           bytes.fromhex("020405b4010303070101080a00000000"))  # fmt: skip

packet_spec = st.tuples(
    st.integers(0, 3),  # flow
    st.booleans(),  # sent by the server
    st.sampled_from((0x02, 0x12, 0x42, 0x52, 0x06, 0x03, 0x12, 0x02, 0xC2)),
    st.sampled_from((0, 1, 7)),  # seq
    st.sampled_from((0, 5, 1 << 24)),  # ack
    st.sampled_from((1337, 65535, 29200, 8192, 1024)),
    st.sampled_from(OPTIONS),
    st.sampled_from((64, 128, 255, 50)),
    st.integers(0, 2500),  # milliseconds since the previous packet
    st.booleans(),  # IPv6
)


@SETTINGS
@given(st.lists(packet_spec, min_size=1, max_size=40))
def test_batch_paths_equal_record_by_record_on_random_handshakes(
    specs: list[tuple[int, bool, int, int, int, int, bytes, int, int, bool]],
) -> None:
    frames = []
    stamp = 0
    for flow, reply, flags, seq, ack, window, options, ttl, gap, v6 in specs:
        stamp += gap * 1_000_000
        maker = _tcp6 if v6 else _tcp4
        frames.append(
            (
                stamp,
                maker(
                    1 + flow % 2,
                    40000 + flow,
                    443,
                    flags,
                    seq=seq,
                    ack=ack,
                    window=window,
                    options=options,
                    ttl=ttl,
                    reply=reply,
                ),
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pcap"
        _write(path, frames)
        capture = read_capture(path)
    _agree(capture)


# ---- TLS hellos -------------------------------------------------------------------------
def _client_hello(extensions: bytes, version: int = 0x0303) -> bytes:
    body = (struct.pack("!H", version) + b"\x11" * 32 + b"\x00" + b"\x00\x04\x13\x01\xc0\x2b"
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)  # fmt: skip
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(message)) + message


def _server_hello(extensions: bytes) -> bytes:
    body = (b"\x03\x03" + b"\x22" * 32 + b"\x00" + b"\x13\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)  # fmt: skip
    message = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(message)) + message


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


CLIENT_EXTENSIONS = (
    _ext(0, b"\x00\x0e\x00\x00\x0bexample.org")
    + _ext(16, b"\x00\x0c\x02h2\x08http/1.1")
    + _ext(43, b"\x04\x03\x04\x03\x03")
    + _ext(13, b"\x00\x04\x04\x03\x08\x04")
    + _ext(0x0A0A, b"")
)
SERVER_EXTENSIONS = _ext(43, b"\x03\x04") + _ext(16, b"\x00\x03\x02h2")
HELLOS = (
    _client_hello(CLIENT_EXTENSIONS),
    _server_hello(SERVER_EXTENSIONS),
    b"CONNECT example.org:443 HTTP/1.1\r\n\r\n" + _client_hello(CLIENT_EXTENSIONS),
    _server_hello(b"") + _server_hello(SERVER_EXTENSIONS),
)

mutation = st.tuples(st.sampled_from(("flip", "cut", "insert", "split")),
                     st.integers(0, 400), st.integers(0, 255))  # fmt: skip


def _mutate(data: bytes, changes: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in changes:
        at = where % max(len(out), 1)
        if kind == "flip" and out:
            out[at] = value
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value])
        elif kind == "split" and out[:1] == b"\x16" and len(out) > 9:
            # the handshake message over two records
            length = int.from_bytes(out[3:5], "big")
            cut = 5 + min(value % 60 + 1, length)
            first, rest = out[5:cut], out[cut : 5 + length]
            head = b"\x16\x03\x01"
            out[: 5 + length] = (head + struct.pack("!H", len(first)) + first
                                 + head + struct.pack("!H", len(rest)) + rest)  # fmt: skip
    return bytes(out)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(HELLOS), st.lists(mutation, max_size=3)),
                min_size=1, max_size=8))  # fmt: skip
def test_compiled_hello_scan_finds_what_the_parser_finds(
    payloads: list[tuple[bytes, list[tuple[str, int, int]]]],
) -> None:
    datas = [_mutate(data, changes) for data, changes in payloads]
    scan = scan_hellos(datas)
    found = list(zip(scan.payload.tolist(), scan.end.tolist(), scan.kind.tolist(), strict=True))
    expected = [
        (k, end, 1 if isinstance(hello, ClientHello) else 2)
        for k, data in enumerate(datas)
        for end, hello in stream_hellos(data)
    ]
    assert found == expected
    # A key stands for one JA4 / JA4S.
    by_key: dict[bytes, str] = {}
    hellos = [hello for data in datas for _end, hello in stream_hellos(data)]
    for j, hello in enumerate(hellos):
        key = scan.keys[scan.key_start[j] : scan.key_end[j]]
        value = ja4(hello) if isinstance(hello, ClientHello) else ja4s(hello)
        assert by_key.setdefault(key, value) == value


# ---- a tiny pcap writer -----------------------------------------------------------------
CLIENT4 = (0x0A000001, 0x0A000002)
SERVER4 = 0x0A010001


def _tcp_header(sport: int, dport: int, flags: int, seq: int, ack: int, window: int,
                options: bytes) -> bytes:  # fmt: skip
    padded = options + b"\x00" * (-len(options) % 4)
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (20 + len(padded)) // 4 << 4,
                       flags & 0xFF, window, 0, 0) + padded  # fmt: skip


def _tcp4(client: int, cport: int, sport: int, flags: int, *, seq: int = 1, ack: int = 0,
          window: int = 65535, options: bytes = b"", ttl: int = 64,
          reply: bool = False) -> bytes:  # fmt: skip
    a, b = CLIENT4[client - 1], SERVER4
    ports = (cport, sport)
    if reply:
        a, b, ports = b, a, (sport, cport)
    tcp = _tcp_header(*ports, flags, seq, ack, window, options)
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(tcp), 1, 0x4000, ttl, 6, 0, a, b)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def _tcp6(client: int, cport: int, sport: int, flags: int, *, seq: int = 1, ack: int = 0,
          window: int = 65535, options: bytes = b"", ttl: int = 64,
          reply: bool = False) -> bytes:  # fmt: skip
    a = bytes.fromhex("fd000000000000000000000000000000")[:-1] + bytes([client])
    b = bytes.fromhex("fd0000000000000000000000000000ff")
    ports = (cport, sport)
    if reply:
        a, b, ports = b, a, (sport, cport)
    tcp = _tcp_header(*ports, flags, seq, ack, window, options)
    ip = struct.pack("!IHBB", 0x60000000, len(tcp), 6, ttl) + a + b
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + tcp


def _write(path: Path, frames: list[tuple[int, bytes]] | list[bytes]) -> None:
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for k, item in enumerate(frames):
            stamp, frame = item if isinstance(item, tuple) else (k * 1_000_000, item)
            sec, nsec = divmod(1_700_000_000_000_000_000 + stamp, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, nsec, len(frame), len(frame)) + frame)
