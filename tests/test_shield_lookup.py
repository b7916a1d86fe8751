"""The shield's lookup tables against Python's ipaddress: aggregation, the painted trie
(in Python), and the kernel program itself through BPF_PROG_TEST_RUN with crafted frames."""

from __future__ import annotations

import ipaddress
import random
import struct

import numpy as np
import pytest

from netweave.shield.aggregate import aggregate_v4, aggregate_v6
from netweave.shield.compile import compile_ruleset
from netweave.shield.feeds import FeedFormat, parse_text
from netweave.shield.instance import Instance
from netweave.shield.ruleset import Protected, build_ruleset
from netweave.shield.trie import ALLOW, lookup_v4

XDP_DROP, XDP_PASS = 1, 2


def _random_nets(rng: random.Random, n: int, shortest: int = 8) -> list[ipaddress.IPv4Network]:
    out = []
    for _ in range(n):
        plen = rng.randint(shortest, 32)
        base = (0x0A000000 | rng.getrandbits(20)) if rng.random() < 0.5 else rng.getrandbits(32)
        out.append(ipaddress.IPv4Network((base >> (32 - plen) << (32 - plen), plen)))
    return out


def test_aggregation_matches_collapse_addresses() -> None:
    rng = random.Random(1)
    for _ in range(150):
        nets = _random_nets(rng, rng.randint(0, 60), shortest=rng.choice([0, 16, 24]))
        got_a, got_p = aggregate_v4(
            np.array([int(n.network_address) for n in nets], np.uint32),
            np.array([n.prefixlen for n in nets], np.uint8),
        )
        got = [ipaddress.IPv4Network((int(a), int(p))) for a, p in zip(got_a, got_p, strict=True)]
        assert got == list(ipaddress.collapse_addresses(nets))
        v6 = [
            ipaddress.IPv6Network((rng.getrandbits(16) << 112 >> (128 - p) << (128 - p), p))
            for p in (rng.randint(8, 128) for _ in range(rng.randint(0, 12)))
        ]
        got6 = aggregate_v6((int(n.network_address), n.prefixlen) for n in v6)
        assert [ipaddress.IPv6Network(x) for x in got6] == list(ipaddress.collapse_addresses(v6))


def _expected(
    addr: int, blocks: list[ipaddress.IPv4Network], allows: list[ipaddress.IPv4Network]
) -> int:
    ip = ipaddress.IPv4Address(addr)
    for i, n in enumerate(allows):
        if ip in n:
            return (len(blocks) + 1 + i) | ALLOW
    for i, n in enumerate(blocks):
        if ip in n:
            return i + 1
    return 0


def _ruleset(rng: random.Random, nblock: int, nallow: int):  # type: ignore[no-untyped-def]
    text = "\n".join(str(n) for n in _random_nets(rng, nblock))
    feed = parse_text(text, "random", FeedFormat.PLAIN)
    allow = tuple(str(n) for n in _random_nets(rng, nallow, shortest=12))
    rs = build_ruleset([feed], Protected(allow=allow))
    blocks = [
        ipaddress.IPv4Network((int(a), int(p))) for a, p in zip(rs.v4_addr, rs.v4_plen, strict=True)
    ]
    allows = [
        ipaddress.IPv4Network((int(a), int(p)))
        for a, p in zip(rs.allow_v4_addr, rs.allow_v4_plen, strict=True)
    ]
    return rs, blocks, allows


