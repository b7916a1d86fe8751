"""The shield with real packets in the test bed: ping, curl and UDP from blocked, allowed
and bypass sources (IPv4 and IPv6), exact counters, dry run, atomic swaps under traffic,
SIGKILL of the agent, takeover, fail-open, and the CLI."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netweave import netns
from netweave.kernel import BpfObject
from netweave.shield.control import Shield, ShieldError
from netweave.shield.feeds import FeedFormat, parse_text
from netweave.shield.ruleset import Protected
from netweave.shield.state import ShieldPaths
from netweave.shield.status import status_of

from testbed import Link, TestBed

pytestmark = pytest.mark.root
UDP_PORT = 7700
HTTP_PORT = 8088


@dataclass(frozen=True, slots=True)
class Bed:
    """Client namespace ``a`` with several sources, server namespace ``b`` with the shield."""

    bed: TestBed
    link: Link
    paths: ShieldPaths
    blocked4: str
    allowed4: str
    bypass4: str
    blocked6: str
    allowed6: str
    bypass6: str

    def shield(self) -> Shield:
        return Shield(f"{self.link.dev_b}@{self.link.ns_b}", self.paths)

    def feed(self, name: str, lines: list[str]) -> Path:
        path = self.bed.tmp / name
        path.write_text("\n".join(lines) + "\n")
        return path


def _canon(address: str) -> str:
    """The form sockets and the shield print (the bed may write ``fd0b:0283::``)."""
    return str(ipaddress.ip_address(address))


def _extra(bed: TestBed, link: Link, index: int) -> tuple[str, str]:
    v4 = link.ipv4_a.rsplit(".", 1)[0] + f".{10 + index}"
    v6 = _canon(link.ipv6_a.rsplit(":", 1)[0] + f":{10 + index:x}")
    bed.run(link.ns_a, ["ip", "addr", "add", f"{v4}/24", "dev", link.dev_a])
    bed.run(link.ns_a, ["ip", "addr", "add", f"{v6}/64", "dev", link.dev_a, "nodad"])
    return v4, v6


@pytest.fixture
def shield_bed(testbed: TestBed) -> Iterator[Bed]:
    a, b = testbed.add_ns("a"), testbed.add_ns("b")
    link = testbed.link(a, b)
    allowed4, allowed6 = _extra(testbed, link, 1)
    bypass4, bypass6 = _extra(testbed, link, 2)
    paths = ShieldPaths(Path(f"/sys/fs/bpf/{testbed.prefix}-shield"), testbed.tmp / "state")
    blocked6 = _canon(link.ipv6_a)
    sb = Bed(testbed, link, paths, link.ipv4_a, allowed4, bypass4, blocked6, allowed6, bypass6)
    _pin_neighbours(sb)
    yield sb
    if sb.shield().attached:
        sb.shield().detach()


def _mac(bed: TestBed, ns: str, dev: str) -> str:
    info = json.loads(bed.run(ns, ["ip", "-j", "link", "show", "dev", dev]).stdout)
    return str(info[0]["address"])


def _pin_neighbours(sb: Bed) -> None:
    """Permanent neighbour entries: no ARP/NDP from a blocked source muddles the counts."""
    link, bed = sb.link, sb.bed
    mac_a, mac_b = _mac(bed, link.ns_a, link.dev_a), _mac(bed, link.ns_b, link.dev_b)
    for addr in (link.ipv4_b, link.ipv6_b):
        bed.run(link.ns_a, ["ip", "neigh", "replace", addr, "lladdr", mac_b, "dev", link.dev_a,
                            "nud", "permanent"])  # fmt: skip
    for addr in (sb.blocked4, sb.allowed4, sb.bypass4, sb.blocked6, sb.allowed6, sb.bypass6):
        bed.run(link.ns_b, ["ip", "neigh", "replace", addr, "lladdr", mac_a, "dev", link.dev_b,
                            "nud", "permanent"])  # fmt: skip


def _ping(sb: Bed, src: str, count: int = 2) -> bool:
    dst = sb.link.ipv6_b if ":" in src else sb.link.ipv4_b
    argv = ["ping", "-6" if ":" in src else "-4", "-c", str(count), "-i", "0.2", "-W", "1"]
    proc = sb.bed.run(sb.link.ns_a, [*argv, "-I", src, dst], check=False, timeout=20)
    return proc.returncode == 0


def _curl(sb: Bed, src: str) -> bool:
    host = f"[{sb.link.ipv6_b}]" if ":" in src else sb.link.ipv4_b
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", "2", "--interface", src]
    proc = sb.bed.run(sb.link.ns_a, [*argv, f"http://{host}:{HTTP_PORT}/"], check=False)
    return proc.returncode == 0


def _udp(family: int, ns: str, bind: tuple[str, int]) -> socket.socket:
    sock = netns.run_in(ns, socket.socket, family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(bind)
    return sock


def _send_udp(sb: Bed, src: str, count: int, payload: int = 64) -> int:
    """Send ``count`` datagrams from ``src``; return how many the server received."""
    v6 = ":" in src
    family = socket.AF_INET6 if v6 else socket.AF_INET
    dst = sb.link.ipv6_b if v6 else sb.link.ipv4_b
    with (
        _udp(family, sb.link.ns_b, (dst, UDP_PORT)) as rx,
        _udp(family, sb.link.ns_a, (src, 0)) as tx,
    ):
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big") + bytes(payload - 4), (dst, UDP_PORT))
        rx.settimeout(1.0)  # veth with XDP delivers through NAPI: allow a loaded host time
        got = 0
        try:
            while got < count:
                rx.recvfrom(2048)
                got += 1
        except TimeoutError:
            pass
    return got


def _frame_len(src: str, payload: int = 64) -> int:
    return 14 + (40 if ":" in src else 20) + 8 + payload


def _counts(shield: Shield) -> dict[str, tuple[int, int]]:
    """Packets and bytes by rule (``allow <cidr>`` for allowlist entries)."""
    return {("allow " if h.allow else "") + h.rule: (h.packets, h.bytes) for h in shield.counters()}


def _attach(sb: Bed, **kw: object) -> Shield:
    return Shield.attach(
        sb.link.dev_b,
        paths=sb.paths,
        netns_name=sb.link.ns_b,
        mode="native",
        protected=Protected(bypass=(sb.bypass4, sb.bypass6)),
        **kw,  # type: ignore[arg-type]
    )


def _feed(sb: Bed, *extra: str) -> list:  # type: ignore[type-arg]
    lines = [f"{sb.blocked4}/32", f"{sb.bypass4}/32", sb.blocked6, sb.bypass6, *extra]
    return [parse_text("\n".join(lines), "test-feed", FeedFormat.PLAIN)]


def test_blocked_sources_cannot_reach_the_server_allowed_and_bypass_can(shield_bed: Bed) -> None:
    sb = shield_bed
    server = [sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(sb.bed.tmp)]
    sb.bed.start(sb.link.ns_b, "http", [*server, str(HTTP_PORT)])
    sb.bed.wait_tcp(sb.link.ns_a, sb.link.ipv4_b, HTTP_PORT)
    shield = _attach(sb)
    for src in (sb.blocked4, sb.blocked6, sb.allowed4):
        assert _curl(sb, src), f"before any rule, {src} reaches the server"
    result = shield.load(_feed(sb))
    assert result.rules == 4
    for src in (sb.blocked4, sb.blocked6):
        assert not _ping(sb, src), f"ping from blocked {src} got through"
        assert not _curl(sb, src), f"curl from blocked {src} got through"
    for src in (sb.allowed4, sb.allowed6, sb.bypass4, sb.bypass6):
        assert _ping(sb, src), f"ping from {src} was dropped"
        assert _curl(sb, src), f"curl from {src} was dropped"
    status = status_of(sb.paths, shield.key)
    assert status.attached and status.xdp_mode == "native" and not status.dry_run
    assert status.block_v4 == 2 and status.block_v6 == 2
    assert status.stats is not None
    assert status.stats.bypassed > 0 and status.stats.dropped > 0
    assert any("bypass" in c and sb.bypass4 in c for c in status.conflicts)
    # The bypass address's rule exists but never matches: the bypass is checked first.
    assert _counts(shield)[f"{sb.bypass4}/32"] == (0, 0)
    shield.detach()
    assert _ping(sb, sb.blocked4) and not sb.paths.pins(shield.key).exists()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_counters_are_exact_and_dry_run_passes_and_counts(shield_bed: Bed, v6: bool) -> None:
    sb = shield_bed
    blocked, allowed = (sb.blocked6, sb.allowed6) if v6 else (sb.blocked4, sb.allowed4)
    shield = _attach(sb)
    shield.load(_feed(sb))
    rule = f"{blocked}/{128 if v6 else 32}"
    assert _send_udp(sb, blocked, 50) == 0
    assert _send_udp(sb, allowed, 20) == 20
    assert _counts(shield)[rule] == (50, 50 * _frame_len(blocked))
    shield.set_dry_run(True)
    assert _send_udp(sb, blocked, 30) == 30
    assert _counts(shield)[rule] == (80, 80 * _frame_len(blocked))
    stats = shield.stats()
    assert (stats.dropped, stats.would_drop) == (50, 30)
    shield.set_dry_run(False)
    assert _send_udp(sb, blocked, 5) == 0
    assert shield.stats().dropped == 55


def test_allowlist_wins_over_the_blocklist(shield_bed: Bed) -> None:
    sb = shield_bed
    subnet = sb.link.ipv4_a.rsplit(".", 1)[0] + ".0/24"
    shield = Shield.attach(
        sb.link.dev_b, paths=sb.paths, netns_name=sb.link.ns_b,
        protected=Protected(allow=(f"{sb.allowed4}/32",)),
    )  # fmt: skip
    shield.load([parse_text(subnet, "subnet", FeedFormat.PLAIN)])
    assert _send_udp(sb, sb.blocked4, 10) == 0
    assert _send_udp(sb, sb.allowed4, 10) == 10
    counts = _counts(shield)
    assert counts[subnet][0] == 10 and counts[f"allow {sb.allowed4}/32"][0] == 10


def test_swaps_under_continuous_traffic_are_atomic_and_keep_counters(shield_bed: Bed) -> None:
    sb = shield_bed
    shield = _attach(sb)
    shield.load(_feed(sb))
    sources = (sb.allowed4, sb.blocked4, sb.allowed6, sb.blocked6)
    received: dict[str, set[int]] = {s: set() for s in sources}
    sent = dict.fromkeys(sources, 0)
    stop = threading.Event()
    receivers = [
        _udp(socket.AF_INET, sb.link.ns_b, (sb.link.ipv4_b, UDP_PORT)),
        _udp(socket.AF_INET6, sb.link.ns_b, (sb.link.ipv6_b, UDP_PORT)),
    ]
    senders = {
        s: (_udp(socket.AF_INET6 if ":" in s else socket.AF_INET, sb.link.ns_a, (s, 0)),
            sb.link.ipv6_b if ":" in s else sb.link.ipv4_b)
        for s in sources
    }  # fmt: skip

    def receive(rx: socket.socket) -> None:
        rx.settimeout(0.2)
        idle = 0
        while idle < 5:
            try:
                data, peer = rx.recvfrom(64)
            except TimeoutError:
                idle = idle + 1 if stop.is_set() else 0
                continue
            received[peer[0]].add(int.from_bytes(data[:4], "big"))

    def send() -> None:
        seq = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for src, (sock, dst) in senders.items():
                sock.sendto(seq.to_bytes(4, "big"), (dst, UDP_PORT))
                sent[src] += 1
            seq += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=receive, args=(rx,)) for rx in receivers]
    threads.append(threading.Thread(target=send))
    for t in threads:
        t.start()
    rng = random.Random(9)
    try:
        time.sleep(0.2)
        for _ in range(5):  # each rule set blocks the blocked sources plus other noise
            noise = [f"198.{rng.randint(18, 19)}.{rng.randint(0, 255)}.0/24" for _ in range(2000)]
            noise += [f"2001:db8:{rng.randint(0, 65535):x}::/48" for _ in range(500)]
            assert shield.load(_feed(sb, *noise)).carried >= 2
            time.sleep(0.1)
    finally:
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        for sock in [*receivers, *(s for s, _ in senders.values())]:
            sock.close()
    counts = _counts(shield)
    for allowed, blocked, plen in ((sb.allowed4, sb.blocked4, 32), (sb.allowed6, sb.blocked6, 128)):
        assert sent[allowed] > 500
        assert received[blocked] == set(), f"a packet from {blocked} got through during a swap"
        assert received[allowed] == set(range(sent[allowed])), f"lost packets from {allowed}"
        assert counts[f"{blocked}/{plen}"][0] == sent[blocked], "counts lost across swaps"


_AGENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from netweave.shield.control import Shield
    from netweave.shield.feeds import read_feed
    from netweave.shield.ruleset import Protected
    from netweave.shield.state import ShieldPaths
    pins, state, dev, ns, feed = sys.argv[1:6]
    shield = Shield.attach(dev, paths=ShieldPaths(Path(pins), Path(state)), netns_name=ns)
    shield.load([read_feed(feed)])
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def _cli(sb: Bed, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NETWEAVE_SHIELD_PINS": str(sb.paths.pin_root),
        "NETWEAVE_SHIELD_STATE": str(sb.paths.state_dir),
        "NETWEAVE_AUDIT_LOG": str(sb.bed.tmp / "cli-audit.jsonl"),
    }
    return subprocess.run(
        [sys.executable, "-m", "netweave", "shield", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_sigkill_keeps_the_filter_and_a_new_agent_takes_over(shield_bed: Bed) -> None:
    sb = shield_bed
    first = sb.feed("first.txt", [f"{sb.blocked4}/32", sb.blocked6])
    env = {**os.environ, "NETWEAVE_AUDIT_LOG": str(sb.bed.tmp / "agent-audit.jsonl")}
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(sb.paths.pin_root), str(sb.paths.state_dir),
         sb.link.dev_b, sb.link.ns_b, str(first)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready", f"agent exited {agent.poll()}"
        assert _send_udp(sb, sb.blocked4, 10) == 0
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        agent.kill()
    assert _send_udp(sb, sb.blocked4, 10) == 0, "the filter went away with its agent"
    assert _send_udp(sb, sb.blocked6, 10) == 0, "the IPv6 filter went away with its agent"
    assert _send_udp(sb, sb.allowed4, 10) == 10
    assert _send_udp(sb, sb.allowed6, 10) == 10
    # A new process takes over through the pins: same rule kept (with its counts), one added.
    second = sb.feed("second.txt", [f"{sb.blocked4}/32", f"{sb.allowed4}/32", sb.blocked6])
    proc = _cli(sb, "load", str(second))
    assert proc.returncode == 0, proc.stderr
    assert "2 rules kept their counters" in proc.stdout, proc.stdout
    assert _send_udp(sb, sb.allowed4, 10) == 0
    status = json.loads(_cli(sb, "status", "--json").stdout)["shields"][0]
    assert status["attached"] and status["block_v4"] == 2 and status["block_v6"] == 1
    assert status["generation"] == 3
    top = {h["rule"]: h["packets"] for h in status["top"]}
    want = {f"{sb.blocked4}/32": 20, f"{sb.allowed4}/32": 10, f"{sb.blocked6}/128": 10}
    assert top == want, status
    assert status["map_bytes"] > 4 << 20
    proc = _cli(sb, "detach")
    assert proc.returncode == 0, proc.stderr
    assert _send_udp(sb, sb.blocked4, 10) == 10
    assert not sb.paths.pins(f"{sb.link.dev_b}@{sb.link.ns_b}").exists()


def test_cli_attach_load_dry_run_and_status(shield_bed: Bed) -> None:
    sb = shield_bed
    proc = _cli(sb, "attach", sb.link.dev_b, "--netns", sb.link.ns_b, "--mode", "generic",
                "--bypass", sb.bypass4)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    feed = sb.feed("list.netset", [f"{sb.blocked4}/32", f"{sb.bypass4}/32"])
    proc = _cli(sb, "load", str(feed), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: bypass {sb.bypass4} is listed by {feed}" in proc.stdout
    assert _send_udp(sb, sb.blocked4, 5) == 5
    assert _send_udp(sb, sb.bypass4, 5) == 5
    text = _cli(sb, "status").stdout
    assert "XDP generic, dry run" in text and f"{sb.blocked4}/32: 5 packets" in text
    assert _cli(sb, "mode", "enforce").returncode == 0
    assert _send_udp(sb, sb.blocked4, 5) == 0
    assert _send_udp(sb, sb.bypass4, 5) == 5
    audit = (sb.bed.tmp / "cli-audit.jsonl").read_text()
    for action in ("shield_attach", "shield_swap", "shield_mode", "link_update"):
        assert f'"{action}"' in audit


def test_attach_failure_fails_open_and_status_says_why(shield_bed: Bed) -> None:
    sb = shield_bed
    with BpfObject.embedded("probe") as probe:
        for name, prog in probe.programs.items():
            prog.autoload = name == "probe_xdp"
        probe.load()
        ifindex = netns.run_in(sb.link.ns_b, socket.if_nametoindex, sb.link.dev_b)
        other = netns.run_in(sb.link.ns_b, probe.programs["probe_xdp"].attach_xdp, ifindex)
        with other:
            with pytest.raises(ShieldError, match="fail-open"):
                _attach(sb)
            assert _send_udp(sb, sb.blocked4, 5) == 5
            assert not sb.paths.pins(f"{sb.link.dev_b}@{sb.link.ns_b}").exists()
            status = status_of(sb.paths, f"{sb.link.dev_b}@{sb.link.ns_b}")
            assert not status.attached and "fail-open" in status.error
            text = _cli(sb, "status").stdout
            assert "not attached" in text and "traffic left untouched" in text


def test_detach_after_the_interface_is_gone_still_removes_everything(shield_bed: Bed) -> None:
    sb = shield_bed
    shield = _attach(sb)
    shield.load(_feed(sb))
    assert status_of(sb.paths, shield.key).attached
    sb.bed.run(sb.link.ns_b, ["ip", "link", "del", sb.link.dev_b])
    status = status_of(sb.paths, shield.key)
    assert not status.attached and "interface gone" in status.error
    shield.detach()
    assert not sb.paths.pins(shield.key).exists()
    assert not sb.paths.state(shield.key).exists()
