"""Flow observer benchmarks (issue 4).

1. Nanoseconds the observer adds to a packet of an established flow, measured with
   BPF_PROG_TEST_RUN against an empty tc program in the same run (goal: <= 30 ns added).
2. Events per second from the ring buffer into the graph on one core (goal: >= 500,000/s),
   the kernel producing the events through BPF_PROG_TEST_RUN: a realistic mix of 100,000
   flows (see :func:`mix`), drained as the agent drains it (``KernelObserver.poll_batch``,
   ``columns_of``, ``GraphAccumulator.add_batch``); reference in the same run: the same
   drained blocks as event objects into ``feed_many``. Also one SYN repeated with
   BPF_PROG_TEST_RUN repeat (one flow, the easy case). Figures are CPU time of the
   userspace side only.

Run as root after `make bpf`:
`flock /tmp/netweave-bench.lock .venv/bin/python bench/bench_observer.py [--flows=N] [--json]`.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import struct
import sys
import time

import numpy as np

from netweave.agent import LABELED_KINDS
from netweave.audit import AuditLog, set_default_log
from netweave.capture import kernel_records as kr
from netweave.capture.ebpf import KernelObserver
from netweave.graph.accumulator import GraphAccumulator
from netweave.kernel import BpfObject
from netweave.labels import default_labeler


def tcp_frame(flags: int, payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP frame from 10.0.0.1:40000 to 10.0.0.2:443."""
    opts = bytes.fromhex("020405b40402080a0000000100000000010303 07".replace(" ", "") + "00")
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, (20 + len(opts)) // 4 << 4, flags,
                      64240, 0, 0) + opts + payload  # fmt: skip
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + tcp


def median_ns(prog, frame: bytes, repeat: int, rounds: int = 7) -> float:
    return statistics.median(prog.test_run(frame, repeat=repeat).duration_ns for _ in range(rounds))


def per_packet_cost() -> dict[str, float]:
    ack = tcp_frame(0x10)
    with BpfObject.embedded("probe") as empty_obj, BpfObject.embedded("observer") as obs_obj:
        for p in empty_obj.programs.values():
            p.autoload = p.name == "probe_tc"
        empty_obj.load()
        obs_obj.load()
        empty, observe = empty_obj.programs["probe_tc"], obs_obj.programs["observe"]
        observe.test_run(ack)  # the flow now exists: later runs are an established flow
        empty_ns = median_ns(empty, ack, 1_000_000)
        observer_ns = median_ns(observe, ack, 1_000_000)
    return {"empty_tc_ns": empty_ns, "observer_ns": observer_ns,
            "added_ns": observer_ns - empty_ns}  # fmt: skip


SYN_OPTS = bytes.fromhex("020405b40402080a000000010000000001030307")


def frame(src: str, sport: int, dst: str, dport: int, flags: int, *, seq: int = 1,
          proto: int = 6, payload: bytes = b"") -> bytes:  # fmt: skip
    """An Ethernet frame, IPv4 or IPv6, TCP (with options on SYNs) or UDP."""
    if proto == 6:
        opts = SYN_OPTS if flags & 0x02 else b""
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (20 + len(opts)) // 4 << 4, flags,
                         64240, 0, 0) + opts  # fmt: skip
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    l4 += payload
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))  # fmt: skip
        return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x86\xdd" + ip + l4
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + l4


