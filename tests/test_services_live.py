"""Real Debian servers on loopback: `netweave probe` and passive matching against nmap -sV.

The servers (nginx plain and TLS, OpenSSH, Redis, PostgreSQL, memcached) start once per
session on free high ports with their own configs and data dirs. nmap runs in the same
test on the same ports; its XML is the reference.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from netweave.services.matcher import Matcher
from netweave.services.passive import PassiveIdentifier
from netweave.services.prober import Prober, ProberConfig, Target
from netweave.services.probes_file import DEFAULT_PROBES_PATH, load_probes
from netweave.services.scope import Scope
from netweave.services.service_record import record_from_match

sys.path.insert(0, str(Path(__file__).parent))
from services_beds import Bed, start_bed

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "service-record.schema.json").read_text())
NETWEAVE = str(Path(sys.executable).with_name("netweave"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting sshd/postgres/nginx needs root"),
    pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap (the reference) missing"),
    pytest.mark.skipif(not DEFAULT_PROBES_PATH.exists(), reason="nmap-service-probes missing"),
]


@pytest.fixture(scope="session")
def bed() -> Iterator[Bed]:
    with start_bed() as started:
        if started.missing:
            pytest.fail(f"servers missing (run scripts/bootstrap.sh --test): {started.missing}")
        yield started


@pytest.fixture(scope="session")
def identifier() -> PassiveIdentifier:
    return PassiveIdentifier(Matcher(load_probes(DEFAULT_PROBES_PATH)))


@pytest.fixture(scope="session")
def nmap_results(bed: Bed) -> dict[int, dict[str, str | None]]:
    """nmap -sV on every bed port: port -> {service, product, version, tunnel}."""
    tcp = [str(s.port) for s in bed.servers.values() if s.proto == "tcp"]
    udp = [str(s.port) for s in bed.servers.values() if s.proto == "udp"]
    ports = ",".join([f"T:{p}" for p in tcp] + [f"U:{p}" for p in udp])
    out = subprocess.run(
        ["nmap", "-sS", "-sU", "-sV", "-Pn", "-n", "-p", ports, "127.0.0.1", "-oX", "-"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    results: dict[int, dict[str, str | None]] = {}
    for port in ET.fromstring(out.stdout).iter("port"):
        service = port.find("service")
        assert service is not None
        results[int(port.get("portid", "0"))] = {
            "service": service.get("name"),
            "product": service.get("product"),
            "version": service.get("version"),
            "tunnel": service.get("tunnel"),
        }
    return results


@pytest.fixture(scope="session")
def probe_records(bed: Bed) -> dict[int, dict[str, object]]:
    """`netweave probe --json` on every bed port: port -> record."""
    args = [f"127.0.0.1:{s.port}/{s.proto}" for s in bed.servers.values()]
    out = subprocess.run(
        [NETWEAVE, "probe", "--json", "--verbose", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == len(args)
    # every probe sent is logged, one line each
    assert out.stderr.count("netweave.services.prober: probe ") >= len(args)
    return {int(str(r["port"])): r for r in records}


@pytest.mark.parametrize(
    "name",
    ["nginx", "nginx-tls", "sshd", "redis", "redis-tls", "postgresql", "memcached", "dnsmasq"],
)
def test_probe_agrees_with_nmap(
    bed: Bed,
    name: str,
    nmap_results: dict[int, dict[str, str | None]],
    probe_records: dict[int, dict[str, object]],
) -> None:
    port = bed.servers[name].port
    ours, theirs = probe_records[port], nmap_results[port]
    assert theirs["service"], f"nmap did not identify {name}: {theirs}"
    got = {k: ours[k] for k in ("service", "product", "version", "tunnel")}
    assert got == theirs
    jsonschema.validate(ours, SCHEMA)
    assert ours["method"] == "active" and ours["host"] == "127.0.0.1"
    assert ours["proto"] == bed.servers[name].proto


def test_nginx_tls_is_http_inside_ssl(
    probe_records: dict[int, dict[str, object]], bed: Bed
) -> None:
    record = probe_records[bed.servers["nginx-tls"].port]
    assert (record["service"], record["tunnel"]) == ("http", "ssl")
    assert record["cpe"] == ["cpe:/a:igor_sysoev:nginx:1.22.1"]


def test_tls_only_redis_is_found_through_the_tunnel(
    probe_records: dict[int, dict[str, object]], bed: Bed
) -> None:
    """Plain probes only reach 'ssl'; nmap's algorithm then re-probes inside TLS."""
    record = probe_records[bed.servers["redis-tls"].port]
    assert (record["service"], record["tunnel"], record["probe"]) == ("redis", "ssl", "GetRequest")


