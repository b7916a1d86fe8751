"""``netweave shield ...``: attach, load, mode, status, detach."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from netweave.shield.control import Shield, ShieldError
from netweave.shield.feeds import Feed, FeedError, FeedFormat, read_feed
from netweave.shield.ruleset import Protected, build_ruleset
from netweave.shield.state import DEFAULT_PINS, DEFAULT_STATE, ShieldPaths, iface_key
from netweave.shield.status import render, status_of

app = typer.Typer(help="XDP blocklist firewall: drop packets from listed sources.")


@app.callback()
def _paths(
    ctx: typer.Context,
    pin_root: Path = typer.Option(
        DEFAULT_PINS, envvar="NETWEAVE_SHIELD_PINS", help="Folder on bpffs for the pins."
    ),
    state_dir: Path = typer.Option(
        DEFAULT_STATE, envvar="NETWEAVE_SHIELD_STATE", help="Folder for the state files."
    ),
) -> None:
    """XDP blocklist firewall: drop packets from listed sources."""
    ctx.obj = ShieldPaths(pin_root, state_dir)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def attach(
    ctx: typer.Context,
    *,
    iface: str = typer.Argument(..., help="Interface to protect."),
    mode: str = typer.Option("auto", help="XDP mode: native, generic or auto."),
    netns: str | None = typer.Option(None, help="Network namespace (name or path) of IFACE."),
    bypass: list[str] = typer.Option([], help="Address never dropped (gateway); repeatable."),
    allow: list[str] = typer.Option([], help="CIDR checked before the blocklist; repeatable."),
) -> None:
    """Attach the shield to IFACE (no block rules until `load`); fails open."""
    if mode not in ("native", "generic", "auto"):
        raise _fail(f"--mode {mode!r} is not one of native, generic, auto", 2)
    try:
        protected = Protected(tuple(bypass), tuple(allow))
    except ValueError as e:
        raise _fail(f"bad --bypass/--allow: {e}", 2) from e
    try:
        Shield.attach(iface, paths=ctx.obj, mode=mode, netns_name=netns, protected=protected)
    except ShieldError as e:
        raise _fail(str(e)) from e
    typer.echo(f"shield attached to {iface_key(iface, netns)}")


def _read_feeds(paths: list[Path], level: int, skip_invalid: bool, fmt: str | None) -> list[Feed]:
    feeds: list[Feed] = []
    for p in paths:
        try:
            feed = read_feed(
                p, fmt=FeedFormat(fmt) if fmt else None, level=level, skip_invalid=skip_invalid
            )
        except FeedError as e:
            raise _fail(str(e), 2) from e
        note = f", {feed.excluded} below level {level}" if feed.excluded else ""
        typer.echo(f"{p}: {feed.format.value}, {feed.count} CIDRs{note}")
        for bad in feed.skipped:
            typer.echo(f"  skipped line {bad.line}: {bad.reason}: {bad.text[:60]!r}")
        feeds.append(feed)
    return feeds


@app.command()
def load(
    ctx: typer.Context,
    *,
    feeds: list[Path] = typer.Argument(..., help="Feed files (plain, .netset, DROP, IPsum)."),
    dry_run: bool | None = typer.Option(
        None, "--dry-run/--enforce", help="Count and pass instead of dropping (or drop)."
    ),
    skip_invalid: bool = typer.Option(False, help="Apply the valid lines, list the others."),
    level: int = typer.Option(1, help="IPsum: minimum count of lists naming an address."),
    fmt: str | None = typer.Option(None, "--format", help="Force a format (else detected)."),
    iface: list[str] = typer.Option([], help="Only these interface keys (default: all)."),
) -> None:
    """Replace the rule set atomically with the CIDRs of FEEDS on every attached interface."""
    paths: ShieldPaths = ctx.obj
    parsed = _read_feeds(feeds, level, skip_invalid, fmt)
    keys = iface or paths.interfaces()
    if not keys:
        raise _fail("the shield is not attached anywhere (netweave shield attach IFACE)")
    failed = False
    for key in keys:
        shield = Shield(key, paths)
        try:
            state = shield.state()
            ruleset = build_ruleset(parsed, Protected(state.bypass, state.allow))
            for c in ruleset.conflicts:
                typer.echo(f"warning: {c.describe()}")
            result = shield.swap(ruleset, dry_run=dry_run)
        except ShieldError as e:
            typer.echo(f"error: {e}", err=True)
            failed = True
            continue
        typer.echo(
            f"{key}: rule set #{result.generation} with {result.rules} rules "
            f"({ruleset.listed} listed) in {result.seconds:.2f}s, "
            f"{result.carried} rules kept their counters"
        )
    if failed:
        raise typer.Exit(1)


@app.command()
def mode(
    ctx: typer.Context,
    which: str = typer.Argument(..., help="dry-run or enforce"),
    iface: list[str] = typer.Option([], help="Only these interface keys (default: all)."),
) -> None:
    """Switch dry run on or off at run time (no reload)."""
    if which not in ("dry-run", "enforce"):
        raise _fail(f"mode {which!r} is not dry-run or enforce", 2)
    for key in iface or ctx.obj.interfaces():
        try:
            Shield(key, ctx.obj).set_dry_run(which == "dry-run")
        except ShieldError as e:
            raise _fail(str(e)) from e
        typer.echo(f"{key}: {which}")


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    top: int = typer.Option(10, help="How many top rules by packets to show."),
) -> None:
    """Mode, rule counts, map memory (kernel accounting), totals and top rules."""
    found = [status_of(ctx.obj, key, top=top) for key in ctx.obj.interfaces()]
    if as_json:
        typer.echo(json.dumps({"version": 1, "shields": [asdict(s) for s in found]}, indent=1))
        return
    if not found:
        typer.echo("shield: not attached anywhere")
    for s in found:
        typer.echo(render(s))


@app.command()
def detach(
    ctx: typer.Context,
    iface: str | None = typer.Argument(None, help="Interface (default: every one)."),
    netns: str | None = typer.Option(None, help="Network namespace of IFACE."),
) -> None:
    """Detach the shield and remove its pins and state."""
    keys = [iface_key(iface, netns)] if iface else ctx.obj.interfaces()
    for key in keys:
        try:
            Shield(key, ctx.obj).detach()
        except (ShieldError, OSError) as e:
            raise _fail(f"detach {key}: {e}") from e
        typer.echo(f"shield detached from {key}")