def flow_packets(n: int, rng: random.Random) -> list[bytes]:
    """The packets of flow ``n`` of the mix (see :func:`mix`)."""
    server, port = SERVERS[rng.randrange(len(SERVERS))]
    six = ":" in server
    client = f"fd01::{rng.randrange(1, 201):x}" if six else CLIENTS[rng.randrange(len(CLIENTS))]
    cport = 32768 + rng.randrange(28000)
    c2s = (client, cport, server, port)
    s2c = (server, port, client, cport)
    kind = n % 10
    if kind == 9:  # a DNS query and its answer
        return [frame(client, cport, server, 53, 0, proto=17, payload=b"q" * 40),
                frame(server, 53, client, cport, 0, proto=17, payload=b"a" * 120)]  # fmt: skip
    data = [frame(*c2s, 0x18, payload=b"c" * 200), frame(*s2c, 0x10),
            frame(*s2c, 0x18, payload=b"s" * 1200), frame(*c2s, 0x10),
            frame(*c2s, 0x11), frame(*s2c, 0x11), frame(*c2s, 0x10)]  # fmt: skip
    if kind == 8:  # opened before the observer: no handshake, the server speaks first
        return data[2:4] + data[:2] + data[4:]
    syn = frame(*c2s, 0x02, seq=rng.randrange(1 << 32))
    shake = [syn, syn] if kind == 7 else [syn]  # a retransmitted SYN
    return [*shake, frame(*s2c, 0x12, seq=rng.randrange(1 << 32)), frame(*c2s, 0x10), *data]


CLIENTS = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(200)]
SERVERS = [(f"10.9.0.{i + 1}", (80, 443, 5432, 6379, 8080)[i % 5]) for i in range(50)]
SERVERS += [(f"fd00::{i + 1:x}", 443) for i in range(10)]


def mix(flows: int, first: int, rng: random.Random, interleave: int = 64) -> list[bytes]:
    """Packets of ``flows`` flows, ``interleave`` flows at a time taking turns.

    Between 200 clients and 60 servers (10 of them IPv6): 7 in 10 flows are TCP with a seen
    handshake (SYN, SYN-ACK, ACK, a request, a reply, FINs: 4 events), 1 in 10 the same with
    a retransmitted SYN (5 events), 1 in 10 TCP joined mid-stream (FlowSeen and two first
    payloads), 1 in 10 a UDP DNS exchange (FlowSeen and two first payloads).
    """
    out: list[bytes] = []
    for base in range(first, first + flows, interleave):
        scripts = [flow_packets(n, rng) for n in range(base, min(base + interleave, first + flows))]
        for step in range(max(len(s) for s in scripts)):
            out += [s[step] for s in scripts if step < len(s)]
    return out


