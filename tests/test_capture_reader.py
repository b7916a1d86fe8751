"""Capture-file backend against real tshark: frame numbers, SYNs, header fields, link types,
tunnels, container variants, and damaged files."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import dpkt
import pytest

from netweave.capture.containers import CaptureFileError
from netweave.capture.events import TcpHandshake
from netweave.capture.pcapfile import read_capture

from fingerprint_fixtures import all_pcaps, pcap

TSHARK_FIELDS = (
    "frame.number",
    "tcp.flags",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.window_size_value",
    "ip.ttl",
    "ipv6.hlim",
    "icmp.type",
    "icmpv6.type",
)


def tshark_syns(path: Path) -> tuple[int, list[tuple[int, int, int, int, int, int, int]]]:
    """Packet count and (frame, flags, sport, dport, seq, window, ttl) of every SYN-bit segment.

    Innermost layers (``occurrence=l``) so tunnelled packets show their inner headers;
    TCP headers quoted inside ICMP errors are left out.
    """
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=l"]
    for name in TSHARK_FIELDS:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    syns = []
    for line in lines:
        frame, flags, sport, dport, seq, win, ttl4, hlim, icmp, icmp6 = line.split("\t")
        if not flags or icmp or icmp6 or not int(flags, 16) & 0x02:
            continue
        # Outer headers here are IPv4 only: with both present, the IPv6 one is innermost.
        ttl = int(hlim or ttl4)
        syns.append((int(frame), int(flags, 16), int(sport), int(dport), int(seq), int(win), ttl))
    return len(lines), syns


def ours(handshakes: tuple[TcpHandshake, ...]) -> list[tuple[int, int, int, int, int, int, int]]:
    return [
        (h.frame, h.tcp_flags, h.src_port, h.dst_port, h.seq, h.window, h.ttl) for h in handshakes
    ]


@pytest.mark.parametrize("name", all_pcaps() or ["latest.pcapng"])
def test_frames_and_handshakes_equal_tshark(name: str) -> None:
    path = pcap(name)
    capture = read_capture(path)
    count, syns = tshark_syns(path)
    assert capture.damage is None
    assert capture.packets == count
    assert ours(capture.handshakes) == syns


def test_hello_frames_equal_tshark() -> None:
    """Every TLS ClientHello/ServerHello over TCP is found on the frame tshark reports it on."""
    from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions

    checked = 0
    for name in (
        "latest.pcapng",
        "tls-handshake.pcapng",
        "https-connect.pcap",
        "badcurveball.pcap",
    ):
        path = pcap(name)
        out = subprocess.run(
            [
                "tshark",
                "-r",
                str(path),
                "-Y",
                "tcp && (tls.handshake.type==1 || tls.handshake.type==2)",
                "-T",
                "fields",
                "-e",
                "frame.number",
                "-e",
                "tls.handshake.type",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        expected = set()
        for line in out.splitlines():
            frame, types = line.split("\t")
            for t in types.split(","):
                if t in ("1", "2"):
                    expected.add((int(frame), "client_hello" if t == "1" else "server_hello"))
        records = Fingerprinter(FingerprintOptions()).run(read_capture(path).events())
        got = {(r.frame, r.kind) for r in records if r.kind.endswith("hello")}
        assert got == expected, name
        checked += len(expected)
    assert checked > 100


# --- crafted captures: every link type and tunnel, checked against tshark ------------------


def ethernet_frames(name: str) -> list[tuple[int, bytes]]:
    """(timestamp in µs, Ethernet frame) of a fixture, read with dpkt (an independent reader)."""
    with pcap(name).open("rb") as handle:
        reader = dpkt.pcapng.Reader(handle) if name.endswith("pcapng") else dpkt.pcap.Reader(handle)
        return [(round(ts * 1_000_000), bytes(buf)) for ts, buf in reader]


def write_pcap(
    path: Path,
    linktype: int,
    frames: list[tuple[int, bytes]],
    *,
    endian: str = "<",
    nsec: bool = False,
) -> Path:
    """Write a classic pcap (either byte order, micro- or nanosecond timestamps; ts in µs)."""
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, frame in frames:
        sec, usec = divmod(ts, 1_000_000)
        frac = usec * 1000 if nsec else usec
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def ipv4_header(payload_len: int, proto: int, src: bytes, dst: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 7, 0, 64, proto, 0, src, dst)


def udp_header(sport: int, dport: int, payload_len: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)


ETH_OUTER = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb"
OUTER_SRC, OUTER_DST = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])


def wrap(kind: str, frame: bytes) -> tuple[int, bytes]:
    """Re-encapsulate an Ethernet frame carrying IPv4/IPv6; returns (linktype, frame)."""
    ether = frame[12:14]
    ip = frame[14:]
    family = 2 if ether == b"\x08\x00" else 24  # BSD AF_INET6, as tshark reads DLT_NULL
    if kind == "raw":
        return 101, ip
    if kind == "null-le":
        return 0, struct.pack("<I", family) + ip
    if kind == "loop":
        return 108, struct.pack(">I", 2 if family == 2 else 24) + ip
    if kind == "sll":
        return 113, struct.pack("!HHH8s", 0, 1, 6, b"\x02" * 6 + b"\0\0") + ether + ip
    if kind == "sll2":
        return 276, ether + b"\0\0" + struct.pack("!IHBB8s", 1, 1, 0, 6, b"\x02" * 6 + b"\0\0") + ip
    if kind == "vlan":
        return 1, frame[:12] + b"\x81\x00\x00\x64" + frame[12:]
    if kind == "qinq":
        return 1, frame[:12] + b"\x88\xa8\x00\x0a\x81\x00\x00\x64" + frame[12:]
    if kind == "gre":
        gre = struct.pack("!HH", 0x2000, int.from_bytes(ether, "big")) + b"\0\0\0\x2a"
        body = gre + ip
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(body), 47, OUTER_SRC, OUTER_DST) + body
    if kind == "erspan1":
        body = struct.pack("!HH", 0x0000, 0x88BE) + frame  # no sequence number, no header
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(body), 47, OUTER_SRC, OUTER_DST) + body
    if kind == "erspan2":
        gre = struct.pack("!HHI", 0x1000, 0x88BE, 1)
        erspan = struct.pack("!HHI", 0x1000 | 100, 0x0001, 0)  # version 1 = type II
        body = gre + erspan + frame
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(body), 47, OUTER_SRC, OUTER_DST) + body
    if kind == "erspan3":
        gre = struct.pack("!HHI", 0x1000, 0x22EB, 1)
        erspan = b"\x20" + bytes(11)  # version 2 = type III, no optional subheader
        body = gre + erspan + frame
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(body), 47, OUTER_SRC, OUTER_DST) + body
    if kind == "vxlan":
        body = b"\x08\0\0\0\0\0\x2a\0" + frame
        udp = udp_header(51000, 4789, len(body)) + body
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(udp), 17, OUTER_SRC, OUTER_DST) + udp
    if kind == "geneve":
        option = struct.pack("!HBB", 0x0101, 0x01, 1) + b"\0\0\0\0"
        body = struct.pack("!BBH", len(option) // 4, 0, 0x6558) + b"\0\0\x2a\0" + option + frame
        udp = udp_header(51000, 6081, len(body)) + body
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(udp), 17, OUTER_SRC, OUTER_DST) + udp
    if kind == "ipip":
        proto = 4 if family == 2 else 41
        return 1, ETH_OUTER + b"\x08\x00" + ipv4_header(len(ip), proto, OUTER_SRC, OUTER_DST) + ip
    raise AssertionError(kind)


ENCAPSULATIONS = (
    "raw",
    "null-le",
    "loop",
    "sll",
    "sll2",
    "vlan",
    "qinq",
    "gre",
    "erspan1",
    "erspan2",
    "erspan3",
    "vxlan",
    "geneve",
    "ipip",
)


@pytest.mark.parametrize("kind", ENCAPSULATIONS)
@pytest.mark.parametrize("source", ["latest.pcapng", "v6.pcap"])
def test_link_types_and_tunnels_equal_tshark(kind: str, source: str, tmp_path: Path) -> None:
    frames = ethernet_frames(source)
    wrapped = [wrap(kind, frame) for _ts, frame in frames]
    linktype = wrapped[0][0]
    path = write_pcap(
        tmp_path / f"{kind}.pcap",
        linktype,
        [(ts, w) for (ts, _f), (_l, w) in zip(frames, wrapped, strict=True)],
    )
    capture = read_capture(path)
    count, syns = tshark_syns(path)
    assert capture.packets == count == len(frames)
    assert syns, "tshark must see the SYNs of the crafted capture"
    assert ours(capture.handshakes) == syns
    original = read_capture(pcap(source))
    assert [h.src for h in capture.handshakes] == [h.src for h in original.handshakes]
    assert [h.tcp_options for h in capture.handshakes] == [
        h.tcp_options for h in original.handshakes
    ]


@pytest.mark.parametrize("variant", ["big-endian", "nanosecond", "pcapng-from-pcap"])
def test_container_variants_give_the_same_events(variant: str, tmp_path: Path) -> None:
    frames = ethernet_frames("latest.pcapng")
    reference = read_capture(write_pcap(tmp_path / "ref.pcap", 1, frames))
    if variant == "big-endian":
        path = write_pcap(tmp_path / "be.pcap", 1, frames, endian=">")
    elif variant == "nanosecond":
        path = write_pcap(tmp_path / "ns.pcap", 1, frames, nsec=True)
    else:
        path = tmp_path / "conv.pcapng"
        subprocess.run(
            ["editcap", "-F", "pcapng", str(tmp_path / "ref.pcap"), str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    capture = read_capture(path)
    assert capture.handshakes == reference.handshakes
    assert capture.payloads == reference.payloads
    assert capture.counters == reference.counters


def write_pcapng(path: Path, frames: list[tuple[int, bytes]], *, endian: str) -> Path:
    """A pcapng file in either byte order: two sections, nanosecond timestamps in the 2nd."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return (
            struct.pack(endian + "II", btype, len(body) + 12)
            + body
            + struct.pack(endian + "I", len(body) + 12)
        )

    def section(part: list[tuple[int, bytes]], resol: int) -> bytes:
        shb = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        option = struct.pack(endian + "HH", 9, 1) + bytes([resol]) + b"\0\0\0"
        idb = block(1, struct.pack(endian + "HHI", 1, 0, 65535) + option + b"\0" * 4)
        scale = 10**resol // 1_000_000
        epbs = b"".join(
            block(6, struct.pack(endian + "IIIII", 0, (ts * scale) >> 32,
                                 (ts * scale) & 0xFFFFFFFF, len(f), len(f)) + f)
            for ts, f in part
        )  # fmt: skip
        return shb + idb + epbs

    half = len(frames) // 2
    path.write_bytes(section(frames[:half], 6) + section(frames[half:], 9))
    return path


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_sections_and_byte_orders(endian: str, tmp_path: Path) -> None:
    frames = ethernet_frames("latest.pcapng")
    reference = read_capture(write_pcap(tmp_path / "ref.pcap", 1, frames))
    path = write_pcapng(tmp_path / "two.pcapng", frames, endian=endian)
    count, syns = tshark_syns(path)
    capture = read_capture(path)
    assert capture.damage is None and capture.packets == count == len(frames)
    assert ours(capture.handshakes) == syns
    assert capture.handshakes == reference.handshakes


