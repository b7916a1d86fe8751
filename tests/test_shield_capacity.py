"""Capacity: 1,000,000 IPv4 and 100,000 IPv6 CIDRs parse, load and filter (checked through
BPF_PROG_TEST_RUN on addresses inside and outside the listed networks)."""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from netweave.shield.bench import random_cidrs
from netweave.shield.compile import compile_ruleset
from netweave.shield.feeds import read_feed
from netweave.shield.instance import Instance
from netweave.shield.ruleset import Protected, build_ruleset

pytestmark = [pytest.mark.root, pytest.mark.slow]
XDP_DROP, XDP_PASS = 1, 2


def _frame4(src: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src.to_bytes(4, "big"), bytes(4)
    )
    return bytes(12) + b"\x08\x00" + ip + bytes(26)


def _frame6(src: int) -> bytes:
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 8, 17, 64, src.to_bytes(16, "big"), bytes(16))
    return bytes(12) + b"\x86\xdd" + ip6 + bytes(8)


def test_a_million_ipv4_and_100k_ipv6_cidrs_load_and_filter(tmp_path: Path) -> None:
    addr, plen = random_cidrs(1_000_000, seed=21)
    v4_path = tmp_path / "big.netset"
    v4_path.write_text(
        "".join(
            f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{p}\n"
            for a, p in zip(addr.tolist(), plen.tolist(), strict=True)
        )
    )
    rng = np.random.default_rng(22)
    v6_nets = []
    for hi, lo, p in zip(
        rng.integers(0, 1 << 60, 100_000, dtype=np.uint64).tolist(),
        rng.integers(0, 1 << 63, 100_000, dtype=np.uint64).tolist(),
        rng.choice([32, 48, 56, 64, 128], 100_000).tolist(),
        strict=True,
    ):
        value = (0x2 << 124) | (hi << 64) | lo
        v6_nets.append(ipaddress.IPv6Network((value >> (128 - p) << (128 - p), p)))
    v6_path = tmp_path / "big6.txt"
    v6_path.write_text("".join(f"{n}\n" for n in v6_nets))
    started = time.perf_counter()
    feeds = [read_feed(v4_path), read_feed(v6_path)]
    ruleset = build_ruleset(feeds, Protected())
    inst = Instance.load(compile_ruleset(ruleset))
    seconds = time.perf_counter() - started
    try:
        assert feeds[0].count == 1_000_000 and feeds[1].count == 100_000
        assert len(ruleset.v6) > 90_000 and len(ruleset.v4_addr) > 750_000
        assert inst.obj is not None
        prog = inst.obj.programs["xdp_shield"]
        pick = rng.integers(0, len(ruleset.v4_addr), 300)
        for i in pick.tolist():
            base, size = int(ruleset.v4_addr[i]), 1 << (32 - int(ruleset.v4_plen[i]))
            for a in (base, base + size - 1):
                assert prog.test_run(_frame4(a)).retval == XDP_DROP, ipaddress.IPv4Address(a)
        # random_cidrs lists nothing at or above 224.0.0.0: those sources pass.
        for a in rng.integers(224 << 24, 1 << 32, 300, dtype=np.uint64).tolist():
            assert prog.test_run(_frame4(int(a))).retval == XDP_PASS
        for n in v6_nets[:300]:
            assert prog.test_run(_frame6(int(n.broadcast_address))).retval == XDP_DROP, n
        assert prog.test_run(_frame6(0xFD00 << 112)).retval == XDP_PASS
        print(f"1M IPv4 + 100k IPv6 CIDRs: read, built and loaded in {seconds:.1f}s, "
              f"{inst.memory_bytes() / 2**20:.0f} MiB of maps")  # fmt: skip
    finally:
        inst.close()
