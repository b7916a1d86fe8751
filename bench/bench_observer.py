"""Flow observer benchmarks (issue 4).

1. Nanoseconds the observer adds to a packet of an established flow, measured with
   BPF_PROG_TEST_RUN against an empty tc program in the same run (goal: <= 30 ns added).
2. Events per second from the ring buffer on one core, the kernel producing them through
   BPF_PROG_TEST_RUN with repeat (goal: >= 500,000/s): decoded column-wise, and all the way
   into the graph accumulator as event objects.

Run as root after `make bpf`: `.venv/bin/python bench/bench_observer.py [--json]`.
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time

from netweave.audit import AuditLog, set_default_log
from netweave.capture import kernel_records as kr
from netweave.capture.ebpf import KernelObserver, decode_block
from netweave.graph.accumulator import GraphAccumulator
from netweave.kernel import BpfObject, RingBuffer


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


def events_per_second(total: int = 400_000, batch: int = 20_000) -> dict[str, float]:
    """Drain SYN events the kernel made with test runs; time only the userspace side."""
    syn = tcp_frame(0x02)
    with BpfObject.embedded("observer") as obj:
        obj.load()
        for name, record in kr.RECORDS.items():
            obj.check_record(name, record)
        prog = obj.programs["observe"]
        columns = materialized = 0
        t_columns = t_objects = 0.0
        graph = GraphAccumulator()
        frame = 1
        with RingBuffer(obj.map("events"), obj.map("event_drops")) as ring:
            decoder = _Decoder()
            while columns < total:
                prog.test_run(syn, repeat=batch)
                t0 = time.perf_counter()
                block, offsets, sizes = ring.drain_block()
                decoded = decode_block(block, offsets, sizes, frame)
                t1 = time.perf_counter()
                frame += len(offsets)
                columns += len(decoded)
                t_columns += t1 - t0
                if materialized < total // 10:
                    materialized += graph.feed_many(decoder.events_of(decoded))
                    t_objects += time.perf_counter() - t1
            dropped = ring.dropped
    return {"events": columns, "events_per_second": columns / t_columns,
            "graph_events_per_second": materialized / t_objects,
            "graph_edges": len(graph.snapshot().edges), "ring_drops": dropped}  # fmt: skip


class _Decoder(KernelObserver):
    """The observer's decoding half, with no interface attached."""

    def __init__(self) -> None:
        self._names, self._frame, self.malformed, self._text = {}, 0, 0, {}
        self._clock_offset = 0


def main() -> None:
    set_default_log(AuditLog("/tmp/netweave-bench-audit.jsonl"))
    result = {**per_packet_cost(), **events_per_second()}
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return
    print(f"observer on an established flow: {result['observer_ns']:.0f} ns/packet, empty tc "
          f"program {result['empty_tc_ns']:.0f} ns: {result['added_ns']:.0f} ns added "
          f"(goal <= 30)")  # fmt: skip
    print(
        f"ring buffer -> decoded event columns: {result['events_per_second']:,.0f} events/s "
        f"on one core ({result['events']:,} events, {result['ring_drops']} dropped; "
        f"goal >= 500,000)"
    )
    print(
        f"ring buffer -> event objects -> graph: {result['graph_events_per_second']:,.0f} "
        f"events/s on one core ({result['graph_edges']} edge)"
    )


if __name__ == "__main__":
    main()
