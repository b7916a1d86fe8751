"""The CLI starts without the stacks its subcommands use, and imports each one only to run it.

Each check runs a fresh interpreter with ``-X importtime`` and reads which modules it
imported: ``import netweave.cli`` and ``netweave --help`` must not pull in numpy, numba,
the kernel loader, the agent or the prober; ``netweave replay`` must pull in the compiled
capture code and nothing of the agent, the kernel, the prober or pyroute2, and a second
replay process loads every compiled kernel from numba's disk cache instead of compiling it.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from netweave.cli import BENCHMARKS, COMMANDS, app
from netweave.lazy_commands import Lazy, LazyCommand

# Heavy or unrelated stacks: none of them is needed to list the subcommands.
NOT_AT_START = (
    "numpy",
    "numba",
    "llvmlite",
    "pyroute2",
    "pydantic",
    "jsonschema",
    "dpkt",
    "sqlalchemy",
    "fastapi",
    "asyncio",
    "netweave.agent",
    "netweave.capture",
    "netweave.graph",
    "netweave.kernel",
    "netweave.services",
    "netweave.shield",
    "netweave.sentinel",
    "netweave.sockets",
    "netweave.fingerprint",
    "netweave.doctor",
    "netweave.labels",
)
# What replay of a capture has no use for (quiet, so no progress bar either).
NOT_IN_REPLAY = (
    "pyroute2",
    "pydantic",  # typer 0.29 coerces every option through pydantic: pyproject pins typer<0.29
    "rich",
    "sqlalchemy",
    "fastapi",
    "netweave.agent",
    "netweave.kernel",
    "netweave.capture.ebpf",
    "netweave.capture.afpacket",
    "netweave.services.prober",
    "netweave.shield",
    "netweave.sentinel",
    "netweave.sockets",
    "netweave.doctor",
    "netweave.graph.slice",
    "netweave.graph.dot",
)


def imported_by(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Every module a fresh ``python -X importtime ARGS`` imported, and the finished run."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "typer" in modules, f"no import report from {args}: {proc.stderr[-500:]}"
    return modules, proc


def found(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are, or are inside, one of ``packages``."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_import_of_the_cli_loads_no_subcommand_stack() -> None:
    modules, proc = imported_by("-c", "import netweave.cli")
    assert proc.returncode == 0, proc.stderr[-1000:]
    unwanted = found(modules, NOT_AT_START)
    assert unwanted == [], f"import netweave.cli imported: {', '.join(unwanted)}"
    assert found(modules, ("netweave",)) == ["netweave", "netweave.cli", "netweave.lazy_commands"]


def test_help_lists_every_subcommand_without_importing_them() -> None:
    modules, proc = imported_by("-m", "netweave", "--help")
    assert proc.returncode == 0, proc.stderr[-1000:]
    unwanted = found(modules, NOT_AT_START)
    assert unwanted == [], f"netweave --help imported: {', '.join(unwanted)}"
    for name in (*COMMANDS, "version"):
        assert f" {name} " in proc.stdout


def write_handshake_pcap(path: Path) -> Path:
    """A pcap of one TCP handshake, 10.0.0.1:40000 -> 10.0.0.2:80 (SYN, SYN-ACK)."""
    frames = []
    for src, dst, sport, dport, flags in (
        (b"\n\0\0\1", b"\n\0\0\2", 40000, 80, 0x02),
        (b"\n\0\0\2", b"\n\0\0\1", 80, 40000, 0x12),
    ):
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 64240, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
        frames.append(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp)
    records = b"".join(
        struct.pack("<IIII", 1_700_000_000, i, len(f), len(f)) + f for i, f in enumerate(frames)
    )
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + records)
    return path


@pytest.mark.parametrize("labels", ["--labels", "--no-labels"])
def test_replay_loads_the_compiled_capture_code_and_not_the_agent(
    tmp_path: Path, labels: str
) -> None:
    pcap = write_handshake_pcap(tmp_path / "handshake.pcap")
    modules, proc = imported_by("-m", "netweave", "replay", "-q", labels, str(pcap))
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "10.0.0.1  10.0.0.2  80    tcp    1" in proc.stdout
    assert {"numba", "netweave.capture.compiled", "netweave.graph.replay"} <= modules
    unwanted = found(modules, NOT_IN_REPLAY)
    assert unwanted == [], f"netweave replay imported: {', '.join(unwanted)}"


def test_each_listed_help_line_is_the_commands_own() -> None:
    for table in (COMMANDS, BENCHMARKS):
        for name, lazy in table.items():
            command = LazyCommand(name, lazy).load()
            assert command.name == name
            own = (command.help or "").split("\n\n")[0].replace("\n", " ").strip()
            assert own == lazy.help, f"{name}: {lazy.target} says {own!r}"


def test_every_subcommand_answers_help_in_process() -> None:
    runner = CliRunner()
    for args in ([], *([name] for name in COMMANDS), ["bench", "shield"], ["version"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"netweave {' '.join(args)} --help: {result.output}"
        assert "Usage: netweave" in result.output


def test_errors_name_the_subcommand_path_as_before() -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["replay"])
    assert missing.exit_code == 2
    assert "Usage: netweave replay" in missing.output
    assert "Missing argument" in missing.output
    typo = runner.invoke(app, ["replya"])
    assert typo.exit_code == 2
    assert "Did you mean 'replay'?" in typo.output


def test_a_lazy_group_keeps_eager_commands_after_the_lazy_ones() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    assert list(root.commands) == [*COMMANDS, "version"]
    listed = root.commands["bench"]
    assert isinstance(listed, LazyCommand)
    bench = listed.load()
    assert isinstance(bench, TyperGroup)
    assert list(bench.commands) == list(BENCHMARKS)


def test_a_target_that_does_not_exist_fails_when_run_naming_it() -> None:
    broken = LazyCommand("gone", Lazy("netweave.no_such_module:command", "Nothing."))
    with pytest.raises(ModuleNotFoundError, match=r"netweave\.no_such_module"):
        broken.load()


# Runs the CLI, then reports every compiled kernel's disk-cache hits and compiles (misses).
KERNEL_STATS = """
import sys
from numba.core.dispatcher import Dispatcher
from netweave.cli import main
try:
    main()
