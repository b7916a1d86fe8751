"""``netweave bench shield``: ns per packet with BPF_PROG_TEST_RUN, in one run, for an empty
XDP program, the kernel LPM trie (the reference) and the shield, on one repeated source
address (hot) and over 2^20 distinct source addresses (random), plus map memory and the
time to load a feed of N CIDRs.

``*_hot_ns``: one listed address, repeated (the drop path with its counters);
``shield_hot_pass_ns``: one unlisted address. ``*_random_ns``: 2^20 distinct addresses
drawn uniformly from the IPv4 space; ``*_random_listed_ns``: 2^20 distinct addresses each
inside a listed CIDR (every packet matches and is counted: the memory-bound worst case).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import typer

from netweave.kernel import KernelError, Map
from netweave.shield.compile import compile_ruleset
from netweave.shield.feeds import read_feed
from netweave.shield.instance import Instance, memlock, write_array
from netweave.shield.ruleset import Protected, build_ruleset

RANDOM_ADDRS = 1 << 20
HOT_ROUNDS = 3  # hot runs per round: the figures whose difference is a few ns
PLEN_MIX = (np.array([16, 20, 22, 24, 28, 32], np.uint8), [0.01, 0.02, 0.04, 0.25, 0.08, 0.60])


@dataclass(frozen=True, slots=True)
class ShieldBench:
    """Figures of one benchmark run (ns are medians over ``rounds`` test runs, or
    ``3 * rounds`` for the hot and empty ones)."""

    cidrs: int
    rules: int
    empty_ns: float
    lpm_hot_ns: float
    lpm_random_ns: float
    shield_hot_ns: float
    shield_random_ns: float
    shield_hot_pass_ns: float
    lpm_random_listed_ns: float
    shield_random_listed_ns: float
    random_overhead_ns: float
    map_bytes: int
    load_seconds: float
    parse_seconds: float
    goal_hot: bool
    goal_random: bool
    goal_memory: bool
    goal_load: bool


def random_cidrs(n: int, seed: int = 7) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """``n`` random IPv4 CIDRs with a feed-like mix of lengths (most /32 and /24)."""
    rng = np.random.default_rng(seed)
    plen = rng.choice(PLEN_MIX[0], n, p=PLEN_MIX[1])
    addr = rng.integers(1 << 24, 224 << 24, n, dtype=np.uint64).astype(np.uint32)
    mask = (np.uint64(0xFFFFFFFF) << (32 - plen.astype(np.uint64))) & np.uint64(0xFFFFFFFF)
    return (addr & mask.astype(np.uint32)).astype(np.uint32), plen


def _frame(src: int) -> bytes:
    eth = bytes(12) + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + src.to_bytes(4, "big")
    return eth + ip + bytes([192, 0, 2, 1]) + bytes(8) + bytes(18)


def _sample_addresses(
    addr: npt.NDArray[np.uint32], plen: npt.NDArray[np.uint8], *, listed: bool, seed: int = 11
) -> npt.NDArray[np.uint32]:
    """2^20 distinct addresses: uniform over IPv4, or each inside a listed CIDR."""
    rng = np.random.default_rng(seed)
    out = np.zeros(0, dtype=np.uint32)
    for _ in range(8):
        if listed:
            pick = rng.integers(0, len(addr), RANDOM_ADDRS * 2, dtype=np.int64)
            span = np.uint64(1) << (32 - plen[pick].astype(np.uint64))
            offset = rng.integers(0, 1 << 62, len(pick), dtype=np.uint64) % span
            more = (addr[pick].astype(np.uint64) + offset).astype(np.uint32)
        else:
            more = rng.integers(0, 1 << 32, RANDOM_ADDRS * 2, dtype=np.uint64).astype(np.uint32)
        out = np.unique(np.concatenate([out, more]))
        if len(out) >= RANDOM_ADDRS:
            break
    rng.shuffle(out)
    return out[:RANDOM_ADDRS]


def _lpm_fill(lpm: Map, addr: npt.NDArray[np.uint32], plen: npt.NDArray[np.uint8]) -> None:
    keys = np.zeros((len(addr), 2), dtype=np.uint32)
    keys[:, 0] = plen
    keys[:, 1] = addr.byteswap()  # network order in memory
    values = np.arange(1, len(addr) + 1, dtype=np.uint32)
    try:
        lpm.update_batch(keys.tobytes(), values.tobytes())
    except KernelError:
        for k, v in zip(keys, values, strict=True):
            lpm.update(k.tobytes(), v.tobytes(), audit=False)


def run(cidrs: int, *, rounds: int = 5, repeat: int = 1 << 20) -> ShieldBench:
    """Build N random CIDRs, load them into the shield and the LPM reference, measure."""
    addr, plen = random_cidrs(cidrs)
    with tempfile.TemporaryDirectory(prefix="nw-bench-shield-") as tmp:
        feed_path = Path(tmp) / "bench.netset"
        feed_path.write_text(
            "".join(f"{(a >> 24) & 255}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{p}\n"
                    for a, p in zip(addr.tolist(), plen.tolist(), strict=True))
        )  # fmt: skip
        t0 = time.perf_counter()
        feed = read_feed(feed_path)
        t1 = time.perf_counter()
        ruleset = build_ruleset([feed], Protected())
        prod = Instance.load(compile_ruleset(ruleset))
        t2 = time.perf_counter()
    try:
        map_bytes = prod.memory_bytes() + sum(memlock(m.fd) for m in prod.shared().values())
    finally:
        prod.close()
    inst = Instance.load(
        compile_ruleset(ruleset),
        object_name="shield_bench",
        program="bench_shield_hot",
        sizes={"lpm4": max(1, len(ruleset.v4_addr))},
    )
    try:
        assert inst.obj is not None
        obj = inst.obj
        _lpm_fill(obj.map("lpm4"), ruleset.v4_addr, ruleset.v4_plen)
        hot_blocked = _frame(int(ruleset.v4_addr[len(ruleset.v4_addr) // 2]))
        hot_pass = _frame(0xC6336401)  # 198.51.100.1, listed by no random rule below 224/8
        progs = obj.programs
        figures: dict[str, list[float]] = {}

        def measure(key: str, prog: str, frame: bytes, n: int) -> None:
            figures.setdefault(key, []).append(progs[prog].test_run(frame, repeat=n).duration_ns)

        for listed in (False, True):
            sample = _sample_addresses(ruleset.v4_addr, ruleset.v4_plen, listed=listed)
            slots = np.zeros(RANDOM_ADDRS, dtype=np.uint64)
            slots[: len(sample)] = sample.byteswap()
            write_array(obj.map("addrs"), slots.tobytes())
            tag = "_listed" if listed else ""
            for _ in range(rounds):
                for _ in range(0 if listed else HOT_ROUNDS):  # cheap runs: more, interleaved
                    measure("empty", "bench_empty", hot_blocked, repeat)
                    measure("shield_hot", "bench_shield_hot", hot_blocked, repeat)
                    measure("shield_hot_pass", "bench_shield_hot", hot_pass, repeat)
                    measure("lpm_hot", "bench_lpm_hot", hot_blocked, repeat)
                    measure("overhead", "bench_next_only", hot_blocked, RANDOM_ADDRS)
                measure(f"shield_random{tag}", "bench_shield_random", hot_blocked, RANDOM_ADDRS)
                measure(f"lpm_random{tag}", "bench_lpm_random", hot_blocked, RANDOM_ADDRS)
    finally:
        inst.close()
    med = {k: float(statistics.median(v)) for k, v in figures.items()}
    load_seconds = t2 - t0
    return ShieldBench(
        cidrs=cidrs,
        rules=ruleset.block_count,
        empty_ns=med["empty"],
        lpm_hot_ns=med["lpm_hot"],
        lpm_random_ns=med["lpm_random"],
        shield_hot_ns=med["shield_hot"],
        shield_random_ns=med["shield_random"],
        shield_hot_pass_ns=med["shield_hot_pass"],
        lpm_random_listed_ns=med["lpm_random_listed"],
        shield_random_listed_ns=med["shield_random_listed"],
        random_overhead_ns=med["overhead"] - med["empty"],
        map_bytes=map_bytes,
        load_seconds=round(load_seconds, 3),
        parse_seconds=round(t1 - t0, 3),
        goal_hot=med["shield_hot"] - med["empty"] <= 10,
        goal_random=med["shield_random"] <= med["lpm_random"] / 10,
        goal_memory=map_bytes <= 64 << 20,
        goal_load=load_seconds <= 1.0,
    )


def shield(
    cidrs: int = typer.Option(100_000, help="How many random IPv4 CIDRs to list."),
    rounds: int = typer.Option(5, help="Test runs per figure (the median is printed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Benchmark the shield against an empty program and the kernel LPM trie."""
    result = run(cidrs, rounds=rounds)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=1))
        return
    for key, value in asdict(result).items():
        typer.echo(f"{key:>20}: {value}")
