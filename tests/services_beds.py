"""Real Debian servers on loopback high ports, each with its own config and data dir.

Used by the services tests and by bench/bench_services.py. Every server is started with a
bounded wait for its port and stopped (terminate, then kill) on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Bed", "RunningServer", "banner_servers", "free_port", "start_bed"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True, slots=True)
class RunningServer:
    """One started server: its name, loopback port and whether it speaks TLS."""

    name: str
    port: int
    tls: bool = False
    proto: str = "tcp"


@dataclass(frozen=True, slots=True)
class Bed:
    """The servers that started, by name, and those that could not (name -> reason)."""

    servers: dict[str, RunningServer]
    missing: dict[str, str]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _nginx(root: Path) -> tuple[list[str], list[RunningServer]]:
    plain, tls = free_port(), free_port()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=netweave-test", "-keyout", str(root / "key.pem"),
         "-out", str(root / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("<html><body>netweave bed</body></html>\n")
    temps = " ".join(
        f"{kind}_temp_path {root}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {temps}
    server {{ listen 127.0.0.1:{plain}; root {root}/www; }}
    server {{
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        root {root}/www;
    }}
}}
"""
    )
    cmd = ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")]
    return cmd, [RunningServer("nginx", plain), RunningServer("nginx-tls", tls, tls=True)]


def _sshd(root: Path) -> tuple[list[str], list[RunningServer]]:
    port = free_port()
    key = root / "host_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {root}/sshd.pid\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    cmd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")]
    return cmd, [RunningServer("sshd", port)]


def _redis(root: Path) -> tuple[list[str], list[RunningServer]]:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
           "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
    return cmd, [RunningServer("redis", port)]


def _redis_tls(root: Path) -> tuple[list[str], list[RunningServer]]:
    """Redis speaking only TLS: nmap must find 'ssl' and re-probe inside the tunnel."""
    port = free_port()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=netweave-test", "-keyout", str(root / "key.pem"),
         "-out", str(root / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cmd = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
           "--tls-cert-file", str(root / "cert.pem"), "--tls-key-file", str(root / "key.pem"),
           "--tls-auth-clients", "no", "--dir", str(root), "--save", "", "--appendonly", "no",
           "--daemonize", "no"]  # fmt: skip
    return cmd, [RunningServer("redis-tls", port, tls=True)]


def _memcached(root: Path) -> tuple[list[str], list[RunningServer]]:
    port = free_port()
    cmd = ["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16"]
    return cmd, [RunningServer("memcached", port)]


def _postgres(root: Path) -> tuple[list[str], list[RunningServer]]:
    port = free_port()
    data = root / "pgdata"
    data.mkdir()
    shutil.chown(root, "postgres", "postgres")
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
         "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cmd = ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
           "-p", str(port), "-k", str(root), "-c", "listen_addresses=127.0.0.1",
           "-c", "fsync=off"]  # fmt: skip
    return cmd, [RunningServer("postgresql", port)]


def _dnsmasq(root: Path) -> tuple[list[str], list[RunningServer]]:
    """dnsmasq as a DNS server on UDP (and TCP, which the readiness check uses)."""
    port = free_port()
    cmd = ["dnsmasq", "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
           "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
           "--pid-file=", "--user=root"]  # fmt: skip
    return cmd, [RunningServer("dnsmasq", port, proto="udp")]


_LAUNCHERS = {
    "nginx": (_nginx, "nginx"),
    "sshd": (_sshd, "/usr/sbin/sshd"),
    "redis": (_redis, "redis-server"),
    "redis-tls": (_redis_tls, "redis-server"),
    "memcached": (_memcached, "memcached"),
    "postgresql": (_postgres, str(PG_BIN / "postgres")),
    "dnsmasq": (_dnsmasq, "dnsmasq"),
}


@contextlib.contextmanager
def start_bed(names: tuple[str, ...] = tuple(_LAUNCHERS)) -> Iterator[Bed]:
    """Start the named servers (all by default); stop them all on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    servers: dict[str, RunningServer] = {}
    missing: dict[str, str] = {}
    base = Path(tempfile.mkdtemp(prefix="netweave-services-"))
    base.chmod(0o755)
    try:
        for name in names:
            launcher, binary = _LAUNCHERS[name]
            if shutil.which(binary) is None and not Path(binary).exists():
                missing[name] = f"{binary} is not installed"
                continue
            root = base / name
            root.mkdir()
            cmd, started = launcher(root)
            proc = _spawn(cmd, root / "server.log")
            procs.append(proc)
            try:
                for server in started:
                    _wait_port(server.port, proc, name)
            except RuntimeError as exc:
                log_text = (root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}\n{log_text}") from None
            servers.update({s.name: s for s in started})
        yield Bed(servers, missing)
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def banner_servers(banners: list[bytes], linger_s: float = 30.0) -> Iterator[list[int]]:
    """One loopback TCP server per banner: it sends the banner on connect, then reads and
    discards input until the client closes (at most ``linger_s``). Yields the ports."""
    loop = asyncio.new_event_loop()
    ports: list[int] = []
    servers: list[asyncio.base_events.Server] = []
    ready = threading.Event()

    def handler(
        banner: bytes,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(banner)
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger_s):
                        while await reader.read(4096):
                            pass
            except OSError:
                pass
            finally:
                writer.close()

        return serve

    async def start() -> None:
        for banner in banners:
            server = await asyncio.start_server(handler(banner), "127.0.0.1", 0)
            servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    try:
        yield ports
    finally:
        for server in servers:
            loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
