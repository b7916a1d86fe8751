"""Hypothesis fuzzing: TCP options, TLS hellos and capture files never raise unexpected errors;
malformed input yields a ``bad`` quirk or no fingerprint."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.containers import CaptureFileError
from netweave.capture.events import TcpHandshake
from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.foxio import Ja4tsTracker, ja4s, ja4t, wireshark_options
from netweave.fingerprint.ja4 import ja4
from netweave.fingerprint.p0f import p0f_packet, parse_tcp_options
from netweave.fingerprint.p0f_db import QUIRK_OPT_BAD, parse_p0f_database
from netweave.fingerprint.p0f_observer import P0fObserver
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions
from netweave.fingerprint.tls_hello import ClientHello, ServerHello, parse_hello, stream_hellos

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DB = parse_p0f_database(
    "classes = win,unix,other\n[tcp:request]\nlabel = s:unix:Linux:3.11 and newer\n"
    "sig = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n"
    "label = g:win:Windows:NT kernel\nsig = *:128:0:*:%8192,*:mss,nop,ws,nop,nop,sok:df,id+:0\n"
    "[tcp:response]\nlabel = s:unix:Linux:3.x\n"
    "sig = *:64:0:*:mss*10,*:mss,nop,nop,sok,nop,ws:df:0\n"
)


def handshake(options: bytes, flags: int, ack: int, version: int) -> TcpHandshake:
    return TcpHandshake(
        timestamp_ns=1,
        frame=1,
        ip_version=version,
        src="10.0.0.1",
        dst="10.0.0.2",
        src_port=1234,
        dst_port=80,
        ttl=64,
        tos=2,
        ip_flags=2,
        ip_id=7,
        flow_label=5,
        ip_options_length=0,
        ip_total_length=40 + len(options),
        seq=9,
        ack=ack,
        window=29200,
        tcp_flags=flags,
        urgent_pointer=0,
        tcp_options=options,
        payload_length=0,
    )


@SETTINGS
@given(st.binary(max_size=40), st.sampled_from([0x02, 0x12, 0xC2, 0x03]), st.integers(0, 2**32 - 1))
def test_tcp_options_never_crash(options: bytes, flags: int, ack: int) -> None:
    parsed = parse_tcp_options(options, syn_only=True)
    assert len(parsed.layout) <= 24
    view = wireshark_options(options)
    assert all(0 <= k <= 255 for k in view.kinds)
    h = handshake(options, flags, ack, 4)
    pk = p0f_packet(h)
    observer = P0fObserver(DB)
    result = observer.observe(h)
    if pk is not None and flags in (0x02, 0xC2):
        assert result is not None and result.raw_sig.startswith("4:")
    value = ja4t(h)
    assert value is None or value.startswith("29200_")
    synack = Ja4tsTracker().observe(handshake(options, 0x12, ack, 6))
    assert synack is not None and synack.startswith("29200_")


@SETTINGS
@given(st.binary(min_size=1, max_size=40))
def test_impossible_option_lengths_set_the_bad_quirk(tail: bytes) -> None:
    # a known kind whose length byte runs past the end of the options
    options = b"\x02\x04\x05\xb4" + b"\x1e" + bytes([len(tail) + 10]) + tail
    assert parse_tcp_options(options[:40], syn_only=True).quirks & QUIRK_OPT_BAD


def client_hello_bytes() -> bytes:
    ciphers = bytes.fromhex("1301130213030a0ac02b")
    name = b"example.org"
    sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    alpn = struct.pack("!HHH", 16, 5, 3) + b"\x02h2"
    versions = struct.pack("!HHB", 43, 5, 4) + bytes.fromhex("03040303")
    exts = sni + alpn + versions + struct.pack("!HHH", 13, 4, 2) + bytes.fromhex("0403")
    body = b"\x03\x03" + bytes(32) + b"\x00" + struct.pack("!H", len(ciphers)) + ciphers
    body += b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_client_hello_reference_value() -> None:
    hello = parse_hello(client_hello_bytes())
    assert isinstance(hello, ClientHello)
    assert ja4(hello).startswith("t13d0404h2_")  # GREASE cipher left out, SNI present


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6), st.integers(0, 420)
)
def test_mutated_hellos_never_crash(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(client_hello_bytes())
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    for _end, hello in stream_hellos(bytes(data[:cut] if cut else data)):
        if isinstance(hello, ClientHello):
            assert ja4(hello)[0] == "t"
        else:
            assert isinstance(hello, ServerHello)
            assert ja4s(hello)[0] == "t"


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_are_no_hello(data: bytes) -> None:
    for _end, hello in stream_hellos(data):
        assert isinstance(hello, ClientHello | ServerHello)


def small_pcap() -> bytes:
    frame = (
        b"\x02" * 6
        + b"\x04" * 6
        + b"\x08\x00"
        + struct.pack("!BBHHHBBHII", 0x45, 0, 44, 1, 0x4000, 64, 6, 0, 0x0A000001, 0x0A000002)
        + struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x60, 0x02, 29200, 0, 0)
        + b"\x02\x04\x05\xb4"
    )
    records = b"".join(struct.pack("<IIII", 1, i, len(frame), len(frame)) + frame for i in range(4))
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + records


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=8),
    st.integers(0, 300),
    st.sampled_from([1, 0, 101, 113, 276, 228, 229, 147]),
)
def test_damaged_captures_never_crash(flips: list[tuple[int, int]], cut: int, link: int) -> None:
    data = bytearray(small_pcap())
    struct.pack_into("<I", data, 20, link)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.pcap"
        path.write_bytes(bytes(data[:cut] if cut else data))
        try:
            capture = read_capture(path)
        except CaptureFileError as exc:
            assert str(path) in str(exc)
            return
        assert capture.packets <= 4
        if capture.damage is not None:
            assert f"byte offset {capture.damage.offset}" in str(capture.damage)
        options = FingerprintOptions(p0f_db=DB)
        for record in Fingerprinter(options).run(capture.events()):
            assert record.frame >= 1
