"""Graph benchmarks: capture events per second into the accumulator, and replay packets/s.

    .venv/bin/python bench/bench_graph.py [--flows N] [--packets N] [--skip-replay | --only-replay]

(1) Events into the graph on one core: synthetic but realistic events (per TCP flow a SYN, a
    retransmitted SYN now and then, the SYN-ACK, a first payload each way, periodic cumulative
    counters; UDP DNS-like flows with a FlowSeen and two first payloads; a few flows joined
    mid-stream), built before the clock starts, fed in arrival order. Reference: a plain
    ``dict`` update per event keyed by the 5-tuple in the same run (the floor of any Python
    per-event path). Goal: >= 500,000 events/s.
    The same events as column batches through ``add_batch`` (the live eBPF backend's path)
    are timed too, and their graph checked equal to the per-event one.
(2) Replay: a synthetic pcap of ``--packets`` packets (many short TCP flows, nearly every
    one its own edge: the graph's worst case) through ``netweave.graph.replay.replay`` (the
    capture reader and the graph, as ``netweave replay`` runs them), after one warm-up run;
    then as whole processes: ``netweave replay`` without and with labels, ``tshark -r F -T
    fields -e tcp.flags`` and ``p0f -r F``, on the same file in the same run. Figures are
    CPU time (user + system of this process or of the child), which a shared machine
    disturbs less than wall time; a process's figure includes its start (imports, loading
    the compiled kernels).
(3) AF_PACKET's userspace half: the frames the kernel filter would keep, through
    ``LiveFlows.take`` (batch decode, dedupe) and into the graph.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netweave.capture.afpacket import LiveFlows
from netweave.capture.columns import FlowColumns, columns_of_events
from netweave.capture.containers import read_frames
from netweave.capture.decode import LINK_ETHERNET
from netweave.capture.events import (
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.model import GraphLimits, GraphView
from netweave.graph.replay import replay

COLUMN_BATCH = 8192
NETWEAVE = str(Path(sys.executable).with_name("netweave"))


def synthetic_events(flows: int, seed: int = 7) -> list[CaptureEvent]:
    """Events of ``flows`` flows between 200 clients and 50 servers, in arrival order."""
    rng = random.Random(seed)
    clients = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(200)]
    servers = [(f"10.9.0.{i + 1}", rng.choice((80, 443, 5432, 6379, 8080))) for i in range(50)]
    servers += [(f"fd00::{i + 1:x}", 443) for i in range(10)]
    out: list[CaptureEvent] = []
    ts = 1_700_000_000_000_000_000
    for n in range(flows):
        ts += 1_000
        server, port = rng.choice(servers)
        client = f"fd01::{n % 200 + 1:x}" if ":" in server else rng.choice(clients)
        cport = 32768 + n % 28000
        v = 6 if ":" in server else 4
        kind = n % 10
        if kind == 9:  # DNS over UDP
            out.append(FlowSeen(ts, n, v, 17, client, server, cport, 53, 0))
            out.append(FirstPayload(ts, n, n, v, 17, client, server, cport, 53, b"q", False))
            out.append(FirstPayload(ts + 50, n, n, v, 17, server, client, 53, cport, b"r", False))
            continue
        if kind == 8:  # joined mid-stream
            out.append(FlowSeen(ts, n, v, 6, server, client, port, cport, 0x18))
        else:
            syn = TcpHandshake(ts, n, v, client, server, cport, port, 64, 0, 2, 0, 0, 0, 60,
                               1000 + n, 0, 64240, 0x002, 0, b"\x02\x04\x05\xb4", 0)  # fmt: skip
            out.append(syn)
            if kind == 3:
                out.append(syn)  # a retransmission
            out.append(TcpHandshake(ts + 10, n, v, server, client, port, cport, 64, 0, 2, 0, 0,
                                    0, 60, 5, 1001 + n, 65160, 0x012, 0, b"", 0))  # fmt: skip
        out.append(FirstPayload(ts + 20, n, n, v, 6, client, server, cport, port, b"GET", False))
        out.append(FirstPayload(ts + 30, n, n, v, 6, server, client, port, cport, b"HTTP", False))
        for step in (1, 2):
            out.append(FlowCounters(v, 6, client, server, cport, port, 5 * step, 600 * step,
                                    4 * step, 4000 * step, ts, ts + 40 * step, 0x1B,
                                    kind != 8))  # fmt: skip
    return out


def bench_events(flows: int) -> None:
    events = synthetic_events(flows)
    # Reference: the floor of a Python per-event path (one dict update per event).
    ref = float("inf")
    for _ in range(3):
        floor: dict[tuple[object, ...], int] = {}
        gc.disable()
        start = time.process_time()
        for ev in events:
            if ev.__class__ is FlowCounters:
                key: tuple[object, ...] = (ev.a, ev.b)  # type: ignore[union-attr]
            else:
                key = (ev.src, ev.dst)  # type: ignore[union-attr]
            floor[key] = floor.get(key, 0) + 1
        ref = min(ref, time.process_time() - start)
        gc.enable()
    best = float("inf")
    best_cpu = float("inf")
    graph = GraphAccumulator()
    for _ in range(3):
        graph = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
        start, cpu = time.perf_counter(), time.process_time()
        graph.feed_many(events)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    view = graph.snapshot()
    rate = len(events) / best
    print(f"events into the graph: {len(events):,} events ({flows:,} flows): "
          f"{len(events) / best_cpu:,.0f} events/s CPU, {rate:,.0f}/s wall (goal >= 500,000)"
          )  # fmt: skip
    print(f"  reference dict-update loop: {len(events) / ref:,.0f} events/s CPU;"
          f" graph/reference = {ref / best_cpu:.2f}")  # fmt: skip
    print(f"  graph: {len(view.nodes)} nodes, {len(view.edges)} edges, "
          f"{sum(e.flows for e in view.edges):,} flows")  # fmt: skip
    bench_columns(events, view)
    bounded = GraphAccumulator(GraphLimits(max_nodes=150, max_edges=1000, max_flows=5000))
    start = time.process_time()
    bounded.feed_many(events)
    took = time.process_time() - start
    print(f"  bounded (150 nodes, 1000 edges, 5000 flows): {len(events) / took:,.0f} events/s CPU,"
          f" evictions {bounded.evictions.total:,}")  # fmt: skip


def bench_columns(events: list[CaptureEvent], per_event: GraphView) -> None:
    """The same events as column batches (``add_batch``), the live eBPF backend's path.

    Stream events go in batches of 8,192 (built before the clock starts, as the eBPF
    backend builds them from the ring in bulk); each batch's flow counters follow it, still
    after their own flow's events, so the graph must equal the per-event one.
    """
    batches: list[tuple[FlowColumns, list[FlowCounters]]] = []
    streams: list[list[CaptureEvent]] = []
    stream: list[CaptureEvent] = []
    counters: list[FlowCounters] = []
    for ev in events:
        if isinstance(ev, FlowCounters):
            counters.append(ev)
        else:
            stream.append(ev)
        if len(stream) == COLUMN_BATCH or ev is events[-1]:
            batches.append((columns_of_events(stream), counters))
            streams.append(stream)
            stream, counters = [], []
    best = float("inf")
    graph = GraphAccumulator()
    for _ in range(3):
        graph = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
        cpu = time.process_time()
        for cols, later in batches:
            graph.add_batch(cols)
            graph.feed_many(later)
        best = min(best, time.process_time() - cpu)
    same = graph.snapshot() == per_event
    print(f"  as column batches (add_batch, the eBPF backend's path): {len(events) / best:,.0f} "
          f"events/s CPU; same graph as per event: {same}")  # fmt: skip
    bounds = GraphLimits(max_nodes=150, max_edges=1000, max_flows=5000)
    by_event, by_batch = GraphAccumulator(bounds), GraphAccumulator(bounds)
    cpu = time.process_time()
    for stream, (_cols, later) in zip(streams, batches, strict=True):
        by_event.feed_many(stream)  # in the batches' order: evictions depend on it
        by_event.feed_many(later)
    took_event = time.process_time() - cpu
    cpu = time.process_time()
    for cols, later in batches:
        by_batch.add_batch(cols)
        by_batch.feed_many(later)
    took = time.process_time() - cpu
    print(f"  bounded as below (evicting all along), events in the batches' order: column "
          f"batches {len(events) / took:,.0f} events/s CPU, per event "
          f"{len(events) / took_event:,.0f}; same graph: "
          f"{by_batch.snapshot() == by_event.snapshot()}")  # fmt: skip


def write_pcap(path: Path, packets: int, seed: int = 3) -> None:
    """Short TCP flows (SYN, SYN-ACK, ACK, data each way, ACK, FIN, FIN, ACK: 10 packets)."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ts = 1_700_000_000.0
        n = 0
        flow = 0
        while n < packets:
            flow += 1
            c = bytes((10, 1, rng.randrange(256), rng.randrange(1, 255)))
            s = bytes((10, 9, 0, rng.randrange(1, 50)))
            cport, sport = 32768 + flow % 28000, rng.choice((80, 443, 5432))
            script = [(True, 0x002, 0), (False, 0x012, 0), (True, 0x010, 0), (True, 0x018, 200),
                      (False, 0x010, 0), (False, 0x018, 1200), (True, 0x010, 0),
                      (True, 0x011, 0), (False, 0x011, 0), (True, 0x010, 0)]  # fmt: skip
            for to_server, flags, size in script:
                if n >= packets:
                    break
                src, dst, sp, dp = (c, s, cport, sport) if to_server else (s, c, sport, cport)
                tcp = struct.pack("!HHIIBBHHH", sp, dp, 1, 1, 5 << 4, flags, 64240, 0, 0)
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + size, 0, 0x4000, 64, 6, 0,
                                 src, dst)  # fmt: skip
                frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + b"x" * size
                ts += 0.0001
                sec = int(ts)
                out.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
                out.write(frame)
                n += 1


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_replay(packets: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nw-bench-") as tmp:
        path = Path(tmp) / "flows.pcap"
        write_pcap(path, packets)
        replay(path)  # loads the compiled kernels, as every run after the first one does
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = replay(path)
        took_wall, took_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"replay (graph.replay, no labels): {result.packets:,} packets, "
              f"{len(result.view.edges):,} edges: {result.packets / took_cpu:,.0f} packets/s CPU "
              f"({result.packets / took_wall:,.0f}/s wall)")  # fmt: skip
        commands = [
            ("netweave replay --no-labels (process)", [NETWEAVE, "replay", "-q", "--no-labels",
                                                       str(path)]),
            ("netweave replay (process, labels on)", [NETWEAVE, "replay", "-q", str(path)]),
            ("tshark -r -T fields -e tcp.flags", ["tshark", "-r", str(path), "-T", "fields",
                                                  "-e", "tcp.flags"]),
            ("p0f -r", ["p0f", "-r", str(path), "-f", "/etc/p0f/p0f.fp"]),
        ]  # fmt: skip
        cpu: dict[str, float] = {}
        for name, argv in commands:
            if shutil.which(argv[0]) is None:
                print(f"  {name}: not installed")
                continue
            before, wall = _child_cpu(), time.perf_counter()
            proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  check=False)  # fmt: skip
            cpu[name], ref_wall = _child_cpu() - before, time.perf_counter() - wall
            if proc.returncode != 0:
                print(f"  {name}: failed ({proc.stderr.decode(errors='replace')[-200:]})")
                continue
            print(f"  {name}: {packets / cpu[name]:,.0f} packets/s CPU "
                  f"({packets / ref_wall:,.0f}/s wall)")  # fmt: skip
        p0f = cpu.get("p0f -r")
        if p0f:
            ours = [("replay in process", took_cpu)] + [
                (name, seconds) for name, seconds in cpu.items() if name.startswith("netweave")
            ]
            print("  rate against p0f -r (CPU; above 1 is faster): " + "; ".join(
                f"{name} {p0f / seconds:.2f}x" for name, seconds in ours))  # fmt: skip