def test_timestamps_equal_tshark() -> None:
    """Microsecond timestamps of every SYN equal what tshark shows."""
    path = pcap("latest.pcapng")
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-Y",
            "tcp.flags.syn==1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    stamps = [round(float(x) * 1e6) for x in out.stdout.split()]
    assert [h.timestamp_ns // 1000 for h in read_capture(path).handshakes] == stamps


# --- damage ---------------------------------------------------------------------------------


def test_truncated_pcap_keeps_events_before_the_damage(tmp_path: Path) -> None:
    frames = ethernet_frames("latest.pcapng")
    whole = write_pcap(tmp_path / "whole.pcap", 1, frames)
    data = whole.read_bytes()
    # cut inside frame 100's record
    offset = 24 + sum(16 + len(f) for _t, f in frames[:99])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: offset + 16 + 10])
    capture = read_capture(cut)
    assert capture.damage is not None
    assert capture.damage.offset == offset
    assert str(cut) in str(capture.damage) and f"byte offset {offset}" in str(capture.damage)
    assert capture.packets == 99
    full = read_capture(whole)
    assert capture.handshakes == tuple(h for h in full.handshakes if h.frame < 100)


def test_corrupt_record_length_names_the_offset(tmp_path: Path) -> None:
    frames = ethernet_frames("latest.pcapng")[:20]
    data = bytearray(write_pcap(tmp_path / "a.pcap", 1, frames).read_bytes())
    offset = 24 + sum(16 + len(f) for _t, f in frames[:7])
    struct.pack_into("<I", data, offset + 8, 0x7FFFFFFF)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    capture = read_capture(bad)
    assert capture.packets == 7
    assert capture.damage is not None and capture.damage.offset == offset
    assert "impossible captured length" in capture.damage.reason


