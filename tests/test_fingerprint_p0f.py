"""p0f v3 against the real p0f 3.09b: random SYN/SYN-ACK pairs, the ack+ bug, the database."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.p0f import AckRule
from netweave.fingerprint.p0f_db import (
    QUIRK_DF,
    QUIRK_ECN,
    QUIRK_FLOW,
    QUIRK_NZ_ACK,
    QUIRK_NZ_ID,
    QUIRK_NZ_MBZ,
    QUIRK_NZ_URG,
    QUIRK_OPT_BAD,
    QUIRK_OPT_EOL_NZ,
    QUIRK_OPT_NZ_TS2,
    QUIRK_OPT_ZERO_TS1,
    QUIRK_PUSH,
    QUIRK_URG,
    QUIRK_ZERO_ACK,
    QUIRK_ZERO_ID,
    QUIRK_ZERO_SEQ,
    WIN_MOD,
    WIN_MSS,
    WIN_MTU,
    WIN_NORMAL,
    P0fDatabaseError,
    P0fSignature,
    load_p0f_database,
    parse_p0f_database,
)
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions

P0F_DB = Path("/etc/p0f/p0f.fp")
LINE = re.compile(
    r"mod=(syn|syn\+ack|sendsyn probe|sendsyn response)\|cli=([^|]+)\|srv=([^|]+)\|subj=\w+\|"
    r"(?:os|app)=([^|]*)\|"
    r"dist=(?:<= )?(\d+)\|params=([^|]*)\|raw_sig=(.*)$"
)


def need_p0f() -> None:
    if shutil.which("p0f") is None or not P0F_DB.exists():
        pytest.skip("Debian's p0f package (p0f and /etc/p0f/p0f.fp) is not installed")


def run_p0f(path: Path, tmp: Path) -> list[tuple[str, ...]]:
    log = tmp / "p0f.log"
    subprocess.run(
        ["p0f", "-r", str(path), "-f", str(P0F_DB), "-o", str(log)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return [m.groups() for line in log.read_text().splitlines() if (m := LINE.search(line))]


def run_ours(path: Path, ack_rule: AckRule = AckRule.P0F_X86) -> list[tuple[str, ...]]:
    db = load_p0f_database(P0F_DB)
    options = FingerprintOptions(p0f_db=db, foxio=False, ack_rule=ack_rule)
    out = []
    for r in Fingerprinter(options).run(read_capture(path).events()):
        if r.p0f is None:
            continue
        cli, srv = f"{r.src}/{r.src_port}", f"{r.dst}/{r.dst_port}"
        if r.kind == "synack":
            cli, srv = srv, cli
        out.append(
            (r.p0f.module, cli, srv, r.p0f.label, str(r.p0f.dist), r.p0f.params, r.p0f.raw_sig)
        )
    return out


def write_pcap(path: Path, frames: list[bytes]) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, frame in enumerate(frames):
        out.append(
            struct.pack("<IIII", 1_700_000_000 + i // 1000, i % 1000, len(frame), len(frame))
        )
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def segment(
    rng: random.Random, src: int, dst: int, sport: int, dport: int, flags: int, ack: int
) -> bytes:
    """An Ethernet/IPv4 TCP segment with randomised header fields and options."""
    options = random_options(rng)
    doff = 5 + len(options) // 4
    hi = rng.choice([0, 0, 0, 1]) << 0  # NS bit
    urg = rng.choice([0, 0, 0, rng.randrange(1, 65536)])
    seq = rng.choice([0, rng.randrange(1 << 32)])
    window = rng.choice(
        [0, 1024, 5840, 8192, 14600, 29200, 64240, 65535, 1460 * 4, rng.randrange(65536)]
    )
    extra = rng.choice([0, 0, 0, 0x08, 0x20, 0x40, 0x80, 0xC0])
    payload = rng.choice([b"", b"", b"", b"x" * rng.randrange(1, 20)])
    tcp = (
        struct.pack(
            "!HHIIBBHHH", sport, dport, seq, ack, (doff << 4) | hi, flags | extra, window, 0, urg
        )
        + options
        + payload
    )
    tos = rng.choice([0, 0, 0, 1, 2, 3, 0x10, 0xB8, rng.randrange(256)])
    frag = rng.choice([0x4000, 0x4000, 0x0000, 0x8000 | 0x4000, 0x8000])
    ip_id = rng.choice([0, rng.randrange(1, 65536)])
    ttl = rng.choice([32, 60, 64, 110, 128, 200, 255, rng.randrange(1, 256)])
    ip = struct.pack("!BBHHHBBHII", 0x45, tos, 20 + len(tcp), ip_id, frag, ttl, 6, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def random_options(rng: random.Random) -> bytes:
    blocks = {
        "mss": lambda: struct.pack(
            "!BBH", 2, rng.choice([4, 4, 4, 3, 5]), rng.choice([1460, 1440, 536, 1380, 8960, 50])
        ),
        "ws": lambda: struct.pack(
            "!BBB", 3, rng.choice([3, 3, 3, 4]), rng.choice([0, 2, 7, 8, 14, 15])
        ),
        "sok": lambda: struct.pack("!BB", 4, rng.choice([2, 2, 2, 3])),
        "ts": lambda: struct.pack(
            "!BBII", 8, rng.choice([10, 10, 10, 9]), rng.choice([0, 12345]), rng.choice([0, 0, 777])
        ),
        "nop": lambda: b"\x01",
        "sack": lambda: struct.pack("!BBII", 5, 10, 1, 2),
        "unknown": lambda: bytes([rng.choice([30, 34, 253]), 4, 0, 0]),
        "bogus": lambda: bytes([rng.choice([30, 99]), rng.choice([0, 1, 60])]),
    }
    names = rng.choices(list(blocks), k=rng.randrange(0, 7))
    out = b"".join(blocks[n]() for n in names)
    if rng.random() < 0.25:
        out += b"\x00" + bytes(rng.choice([0, 0, 1]) for _ in range(rng.randrange(0, 4)))
    out = out[:40]
    pad = (-len(out)) % 4
    return out + (b"\x00" * pad if rng.random() < 0.5 else b"\x01" * pad)


def test_random_handshakes_equal_p0f(tmp_path: Path) -> None:
    """Differential test: 400 random SYN/SYN-ACK pairs through p0f -r and through netweave."""
    need_p0f()
    rng = random.Random(20261123)
    frames = []
    for i in range(400):
        cli, srv = 0x0A000000 + i + 1, 0xC0A80000 + i % 50 + 1
        port = 10000 + i
        flags = 0x02 if rng.random() < 0.9 else rng.choice([0x03, 0x06, 0x12])
        ack = rng.choice([0, 0, 1, 0x01000000, 0x01000001, 0x00010000, rng.randrange(1 << 32)])
        frames.append(segment(rng, cli, srv, port, 443, flags, ack))
        frames.append(segment(rng, srv, cli, 443, port, 0x12, rng.randrange(1 << 32)))
    path = write_pcap(tmp_path / "random.pcap", frames)
    theirs = run_p0f(path, tmp_path)
    ours = run_ours(path)
    assert len(theirs) > 300
    assert ours == theirs


def test_ack_plus_reproduces_p0f_bit_24_bug(tmp_path: Path) -> None:
    need_p0f()
    rng = random.Random(7)
    frames = []
    acks = [0x01000000, 0x00000001, 0x02000000, 0x00000000]
    for i, ack in enumerate(acks):
        syn = bytearray(segment(rng, 0x0A000001, 0x0A000002, 20000 + i, 80, 0x02, ack))
        syn[47] = 0x02  # plain SYN whatever segment() chose
        frames.append(bytes(syn))
    path = write_pcap(tmp_path / "ack.pcap", frames)
    theirs = run_p0f(path, tmp_path)
    default = run_ours(path)
    assert default == theirs
    flagged = ["ack+" in sig.split(":")[6] for *_rest, sig in theirs]
    assert flagged == [True, False, False, False]  # p0f only sees bit 24
    corrected = run_ours(path, AckRule.CORRECTED)
    assert ["ack+" in r[6].split(":")[6] for r in corrected] == [True, True, True, False]


def test_database_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p0f.fp"
    bad.write_text("classes = win,unix\n[tcp:request]\nlabel = s:unix:Linux:3.x\nsig = 4:64:0\n")
    with pytest.raises(P0fDatabaseError, match=r"p0f\.fp: line 4: a TCP signature has 8"):
        load_p0f_database(bad)
    with pytest.raises(P0fDatabaseError, match="cannot read the p0f database"):
        load_p0f_database(tmp_path / "missing.fp")
    with pytest.raises(P0fDatabaseError, match="line 3: unknown class"):
        parse_p0f_database("classes = win\n[tcp:request]\nlabel = s:bsd:FreeBSD:\n")


def test_debian_database_loads_every_tcp_signature() -> None:
    need_p0f()
    db = load_p0f_database(P0F_DB)
    text = P0F_DB.read_text(encoding="latin-1")
    sections = re.split(r"^\[", text, flags=re.MULTILINE)
    counts = {
        s.split("]")[0]: len(re.findall(r"^sig\s*=", s, flags=re.MULTILINE)) for s in sections[1:]
    }
    assert len(db.syn) == counts["tcp:request"]
    assert len(db.synack) == counts["tcp:response"]


def packet_for_signature(
    rng: random.Random, sig: P0fSignature, src: int, dst: int, sport: int, dport: int, flags: int
) -> bytes | None:
    """An Ethernet frame built to match ``sig`` (then perturbed now and then)."""
    q = sig.quirks
    mss = sig.mss if sig.mss != -1 else rng.choice([1460, 1440, 1380, 536])
    scale = sig.wscale if sig.wscale != -1 else rng.choice([0, 2, 7, 8])
    if sig.win_type == WIN_NORMAL:
        window = sig.win
    elif sig.win_type == WIN_MOD:
        window = sig.win * rng.randrange(1, max(2, 65535 // sig.win))
    elif sig.win_type == WIN_MSS:
        window = mss * sig.win
    elif sig.win_type == WIN_MTU:
        window = (mss + 40) * sig.win
    else:
        window = rng.randrange(1, 65536)
    if window > 65535:
        return None
    ts1 = 0 if q & QUIRK_OPT_ZERO_TS1 else rng.randrange(1, 1 << 32)
    ts2 = rng.randrange(1, 1 << 32) if q & QUIRK_OPT_NZ_TS2 else 0
    options = b""
    for kind in sig.layout:
        if kind == 2:
            options += struct.pack("!BBH", 2, 4, mss)
        elif kind == 3:
            options += struct.pack("!BBB", 3, 3, scale)
        elif kind == 4:
            options += b"\x04\x02"
        elif kind == 5:
            options += b"\x05\x0a" + bytes(8)
        elif kind == 8:
            options += struct.pack("!BBII", 8, 10, ts1, ts2)
        elif kind == 1:
            options += b"\x01"
        elif kind == 0:
            pad = bytearray(sig.eol_pad)
            if q & QUIRK_OPT_EOL_NZ and pad:
                pad[0] = 1
            options += b"\x00" + bytes(pad)
        else:
            options += bytes([kind, 2])
    if len(options) % 4 or len(options) > 40 or q & QUIRK_OPT_BAD:
        return None
    tcp_flags = flags | (0x20 if q & QUIRK_URG else 0) | (0x08 if q & QUIRK_PUSH else 0)
    seq = 0 if q & QUIRK_ZERO_SEQ else rng.randrange(1, 1 << 32)
    if flags & 0x10:
        ack = 0 if q & QUIRK_ZERO_ACK else rng.randrange(1, 1 << 32)
    else:
        ack = 0x01000000 if q & QUIRK_NZ_ACK else 0
    urg = rng.randrange(1, 65536) if q & QUIRK_NZ_URG else 0
    ttl = max(1, sig.ttl - rng.randrange(0, 30))
    tos = 0x02 if q & QUIRK_ECN else 0
    if rng.random() < 0.3:  # perturb: p0f must then match fuzzily, generically or not at all
        choice = rng.randrange(4)
        tos ^= 0x02 if choice == 0 else 0
        ttl = min(255, sig.ttl + 5) if choice == 1 else ttl
        window = (window + 1) % 65536 if choice == 2 else window
        q ^= QUIRK_DF if choice == 3 else 0
    payload = b"hello" if sig.pay_class == 1 else b""
    doff = 5 + len(options) // 4
    tcp = (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, tcp_flags, window, 0, urg)
        + options
        + payload
    )
    if sig.ip_version == 6:
        flow = rng.randrange(1, 1 << 20) if q & QUIRK_FLOW else 0
        first = (6 << 28) | (tos << 20) | flow
        ip = struct.pack("!IHBB", first, len(tcp), 6, ttl)
        ip += bytes(12) + src.to_bytes(4, "big") + bytes(12) + dst.to_bytes(4, "big")
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + tcp
    df = q & QUIRK_DF
    if q & QUIRK_NZ_ID:
        ip_id = rng.randrange(1, 65536)
    elif q & QUIRK_ZERO_ID or df:
        ip_id = 0
    else:
        ip_id = rng.randrange(1, 65536)
    frag = (0x4000 if df else 0) | (0x8000 if q & QUIRK_NZ_MBZ else 0)
    ip_opts = b"\x01" * sig.ip_options_length
    if len(ip_opts) % 4:
        return None
    ihl = 5 + len(ip_opts) // 4
    ip = (
        struct.pack(
            "!BBHHHBBHII", 0x40 | ihl, tos, ihl * 4 + len(tcp), ip_id, frag, ttl, 6, 0, src, dst
        )
        + ip_opts
    )
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def test_database_signatures_match_as_p0f_does(tmp_path: Path) -> None:
    """Differential test over packets built from every p0f.fp TCP signature (some perturbed)."""
    need_p0f()
    db = load_p0f_database(P0F_DB)
    rng = random.Random(5)
    frames: list[bytes] = []
    port = 20000
    generic_syn = segment(rng, 0, 0, 0, 0, 0x02, 0)
    for sig in db.syn + db.synack:
        port += 1
        cli, srv = 0x0A100000 + port, 0xC0A81000 + port % 200
        if sig in db.syn:
            syn = packet_for_signature(rng, sig, cli, srv, port, 80, 0x02)
            reply = packet_for_signature(rng, db.synack[0], srv, cli, 80, port, 0x12)
        else:
            plain = next(s for s in db.syn if s.ip_version == max(sig.ip_version, 4))
            syn = packet_for_signature(rng, plain, cli, srv, port, 80, 0x02)
            reply = packet_for_signature(rng, sig, srv, cli, 80, port, 0x12)
        if syn is None or reply is None or syn[12:14] != reply[12:14]:
            continue
        frames += [syn, reply]
    assert generic_syn
    path = write_pcap(tmp_path / "sigs.pcap", frames)
    theirs = run_p0f(path, tmp_path)
    ours = run_ours(path)
    labelled = sum(1 for r in theirs if r[3] != "???")
    fuzzy = sum(1 for r in theirs if "fuzzy" in r[5])
    generic = sum(1 for r in theirs if "generic" in r[5])
    print(f"{len(theirs)} p0f lines, {labelled} labelled, {fuzzy} fuzzy, {generic} generic")
    assert labelled > 100 and fuzzy > 5 and generic > 5
    assert ours == theirs