def test_rate_limit_and_probe_log(bed: Bed) -> None:
    matcher = Matcher(load_probes(DEFAULT_PROBES_PATH))
    config = ProberConfig(rate=10.0, window=6)
    prober = Prober(matcher, Scope.default(), config)
    target = Target("127.0.0.1", bed.servers["nginx"].port)
    started = time.monotonic()
    (result,) = asyncio.run(prober.probe_many([target]))
    elapsed = time.monotonic() - started
    assert result.match is not None and result.match.service == "http"
    sent = prober.log.per_target[target]
    assert sent == result.probes_sent == prober.log.total >= 3
    assert sum(prober.log.per_probe.values()) == sent
    # connections are spaced 1/rate apart: the last one cannot start before (sent-1)/rate
    assert elapsed >= (sent - 1) / config.rate


def test_exact_mode_gives_the_same_answer_without_shortcuts(bed: Bed) -> None:
    """With exact=True no wait is cut short; sshd answers first so it stays quick."""
    matcher = Matcher(load_probes(DEFAULT_PROBES_PATH))
    prober = Prober(matcher, Scope.default(), ProberConfig(exact=True))
    (result,) = asyncio.run(prober.probe_many([Target("127.0.0.1", bed.servers["sshd"].port)]))
    assert result.match is not None and result.match.product == "OpenSSH"
    assert result.sent_probe == "NULL"


def test_out_of_scope_target_is_refused_before_any_traffic() -> None:
    out = subprocess.run(
        [NETWEAVE, "probe", "198.51.100.7:80"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "refusing to probe 198.51.100.7" in out.stderr
    assert "probe NULL" not in out.stderr


def test_closed_port_reports_error(bed: Bed) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        out = subprocess.run(
            [NETWEAVE, "probe", "--json", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    record = json.loads(out.stdout)
    jsonschema.validate(record, SCHEMA)
    assert record["service"] is None and "connect failed" in str(record["error"])


# ---- passive: real bytes captured from the same servers, no probe involved ----


def _exchange(port: int, request: bytes | None, wait: float = 2.0) -> bytes:
    """Connect, optionally send ``request``, read what the server sends (bounded)."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if request:
            sock.sendall(request)
        sock.settimeout(0.5 if request else wait)
        for _ in range(64):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            if not request:
                break
    return data


def _labels(record: dict[str, object]) -> dict[str, object]:
    return {k: record[k] for k in ("service", "product", "version")}


def test_passive_ssh_banner(
    bed: Bed, identifier: PassiveIdentifier, nmap_results: dict[int, dict[str, str | None]]
) -> None:
    port = bed.servers["sshd"].port
    banner = _exchange(port, None)
    assert banner.startswith(b"SSH-2.0-OpenSSH_")
    found = identifier.identify(banner, None, None, port, "tcp")
    record = record_from_match("127.0.0.1", port, "tcp", found, method="passive").to_json()
    jsonschema.validate(record, SCHEMA)
    assert _labels(record) == {k: nmap_results[port][k] for k in ("service", "product", "version")}


CURL_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
)


# Redis drops connections whose request carries "Host:" (its cross-protocol guard), so it
# is asked the way a bare HTTP/1.0 health check asks.
@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [("nginx", CURL_REQUEST), ("redis", b"GET /health HTTP/1.0\r\n\r\n")],
)
def test_passive_client_first(
    bed: Bed,
    name: str,
    request_bytes: bytes,
    identifier: PassiveIdentifier,
    nmap_results: dict[int, dict[str, str | None]],
) -> None:
    port = bed.servers[name].port
    reply = _exchange(port, request_bytes)
    assert reply
    found = identifier.identify(None, request_bytes, reply, port, "tcp")
    record = record_from_match("127.0.0.1", port, "tcp", found, method="passive").to_json()
    jsonschema.validate(record, SCHEMA)
    assert _labels(record) == {k: nmap_results[port][k] for k in ("service", "product", "version")}


def test_passive_memcached_stats(
    bed: Bed, identifier: PassiveIdentifier, nmap_results: dict[int, dict[str, str | None]]
) -> None:
    port = bed.servers["memcached"].port
    reply = _exchange(port, b"stats\r\n")
    assert b"STAT version" in reply
    found = identifier.identify(None, b"stats\r\n", reply, port, "tcp")
    assert found is not None
    assert found.service == nmap_results[port]["service"] == "memcached"


def test_passive_tls_handshake_says_ssl(bed: Bed, identifier: PassiveIdentifier) -> None:
    """Passively a TLS server is only 'ssl': the application inside is encrypted."""
    port = bed.servers["nginx-tls"].port
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    reply = _exchange(port, hello)
    found = identifier.identify(None, hello, reply, port, "tcp")
    assert found is not None and found.service == "ssl"