except SystemExit:
    pass
kernels = {
    d.py_func.__module__ + "." + d.py_func.__name__: d
    for name, module in list(sys.modules.items()) if name.startswith("netweave.")
    for d in vars(module).values() if isinstance(d, Dispatcher)
}
for name, d in kernels.items():
    s = d.stats
    print("kernel", name, sum(s.cache_hits.values()), sum(s.cache_misses.values()),
          file=sys.stderr)
"""


def kernel_stats(*args: str) -> dict[str, tuple[int, int]]:
    """Cache hits and compiles per compiled kernel in one ``netweave ARGS`` process."""
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL_STATS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    stats = {}
    for line in proc.stderr.splitlines():
        if line.startswith("kernel "):
            _, name, hits, misses = line.split()
            stats[name] = (int(hits), int(misses))
    assert stats, f"no kernel report: {proc.stderr[-1000:]}"
    return stats


def test_a_second_replay_process_loads_every_kernel_from_the_cache(tmp_path: Path) -> None:
    pcap = write_handshake_pcap(tmp_path / "handshake.pcap")
    kernel_stats("replay", "-q", str(pcap))  # fills the cache if this checkout is new
    second = kernel_stats("replay", "-q", str(pcap))
    used = {name: s for name, s in second.items() if s != (0, 0)}
    assert "netweave.capture.decode._decode_all" in used
    compiled = sorted(name for name, (_, misses) in used.items() if misses)
    assert compiled == [], f"compiled again at start: {', '.join(compiled)}"