def test_truncated_pcapng_and_garbage(tmp_path: Path) -> None:
    data = pcap("latest.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:3000])
    capture = read_capture(cut)
    assert capture.damage is not None and "block truncated" in capture.damage.reason
    assert capture.packets > 0
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    with pytest.raises(CaptureFileError) as info:
        read_capture(junk)
    assert info.value.offset == 0 and str(junk) in str(info.value)


def test_malformed_packets_are_listed_with_frame_and_offset(tmp_path: Path) -> None:
    frames = ethernet_frames("latest.pcapng")[:10]
    syn = next(f for _t, f in frames if f[47] == 0x02)
    bad_offset = bytearray(syn)
    bad_offset[46] = 0xF0  # data offset 60 bytes: runs past the segment
    bad_options = bytearray(syn)
    bad_options[54 + 1] = 0x30  # MSS option claims 48 bytes
    crafted = [(1, syn), (2, bytes(bad_offset)), (3, bytes(bad_options)), (4, syn[:30])]
    path = write_pcap(tmp_path / "m.pcap", 1, crafted)
    capture = read_capture(path)
    reasons = {p.frame: p for p in capture.problems}
    assert "data offset" in reasons[2].reason
    assert reasons[2].offset == 24 + 16 + len(syn)
    assert "impossible TCP option length" in reasons[3].reason
    assert reasons[4].frame == 4
    assert [h.frame for h in capture.handshakes] == [1, 3]
