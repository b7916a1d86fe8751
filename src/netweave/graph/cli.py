"""``netweave replay FILE [--json OUT] [--dot OUT]``: the graph of a capture file.

The capture reader (numpy, numba) is imported when the command runs, not when the CLI
starts; rich only when a progress bar is shown, the slice and dot writers only when asked for.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from operator import add, attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from netweave.graph.accumulator import GraphAccumulator
    from netweave.graph.model import Edge
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

    try:
        result = _run(file, quiet, _labeler(foxio=not no_foxio) if labels else None)
    except CaptureFileError as exc:
        typer.echo(f"netweave replay: {exc}", err=True)
        raise typer.Exit(2) from exc
    # The graph lives until the command exits and holds no cycles: keep the collector from
    # walking its hundreds of thousands of objects again while the output is written.
    gc.freeze()
    if json_out is not None:
        from netweave.graph.slice import build_slice, slice_to_json

        agent_slice = build_slice(result.view, agent_id=agent_id)
        json_out.write_text(slice_to_json(agent_slice) + "\n")
    if dot_out is not None:
        from netweave.graph.dot import to_dot

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


def _labeler(*, foxio: bool) -> Callable[[GraphAccumulator], CaptureLabeler]:
    from netweave.labels import default_labeler

    def make(graph: GraphAccumulator) -> CaptureLabeler:
        labeler, problems = default_labeler(graph, foxio=foxio)
        for problem in problems:
            typer.echo(f"netweave replay: {problem}", err=True)
        return labeler

    return make


def _run(
    file: Path,
    quiet: bool,
    labels: Callable[[GraphAccumulator], CaptureLabeler] | None,
) -> ReplayResult:
    from netweave.graph.replay import replay

    if quiet or not sys.stderr.isatty():  # no bar: rich is not even imported
        return replay(file, labels=labels)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if not err.is_terminal:  # rich's own judgement, e.g. TTY_COMPATIBLE=0
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


# The edge table's columns: title, Edge attribute, and whether it holds text or a number.
EDGE_COLUMNS = (
    ("client", "client", True),
    ("server", "server", True),
    ("port", "port", False),
    ("proto", "protocol", True),
    ("flows", "flows", False),
    ("bytes c->s", "bytes_to_server", False),
    ("bytes s->c", "bytes_to_client", False),
)
INFERRED_MARK = ("", "  inferred")  # indexed by Edge.inferred


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
    out.write(edge_table(view.edges))


def edge_table(edges: Sequence[Edge]) -> str:
    """The edges as plain aligned columns, a header line first, one line per edge.

    A capture can hold a hundred thousand edges: the widths come from one max/min pass per
    column, then each line is one ``%`` format of the edge's attributes, all in ``map`` over
    C-level calls (a rich table would take many seconds to lay these out).
    """
    titles = tuple(title for title, _, _ in EDGE_COLUMNS)
    widths = [
        max(len(title), _widest(edges, attribute, text)) for title, attribute, text in EDGE_COLUMNS
    ]
    line = "  ".join(f"%-{width}s" for width in widths)
    cells = map(attrgetter(*(attribute for _, attribute, _ in EDGE_COLUMNS)), edges)
    marks = map(INFERRED_MARK.__getitem__, map(attrgetter("inferred"), edges))
    lines = map(str.rstrip, map(add, map(line.__mod__, cells), marks))
    return (line % titles).rstrip() + "\n" + "\n".join(lines) + "\n"


def _widest(edges: Sequence[Edge], attribute: str, text: bool) -> int:
    """Length of the longest value of ``attribute`` written out (str) among ``edges``."""
    values = list(map(attrgetter(attribute), edges))
    if text:
        return max(map(len, values))
    # The longest int written out is the largest or the most negative one.
    return max(len(str(max(values))), len(str(min(values))))
