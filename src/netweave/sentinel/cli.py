"""``netweave sentinel``: enforce the protection policy (or, where it cannot, monitor)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import typer

from netweave.sentinel.events import FimEvent
from netweave.sentinel.fanotify import FanotifyMonitor, FanotifyUnavailable
from netweave.sentinel.lsm import PIN_DIR, LsmSentinel, SentinelUnavailable
from netweave.sentinel.policy import Policy, PolicyError
from netweave.sentinel.status import examine

DEFAULT_POLICY = Path("/etc/netweave/sentinel.toml")

app = typer.Typer(
    help="Protect files and netweave itself with BPF LSM; monitor where it cannot.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def sentinel(
    ctx: typer.Context,
    *,
    policy: Path = typer.Option(DEFAULT_POLICY, help="TOML policy; netweave's defaults if absent"),
    allow_unprotected: bool = typer.Option(
        False, "--allow-unprotected", help="run monitoring only when enforcement cannot load"
    ),
    duration: float = typer.Option(0.0, help="stop after this many seconds (0: run until killed)"),
    pin: bool = typer.Option(True, help="pin links so protection outlives the agent"),
    pin_dir: Path = typer.Option(PIN_DIR, help="bpffs directory for the pins"),
) -> None:
    """Run the sentinel: fail closed when enforcement is configured and cannot load."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        rules = Policy.load(policy) if policy.exists() else Policy.of([], defaults=True)
        resolved = rules.resolve()
    except PolicyError as e:
        typer.echo(f"netweave sentinel: {e}", err=True)
        raise typer.Exit(2) from e
    source: LsmSentinel | FanotifyMonitor
    try:
        source = LsmSentinel.start(resolved, pin_dir=pin_dir if pin else None)
        typer.echo(f"netweave sentinel: enforcing {len(resolved.inodes)} inodes", err=True)
    except SentinelUnavailable as e:
        if rules.enforcing and not allow_unprotected:
            typer.echo(
                f"netweave sentinel: refusing to start: the policy asks for enforcement but {e}. "
                "Pass --allow-unprotected to run monitoring only.",
                err=True,
            )
            raise typer.Exit(3) from e
        try:
            source = FanotifyMonitor(resolved)
        except FanotifyUnavailable as f:
            typer.echo(f"netweave sentinel: cannot monitor either: {f}", err=True)
            raise typer.Exit(3) from f
        for path, why in source.unwatched.items():
            typer.echo(f"netweave sentinel: not watching {path}: {why}", err=True)
        typer.echo(f"netweave sentinel: monitoring, not enforcing ({e})", err=True)
    with source:
        _run(source, duration)


MAP_RESCAN_S = 10.0


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Say whether this host enforces the sentinel's rules or only monitors them."""
    found = examine()
    typer.echo(json.dumps(found.to_json(), indent=2) if as_json else found.summary())


def _run(source: LsmSentinel | FanotifyMonitor, duration: float) -> None:
    stop = False

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    next_scan = 0.0
    while not stop and time.monotonic() < deadline:
        if isinstance(source, LsmSentinel) and time.monotonic() >= next_scan:
            source.protect_pinned_maps()  # the shield may have pinned new maps meanwhile
            next_scan = time.monotonic() + MAP_RESCAN_S
        wait = min(1.0, max(0.0, deadline - time.monotonic()))
        for event in source.poll(wait):
            _print(event)
    for event in source.poll(0.0):
        _print(event)


def _print(event: FimEvent) -> None:
    sys.stdout.write(json.dumps(event.to_json(), sort_keys=True) + "\n")
    sys.stdout.flush()
