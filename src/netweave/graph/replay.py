"""Build the graph from a capture file (pcap or pcapng) with the capture-file backend.

:func:`replay` reads the file with :func:`netweave.capture.pcapfile.read_capture` and gives
its events (handshakes, first payloads, flows without a seen handshake, then the per-flow
counters) to a :class:`GraphAccumulator` in column form: all at once in one compiled pass
(``take_capture``) when nothing can be evicted, else chunk by chunk (``add_batch``, then
``add_counters``); no event record is built. Node labels, when asked for, are computed from
the whole capture at once and put on the graph after the events that gave them (after each
chunk, as a live labeler beside the graph would; all at the end of a one-pass build, where
they only add to nodes that exist). Progress is reported through a callback in three stages:
``read`` (bytes of the file), ``decode`` (0 then 1: the batch decoder has no finer steps)
and ``graph`` (events taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from netweave.capture.containers import CaptureFileError
from netweave.capture.events import CAPTURE_PAYLOAD_LIMIT
from netweave.capture.pcapfile import Capture, PacketProblem, read_capture
from netweave.collector import gc_paused
from netweave.graph.accumulator import GraphAccumulator
from netweave.graph.model import GraphLimits, GraphView

__all__ = ["ReplayResult", "replay"]

READ_CHUNK: Final = 8 << 20
FEED_CHUNK: Final = 65_536

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)`` with stage ``read``, ``decode`` or ``graph``."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The graph built from one capture and what the reader had to say about the file."""

    path: str
    packets: int
    events: int
    view: GraphView
    problems: tuple[PacketProblem, ...]
    problem_count: int
    damage: CaptureFileError | None


class CaptureLabeler(Protocol):
    """What labels the graph's nodes from a whole capture (the node labeler)."""

    def plan(self, capture: Capture) -> Callable[[int], None]:
        """``apply(frame)``: put on the graph the labels of the events up to ``frame``."""
        ...


def replay(
    path: str | Path,
    *,
    limits: GraphLimits | None = None,
    progress: Progress | None = None,
    labels: Callable[[GraphAccumulator], CaptureLabeler] | None = None,
) -> ReplayResult:
    """Build the graph of the capture at ``path``.

    ``labels``, given the graph, returns what labels its nodes from the capture: the node
    labeler that puts fingerprints and passively identified services on them.

    Raises :class:`CaptureFileError` when nothing can be read (missing file, not a capture);
    damage later in the file is returned in ``ReplayResult.damage`` with the graph of
    everything before it.
    """
    report = progress or _silent
    if progress is not None:  # only a shown progress bar needs the separate read pass
        _warm(Path(path), report)
    # One pause of the cyclic GC for the whole build: the graph's objects hold no cycles,
    # and every collection would walk all of them again.
    with gc_paused():
        return _replay(path, limits, report, labels)


def _replay(
    path: str | Path,
    limits: GraphLimits | None,
    report: Progress,
    labels: Callable[[GraphAccumulator], CaptureLabeler] | None,
) -> ReplayResult:
    report("decode", 0, 1)
    # The graph reads no payload bytes: without labels none are kept (their events stay).
    capture = read_capture(path, payload_limit=CAPTURE_PAYLOAD_LIMIT if labels else 0)
    report("decode", 1, 1)
    # Idle TTL is packet time; a capture is one closed period, so nothing idles out of it.
    graph = GraphAccumulator(limits or GraphLimits(idle_ttl_ns=0))
    apply = labels(graph).plan(capture) if labels is not None else None
    stream, counters = capture.stream, capture.counter_columns
    total = len(stream) + len(counters)
    if graph.take_capture(stream, counters):
        # All at once; labels after: they only add to nodes the graph already has.
        done = total
        if apply is not None:
            apply(capture.packets)
        report("graph", done, total)
    else:
        done = _in_chunks(graph, capture, apply, lambda taken: report("graph", taken, total))
    return ReplayResult(
        path=str(path),
        packets=capture.packets,
        events=done,
        view=graph.snapshot(),
        problems=capture.problems,
        problem_count=capture.problem_count,
        damage=capture.damage,
    )


def _in_chunks(
    graph: GraphAccumulator,
    capture: Capture,
    apply: Callable[[int], None] | None,
    report: Callable[[int], None],
) -> int:
    """The events chunk by chunk (evictions happen between them in order), each chunk's
    labels after it, then the counters; reports and returns how many were taken."""
    stream, counters = capture.stream, capture.counter_columns
    done = 0
    for start in range(0, len(stream), FEED_CHUNK):
        stop = min(start + FEED_CHUNK, len(stream))
        done += graph.add_batch(stream.part(start, stop))
        if apply is not None:
            apply(int(capture.event_frame[stop - 1]))
        report(done)
    done += graph.add_counters(counters)
    if apply is not None:
        apply(capture.packets)
    report(done)
    return done


def _silent(_stage: str, _done: int, _total: int) -> None:
    return None


def _warm(path: Path, report: Progress) -> None:
    """Read the file once in chunks, reporting bytes, so the reader's one read hits the cache.

    The capture reader takes the whole file in one read and has no progress hook; this pass
    is what the ``read`` stage measures. Errors are left to the reader, which names them.
    """
    try:
        size = path.stat().st_size
        with path.open("rb", buffering=0) as handle:
            done = 0
            report("read", 0, size)
            buffer = bytearray(READ_CHUNK)
            view = memoryview(buffer)
            while True:
                got = handle.readinto(view)
                if not got:
                    break
                done += got
                report("read", done, size)
    except OSError:
        return