def _probes(rng: random.Random, blocks, allows, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    probes = [rng.getrandbits(32) for _ in range(n)]
    for net in blocks[:60] + allows:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        probes += [lo, hi, (lo - 1) & 0xFFFFFFFF, (hi + 1) & 0xFFFFFFFF, rng.randint(lo, hi)]
    return probes


def test_trie_tables_match_ipaddress() -> None:
    rng = random.Random(2)
    for _ in range(25):
        rs, blocks, allows = _ruleset(rng, rng.randint(0, 400), rng.randint(0, 4))
        tables = compile_ruleset(rs).v4
        for addr in _probes(rng, blocks, allows, 300):
            assert lookup_v4(tables, addr) == _expected(addr, blocks, allows), (
                ipaddress.IPv4Address(addr)
            )


def _frame4(src: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src.to_bytes(4, "big"), bytes([192, 0, 2, 1])
    )
    return bytes(12) + b"\x08\x00" + ip + bytes(26)


def _frame6(src: int, vlan: bool = False) -> bytes:
    ip6 = struct.pack(
        "!IHBB16s16s", 6 << 28, 8, 17, 64, src.to_bytes(16, "big"), bytes(15) + b"\x01"
    )
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return bytes(12) + tag + b"\x86\xdd" + ip6 + bytes(8)


@pytest.mark.root
def test_kernel_verdicts_match_ipaddress(audit_log: object) -> None:
    rng = random.Random(3)
    rs, blocks, allows = _ruleset(rng, 3000, 3)
    v6_blocks = ["2001:db8::/32", "2001:db8:1::/48", "fd00:1:2:3::1/128", "fd00:9::/64"]
    feed6 = parse_text("\n".join(v6_blocks), "v6", FeedFormat.PLAIN)
    feed4 = parse_text("\n".join(str(n) for n in blocks), "v4", FeedFormat.PLAIN)
    rs = build_ruleset(
        [feed4, feed6],
        Protected(allow=(*(str(a) for a in allows), "2001:db8:1:2::/64")),
    )
    inst = Instance.load(compile_ruleset(rs))
    try:
        assert inst.obj is not None
        prog = inst.obj.programs["xdp_shield"]
        for addr in _probes(rng, blocks, allows, 1500):
            want = _expected(addr, blocks, allows)
            verdict = XDP_DROP if want and not want & ALLOW else XDP_PASS
            assert prog.test_run(_frame4(addr)).retval == verdict, ipaddress.IPv4Address(addr)
        nets6 = [ipaddress.IPv6Network(n) for n in v6_blocks]
        allow6 = ipaddress.IPv6Network("2001:db8:1:2::/64")
        cases = [int(n.network_address) + k for n in nets6 for k in (0, 1, 0xFFFF)]
        cases += [int(allow6.network_address) + 7, rng.getrandbits(128)]
        cases += [int(n.network_address) - 1 for n in nets6]
        cases += [int(n.broadcast_address) + 1 for n in nets6]
        for addr in cases:
            ip = ipaddress.IPv6Address(addr & ((1 << 128) - 1))
            blocked = any(ip in n for n in nets6) and ip not in allow6
            verdict = XDP_DROP if blocked else XDP_PASS
            assert prog.test_run(_frame6(int(ip))).retval == verdict, ip
            assert prog.test_run(_frame6(int(ip), vlan=True)).retval == verdict, ip
    finally:
        inst.close()


@pytest.mark.root
def test_kernel_counters_exact_through_the_last_source_cache(audit_log: object) -> None:
    """Runs of one source (counted in the CPU's last-source entry), switches between sources
    and a dry-run flip mid-run: every rule's totals equal the packets sent, in the right mode."""
    rng = random.Random(5)
    feed = parse_text("203.0.113.0/24\n198.51.100.7/32\n10.0.0.0/8", "v4", FeedFormat.PLAIN)
    rs = build_ruleset([feed], Protected(allow=("10.1.0.0/16",)))
    blocks = [
        ipaddress.IPv4Network((int(a), int(p))) for a, p in zip(rs.v4_addr, rs.v4_plen, strict=True)
    ]
    allows = [ipaddress.IPv4Network("10.1.0.0/16")]
    sources = [0xCB007105, 0xCB0071FE, 0xC6336407, 0x0A020304, 0x0A010203, 0xC0000201]
    inst = Instance.load(compile_ruleset(rs))
    want = np.zeros_like(inst.totals())
    try:
        assert inst.obj is not None
        prog = inst.obj.programs["xdp_shield"]
        flags = inst.shared()["flags"]
        for step in range(60):
            dry = step >= 30
            if step == 30:
                flags.update(bytes(4), (1).to_bytes(4, "little") + bytes(4), audit=False)
            src, times = rng.choice(sources), rng.randint(1, 5)
            frame = _frame4(src)
            got = prog.test_run(frame, repeat=times).retval
            rule = _expected(src, blocks, allows)
            blocked = rule and not rule & ALLOW
            assert got == (XDP_DROP if blocked and not dry else XDP_PASS)
            if rule:
                mode = int(dry and not rule & ALLOW)
                want[rule & ~ALLOW, mode] += np.array([times, times * len(frame)], np.uint64)
        assert (inst.totals() == want).all()
    finally:
        inst.close()
