"""The one command line, ``netweave``, with a subcommand per job.

Subcommands are listed here by where they live and their help line, and imported only when
they run (``netweave.lazy_commands``): the CLI starts without numpy, numba, the kernel
loader or the prober unless the subcommand needs them. A new subcommand is one entry in
``COMMANDS``; tests/test_cli_startup.py checks each help line against the command's own.
"""

from __future__ import annotations

import typer

from netweave.lazy_commands import Lazy, lazy_group

COMMANDS = {
    "agent": Lazy(
        "netweave.agent:agent_command",
        "Map what this host talks to and print (or write) its slice of the service graph.",
    ),
    "sockets": Lazy(
        "netweave.sockets.cli:sockets",
        "Every TCP and UDP socket with its direction, process, namespace and cgroup.",
    ),
    "replay": Lazy(
        "netweave.graph.cli:replay_command",
        "Build the service graph from a capture file (pcap or pcapng).",
    ),
    "fingerprint": Lazy(
        "netweave.fingerprint.cli:fingerprint_command",
        "One record per SYN, SYN-ACK, ClientHello and ServerHello: JA4T/JA4TS/JA4/JA4S and p0f.",
    ),
    "probe": Lazy(
        "netweave.services.cli:probe_command",
        "Identify the services on HOST:PORT with nmap's probes (only in-scope addresses).",
    ),
    "doctor": Lazy(
        "netweave.doctor:doctor",
        "Report what this host supports, by loading tiny programs, and what falls back.",
    ),
    "sentinel": Lazy(
        "netweave.sentinel.cli:app",
        "Protect files and netweave itself with BPF LSM; monitor where it cannot.",
    ),
    "audit": Lazy("netweave.audit.cli:app", "Read and verify the tamper-evident audit log."),
    # shield: the XDP blocklist firewall; bench: benchmarks (`netweave bench shield`).
    "shield": Lazy(
        "netweave.shield.cli:app", "XDP blocklist firewall: drop packets from listed sources."
    ),
    "bench": Lazy(
        "netweave.cli:bench_app", "Benchmarks, each against a reference in the same run."
    ),
}
BENCHMARKS = {
    "shield": Lazy(
        "netweave.shield.bench:shield",
        "Benchmark the shield against an empty program and the kernel LPM trie.",
    ),
}

app = typer.Typer(
    name="netweave",
    help="eBPF network agent: what talks to what, what each node is, and is this host safe.",
    no_args_is_help=True,
    add_completion=False,
    cls=lazy_group(COMMANDS),
)
bench_app = typer.Typer(
    help="Benchmarks, each against a reference in the same run.", cls=lazy_group(BENCHMARKS)
)


@app.callback()
def _root() -> None:
    """eBPF network agent: what talks to what, what each node is, and is this host safe."""


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
