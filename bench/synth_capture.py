"""Write a large synthetic Ethernet/IPv4/TCP pcap quickly (numpy scatter of packet templates).

Each flow is a full TCP conversation: SYN, SYN-ACK, ACK, a TLS ClientHello, a
ServerHello-sized reply, data packets both ways and FINs. Used by the benchmarks; not part
of the package.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SYN_OPTIONS = (
    bytes.fromhex("020405b4") + bytes.fromhex("0402080a") + b"\x00" * 8 + b"\x01\x03\x03\x07"
)
SYNACK_OPTIONS = bytes.fromhex("020405b40101040201030307")


def _client_hello() -> bytes:
    ciphers = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    sni_name = b"bench.example"
    sni = (
        struct.pack("!HHHBH", 0, len(sni_name) + 5, len(sni_name) + 3, 0, len(sni_name)) + sni_name
    )
    alpn = struct.pack("!HHH", 16, 5, 3) + b"\x02h2"
    versions = struct.pack("!HHB", 43, 5, 4) + bytes.fromhex("03040303")
    sigalgs = struct.pack("!HHH", 13, 8, 6) + bytes.fromhex("040308040401")
    exts = sni + alpn + versions + sigalgs
    body = (
        b"\x03\x03"
        + b"\x11" * 32
        + b"\x00"
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _packet(
    src: int,
    dst: int,
    ports: tuple[int, int],
    flags: int,
    *,
    seq_ack: tuple[int, int],
    opts: bytes,
    payload: bytes,
) -> bytes:
    doff = (20 + len(opts)) // 4
    seq, ack = seq_ack
    tcp = struct.pack("!HHIIBBHHH", *ports, seq, ack, doff << 4, flags, 64240, 0, 0) + opts
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src, dst)
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    return eth + ip + tcp + payload


def write_capture(path: Path, flows: int = 10_000, packets_per_flow: int = 100) -> int:
    """Write ``flows * packets_per_flow`` packets to ``path``; returns the packet count."""
    hello = _client_hello()
    data = b"\x17\x03\x03" + b"\x00\x30" + b"\x5a" * 48
    c, s = 0x0A000001, 0x0A010001
    # (direction, flags, options, payload) of every packet of a flow, in order
    plan: list[tuple[int, int, bytes, bytes]] = [
        (0, 0x02, SYN_OPTIONS, b""),
        (1, 0x12, SYNACK_OPTIONS, b""),
        (0, 0x10, b"", b""),
        (0, 0x18, b"", hello),
    ]
    for k in range(packets_per_flow - 6):
        plan.append((k % 2, 0x18, b"", data))
    plan += [(0, 0x11, b"", b""), (1, 0x11, b"", b"")]
    # sequence numbers as a real conversation has them (SYNs count one)
    next_seq = [1000, 5000]
    templates = []
    for d, f, o, p in plan:
        seq = next_seq[d]
        ack = next_seq[1 - d] if f & 0x10 else 0
        next_seq[d] += len(p) + (1 if f & 0x03 else 0)
        src, dst, ports = (c, s, (40000, 443)) if d == 0 else (s, c, (443, 40000))
        templates.append(_packet(src, dst, ports, f, seq_ack=(seq, ack), opts=o, payload=p))
    n = flows * packets_per_flow
    lengths = np.array([len(t) for t in templates], dtype=np.int64)
    kinds = np.tile(np.arange(len(plan)), flows)
    flow_of = np.repeat(np.arange(flows), len(plan))
    # interleave: flow f starts at f * 0.5 ms, its packets 1 ms apart
    t_us = flow_of * 500 + np.tile(np.arange(len(plan)), flows) * 1000
    order = np.argsort(t_us, kind="stable")
    kinds, flow_of, t_us = kinds[order], flow_of[order], t_us[order]
    rec_len = 16 + lengths[kinds]
    offsets = 24 + np.concatenate(([0], np.cumsum(rec_len)[:-1]))
    size = int(24 + rec_len.sum())
    buf = np.zeros(size, dtype=np.uint8)
    buf[:24] = np.frombuffer(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1), np.uint8)
    sec = 1_700_000_000 + t_us // 1_000_000
    usec = t_us % 1_000_000
    hdr = np.stack([sec, usec, lengths[kinds], lengths[kinds]], axis=1).astype("<u4")
    buf[offsets[:, None] + np.arange(16)] = hdr.view(np.uint8).reshape(-1, 16)
    client_ip = (0x0A000000 + 1 + (flow_of % 60000)).astype(">u4").view(np.uint8).reshape(-1, 4)
    cport = (1024 + flow_of % 60000).astype(">u2").view(np.uint8).reshape(-1, 2)
    for k, template in enumerate(templates):
        rows = np.flatnonzero(kinds == k)
        if not rows.size:
            continue
        base = offsets[rows] + 16
        tmpl = np.frombuffer(template, dtype=np.uint8)
        buf[base[:, None] + np.arange(len(tmpl))] = tmpl
        src_at, port_at = (26, 34) if plan[k][0] == 0 else (30, 36)
        buf[base[:, None] + src_at + np.arange(4)] = client_ip[rows]
        buf[base[:, None] + port_at + np.arange(2)] = cport[rows]
    path.write_bytes(buf.tobytes())
    return n


if __name__ == "__main__":
    import sys

    print(write_capture(Path(sys.argv[1])))
