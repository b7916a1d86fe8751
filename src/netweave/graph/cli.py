"""``netweave replay FILE [--json OUT] [--dot OUT]``: the graph of a capture file.

The capture reader (numpy) is imported when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from netweave.graph.accumulator import GraphAccumulator
    from netweave.graph.replay import CaptureLabeler, ReplayResult

__all__ = ["replay_command"]

MAX_PROBLEMS_SHOWN = 5


def replay_command(
    file: Path = typer.Argument(..., help="pcap or pcapng capture file"),
    json_out: Path | None = typer.Option(None, "--json", help="write the graph slice (JSON)"),
    dot_out: Path | None = typer.Option(None, "--dot", help="write the graph for Graphviz"),
    agent_id: str | None = typer.Option(None, "--agent-id", help="slice agent id [hostname]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    labels: bool = typer.Option(
        True, "--labels/--no-labels", help="fingerprints and passive service labels on nodes"
    ),
    no_foxio: bool = typer.Option(
        False, "--no-foxio", help="leave out JA4T/JA4TS/JA4S (FoxIO License 1.1)"
    ),
) -> None:
    """Build the service graph from a capture file (pcap or pcapng)."""
    from netweave.capture.containers import CaptureFileError
    from netweave.graph.dot import to_dot
    from netweave.graph.slice import build_slice, slice_to_json

    err = Console(stderr=True)
    try:
        result = _run(file, err, quiet, _labeler(err, foxio=not no_foxio) if labels else None)
    except CaptureFileError as exc:
        typer.echo(f"netweave replay: {exc}", err=True)
        raise typer.Exit(2) from exc
    # The graph lives until the command exits and holds no cycles: keep the collector from
    # walking its hundreds of thousands of objects again while the output is written.
    gc.freeze()
    if json_out is not None:
        agent_slice = build_slice(result.view, agent_id=agent_id)
        json_out.write_text(slice_to_json(agent_slice) + "\n")
    if dot_out is not None:
        dot_out.write_text(to_dot(result.view, name=file.name))
    _summary(result, show_edges=json_out is None and dot_out is None)
    if result.problem_count:
        shown = "; ".join(
            f"frame {p.frame} (byte offset {p.offset}): {p.reason}"
            for p in result.problems[:MAX_PROBLEMS_SHOWN]
        )
        typer.echo(f"{file}: {result.problem_count} malformed packet(s) skipped: {shown}", err=True)
    if result.damage is not None:
        typer.echo(
            f"netweave replay: {result.damage}; the graph holds everything before it", err=True
        )
        raise typer.Exit(1)


def _labeler(err: Console, *, foxio: bool) -> Callable[[GraphAccumulator], CaptureLabeler]:
    from netweave.labels import default_labeler

    def make(graph: GraphAccumulator) -> CaptureLabeler:
        labeler, problems = default_labeler(graph, foxio=foxio)
        for problem in problems:
            err.print(f"netweave replay: {problem}")
        return labeler

    return make


def _run(
    file: Path,
    err: Console,
    quiet: bool,
    labels: Callable[[GraphAccumulator], CaptureLabeler] | None,
) -> ReplayResult:
    from netweave.graph.replay import replay

    if quiet or not err.is_terminal:
        return replay(file, labels=labels)
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}
        titles = {"read": f"reading {file.name}", "decode": "decoding packets", "graph": "graph"}

        def show(stage: str, done: int, total: int) -> None:
            if stage == "read":
                amount = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB"
            elif stage == "graph":
                amount = f"{done:,}/{total:,} events"
            else:
                amount = ""
            if stage not in tasks:
                tasks[stage] = bar.add_task(titles.get(stage, stage), total=total, amount=amount)
            bar.update(tasks[stage], completed=done, total=total, amount=amount)

        return replay(file, progress=show, labels=labels)


def _summary(result: ReplayResult, *, show_edges: bool) -> None:
    view = result.view
    out = sys.stdout
    out.write(
        f"{result.path}: {result.packets} packets, {result.events} events, "
        f"{len(view.nodes)} nodes, {len(view.edges)} edges, "
        f"{view.evictions.total} evictions\n"
    )
    if not show_edges or not view.edges:
        return
    # Plain aligned columns: a capture can hold tens of thousands of edges, which a rich
    # table takes seconds per ten thousand rows to lay out.
    rows = [("client", "server", "port", "proto", "flows", "bytes c->s", "bytes s->c", "")]
    rows.extend(
        (e.client, e.server, str(e.port), e.protocol, str(e.flows), str(e.bytes_to_server),
         str(e.bytes_to_client), "inferred" if e.inferred else "")
        for e in view.edges
    )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out.writelines(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