def bench_live(packets: int) -> None:
    """AF_PACKET's userspace half: frames through LiveFlows (decode, dedupe) into the graph."""
    with tempfile.TemporaryDirectory(prefix="nw-bench-") as tmp:
        path = Path(tmp) / "live.pcap"
        write_pcap(path, packets)
        got = read_frames(path)
        image = bytes(got.image)
        frames = [
            (image[off : off + cap], ts)
            for off, cap, ts in zip(got.data_offset.tolist(), got.caplen.tolist(),
                                    got.ts_ns.tolist(), strict=True)
        ]  # fmt: skip
        # What the cBPF filter lets through: SYNs, payload segments (here 4 of 10 packets).
        kept = [f for f in frames if f[0][47] & 0x02 or len(f[0]) > 54]
        live = LiveFlows()
        graph = GraphAccumulator(GraphLimits(idle_ttl_ns=0))
        cpu = time.process_time()
        for start in range(0, len(kept), 4096):
            graph.feed_many(live.take(kept[start : start + 4096], LINK_ETHERNET))
        graph.feed_many(live.counters())
        took = time.process_time() - cpu
        print(f"AF_PACKET userspace (LiveFlows + graph): {len(kept):,} filtered frames of "
              f"{len(frames):,}: {len(kept) / took:,.0f} frames/s CPU "
              f"({len(graph.snapshot().edges):,} edges)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--only-replay", action="store_true")
    args = parser.parse_args()
    if args.only_replay:
        bench_replay(args.packets)
        return 0
    bench_events(args.flows)
    if not args.skip_replay:
        bench_replay(args.packets)
        bench_live(min(args.packets, 200_000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