def events_per_second(flows: int = 100_000, per_drain: int = 2048) -> dict[str, float]:
    """Events of the mix into the graph; time only the userspace side of each drain.

    The kernel makes the events: every packet of the mix through the observer with
    BPF_PROG_TEST_RUN, ``per_drain`` flows between drains of the ring. The agent's path:
    drain the ring, find the records, read them as columns, ``GraphAccumulator.add_batch``.
    Reference in the same run, on the same drained blocks: the event-object path
    (``events_of`` then ``feed_many``).
    """
    rng = random.Random(11)
    timed = {"columns": 0.0, "objects": 0.0}
    blocks = []
    events = 0
    graph = GraphAccumulator()
    with KernelObserver(interfaces=[]) as obs:
        # Load the compiled kernels (numba, cached on disk) before the clock starts: a
        # running agent pays this once, at its first batch.
        for packet in mix(10, 10**6, random.Random(1)):
            obs.test_run(packet)
        GraphAccumulator().add_batch(obs.columns_of(obs.poll_batch(0.0)))
        for first in range(0, flows, per_drain):
            for packet in mix(min(per_drain, flows - first), first, rng):
                obs.test_run(packet)
            cpu = time.process_time()
            batch = obs.poll_batch(0.0)
            graph.add_batch(obs.columns_of(batch))
            timed["columns"] += time.process_time() - cpu
            events += len(batch)
            blocks.append(batch)
        dropped = obs.dropped
        reference = GraphAccumulator()
        for batch in blocks:
            cpu = time.process_time()
            reference.feed_many(obs.events_of(batch))
            timed["objects"] += time.process_time() - cpu
        # What the agent adds beside the graph: handshakes and first payloads as objects for
        # the labeler (p0f, JA4T/JA4TS, JA4, passive nmap matching), on the first batches.
        labeler, _problems = default_labeler(GraphAccumulator())
        labeled = 0
        for batch in blocks[: max(1, len(blocks) // 10)]:
            cpu = time.process_time()
            labeler.feed(obs.events_of(batch, LABELED_KINDS))
            timed["labels"] = timed.get("labels", 0.0) + time.process_time() - cpu
            labeled += len(batch)
    view = graph.snapshot()
    same = view == reference.snapshot()
    kinds = np.bincount(np.concatenate([b.kinds for b in blocks]), minlength=4)
    return {"events": events, "flows": flows, "graph_events_per_second": events / timed["columns"],
            "objects_events_per_second": events / timed["objects"],
            "graph_edges": len(view.edges), "graph_flows": sum(e.flows for e in view.edges),
            "same_graph": same, "ring_drops": dropped,
            "labels_events_per_second": labeled / timed["labels"],
            "kinds": {"handshake": int(kinds[kr.NW_EV_HANDSHAKE]),
                      "payload": int(kinds[kr.NW_EV_PAYLOAD]),
                      "flow_seen": int(kinds[kr.NW_EV_FLOW_SEEN])}}  # fmt: skip


def repeated_syn(total: int = 400_000, batch: int = 20_000) -> dict[str, float]:
    """One SYN repeated with BPF_PROG_TEST_RUN repeat (one flow): the easy case, for reference."""
    syn = tcp_frame(0x02)
    graph = GraphAccumulator()
    count, took = 0, 0.0
    with KernelObserver(interfaces=[]) as obs:
        while count < total:
            obs.test_run(syn, repeat=batch)
            cpu = time.process_time()
            decoded = obs.poll_batch(0.0)
            graph.add_batch(obs.columns_of(decoded))
            took += time.process_time() - cpu
            count += len(decoded)
    return {"repeated_syn_events": count, "repeated_syn_per_second": count / took}


def main() -> None:
    set_default_log(AuditLog("/tmp/netweave-bench-audit.jsonl"))
    flows = 100_000
    for arg in sys.argv[1:]:
        if arg.startswith("--flows="):
            flows = int(arg.split("=", 1)[1])
    result = {**per_packet_cost(), **events_per_second(flows), **repeated_syn()}
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return
    print(f"observer on an established flow: {result['observer_ns']:.0f} ns/packet, empty tc "
          f"program {result['empty_tc_ns']:.0f} ns: {result['added_ns']:.0f} ns added "
          f"(goal <= 30)")  # fmt: skip
    k = result["kinds"]
    print(f"ring buffer -> graph (columns, add_batch): {result['graph_events_per_second']:,.0f} "
          f"events/s on one core (CPU time; goal >= 500,000)")  # fmt: skip
    print(f"  mix: {result['events']:,} events of {result['flows']:,} flows ({k['handshake']:,} "
          f"handshakes, {k['payload']:,} first payloads, {k['flow_seen']:,} flow-seen; "
          f"{result['ring_drops']} dropped) -> {result['graph_edges']:,} edges, "
          f"{result['graph_flows']:,} flows")  # fmt: skip
    print(f"  reference, same blocks: ring -> event objects -> feed_many: "
          f"{result['objects_events_per_second']:,.0f} events/s; columns/objects = "
          f"{result['graph_events_per_second'] / result['objects_events_per_second']:.1f}x; "
          f"same graph: {result['same_graph']}")  # fmt: skip
    print(f"  the agent's labeler beside it (objects of handshakes and first payloads, p0f, "
          f"JA4T/JA4TS/JA4, passive nmap), first 10% of the batches: "
          f"{result['labels_events_per_second']:,.0f} events/s")  # fmt: skip
    print(f"  one SYN repeated (BPF_PROG_TEST_RUN repeat, one flow): "
          f"{result['repeated_syn_per_second']:,.0f} events/s")  # fmt: skip


if __name__ == "__main__":
    main()
