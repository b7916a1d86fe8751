"""Real traffic on loopback: nginx (TLS) and curl, captured by tcpdump, read by p0f -r and by
netweave; both must agree on every SYN and SYN-ACK, and the TLS hellos must be found."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netweave.capture.pcapfile import read_capture
from netweave.fingerprint.p0f_db import load_p0f_database
from netweave.fingerprint.replay import Fingerprinter, FingerprintOptions

TOOLS = ("tcpdump", "p0f", "nginx", "openssl", "curl", "tshark")
LINE = re.compile(
    r"mod=(syn|syn\+ack)\|cli=([^|]+)\|srv=([^|]+)\|subj=\w+\|(?:os|app)=([^|]*)\|"
    r"dist=(?:<= )?(\d+)\|params=([^|]*)\|raw_sig=(.*)$"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """nginx serving TLS on 127.0.0.1 and ::1, on a port of its own, stopped afterwards."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/bootstrap.sh --test installs them)")
    if os.geteuid() != 0:
        pytest.skip("tcpdump on lo needs root (CAP_NET_RAW)")
    port = free_port()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (tmp_path / "nginx.conf").write_text(f"""
daemon off; master_process off; worker_processes 1; user root;
pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};
  fastcgi_temp_path {tmp_path}; uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
  server {{
    listen 127.0.0.1:{port} ssl; listen [::1]:{port} ssl;
    ssl_certificate {tmp_path}/cert.pem; ssl_certificate_key {tmp_path}/key.pem;
    location / {{ return 200 "netweave\\n"; }}
  }}
}}
""")
    server = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"nginx did not start: {(tmp_path / 'error.log').read_text()}")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def capture_traffic(port: int, path: Path) -> None:
    dump = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            "lo",
            "-U",
            "--immediate-mode",
            "-n",
            "-w",
            str(path),
            "tcp",
            "port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        deadline = time.monotonic() + 10
        while "listening on" not in dump.stderr.readline():
            assert time.monotonic() < deadline and dump.poll() is None, "tcpdump did not start"
        for host in ("127.0.0.1", "[::1]", "127.0.0.1"):
            subprocess.run(
                ["curl", "-sk", "--max-time", "5", f"https://{host}:{port}/"],
                check=True,
                capture_output=True,
                timeout=20,
            )
        time.sleep(0.5)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)


def test_p0f_and_netweave_agree_on_loopback_traffic(tls_server: int, tmp_path: Path) -> None:
    path = tmp_path / "lo.pcap"
    capture_traffic(tls_server, path)
    log = tmp_path / "p0f.log"
    subprocess.run(
        ["p0f", "-r", str(path), "-f", "/etc/p0f/p0f.fp", "-o", str(log)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    theirs = [m.groups() for x in log.read_text().splitlines() if (m := LINE.search(x))]
    db = load_p0f_database("/etc/p0f/p0f.fp")
    records = list(Fingerprinter(FingerprintOptions(p0f_db=db)).run(read_capture(path).events()))
    ours = []
    for r in records:
        if r.p0f is None:
            continue
        cli, srv = (r.src, r.src_port), (r.dst, r.dst_port)
        if r.kind == "synack":
            cli, srv = srv, cli
        ours.append(
            (
                r.p0f.module,
                f"{cli[0]}/{cli[1]}",
                f"{srv[0]}/{srv[1]}",
                r.p0f.label,
                str(r.p0f.dist),
                r.p0f.params,
                r.p0f.raw_sig,
            )
        )

    # p0f prints IPv6 addresses without '::' compression; compare IPv4 lines textually and
    # IPv6 lines by everything but the address text.
    def key(row: tuple[str, ...]) -> tuple[str, ...]:
        cli, srv = row[1], row[2]
        if ":" in cli:
            cli, srv = "v6/" + cli.rsplit("/", 1)[1], "v6/" + srv.rsplit("/", 1)[1]
        return (row[0], cli, srv, *row[3:])

    assert len(theirs) == 6  # three connections: SYN and SYN-ACK each
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert any(r[3].startswith("Linux") for r in theirs)
    hellos = [r for r in records if r.kind in ("client_hello", "server_hello")]
    assert len(hellos) == 6
    # tshark's reading of the same hellos: version, cipher count, ALPN
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "tls.handshake.type==1 || tls.handshake.type==2",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=;",
            "-e",
            "frame.number",
            "-e",
            "tls.handshake.type",
            "-e",
            "tls.handshake.version",
            "-e",
            "tls.handshake.extensions.supported_version",
            "-e",
            "tls.handshake.ciphersuite",
            "-e",
            "tls.handshake.extensions_alpn_str",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    codes = {"0x0304": "13", "0x0303": "12"}
    by_frame = {r.frame: r for r in hellos}
    for line in out.splitlines():
        frame, kind, version, supported, suites, alpn = line.split("\t")
        record = by_frame[int(frame)]
        offered = [v for v in supported.split(";") if v and v in codes]
        best = codes[max(offered)] if offered else codes[version]
        first_alpn = alpn.split(";")[0]
        if kind == "1":
            assert record.kind == "client_hello" and record.ja4 is not None
            assert record.ja4[:4] == f"t{best}i"  # curl sends no SNI for an IP address
            values = [int(c, 16) for c in suites.split(";") if c]
            ciphers = [v for v in values if not (v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF)]
            assert int(record.ja4[4:6]) == min(len(ciphers), 99)
            assert record.ja4[8:10] == first_alpn[0] + first_alpn[-1]
        else:
            assert record.kind == "server_hello" and record.ja4s is not None
            assert record.ja4s[:3] == f"t{best}"
            assert record.ja4s[5:7] == first_alpn[0] + first_alpn[-1]
            assert record.ja4s.split("_")[1] == suites.removeprefix("0x")
    syns = [r for r in records if r.kind == "syn"]
    assert len(syns) == 3 and all(r.ja4t and r.ja4t.startswith("65") for r in syns)
