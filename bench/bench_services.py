"""Benchmark: `netweave probe` vs `nmap -sV` on the same loopback servers, same run.

Prints both wall times and the ratio (goal: netweave >= 5x faster with identical
service/product/version/tunnel), then banners matched per second on one core.
Run as root (it starts nginx, sshd, redis, postgresql, memcached on loopback high ports):
    .venv/bin/python bench/bench_services.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from netweave.services.matcher import Matcher  # noqa: E402
from netweave.services.probes_file import DEFAULT_PROBES_PATH, load_probes  # noqa: E402

from services_beds import start_bed  # noqa: E402

NETWEAVE = str(Path(sys.executable).with_name("netweave"))
FIELDS = ("service", "product", "version", "tunnel")
BANNERS = [
    b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n",
    b"220 (vsFTPd 3.0.3)\r\n",
    b"+OK Dovecot (Debian) ready.\r\n",
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] Dovecot ready.\r\n",
    b"RFB 003.008\n",
    b"J\x00\x00\x00\n8.0.35\x00",
    b"\x00\x00\x00\x00",
    b"-ERR unknown command\r\n",
    b"SSH-2.0-dropbear_2022.83\r\n",
]


def _nmap_ports(ports: list[tuple[int, str]]) -> str:
    return ",".join(f"{'T' if proto == 'tcp' else 'U'}:{port}" for port, proto in ports)


def run_netweave(ports: list[tuple[int, str]]) -> tuple[float, dict[int, dict[str, object]]]:
    start = time.perf_counter()
    out = subprocess.run(
        [NETWEAVE, "probe", "--json", *(f"127.0.0.1:{p}/{proto}" for p, proto in ports)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    records = (json.loads(line) for line in out.stdout.splitlines())
    return elapsed, {int(r["port"]): {k: r[k] for k in FIELDS} for r in records}


def run_nmap(ports: list[tuple[int, str]]) -> tuple[float, dict[int, dict[str, object]]]:
    start = time.perf_counter()
    out = subprocess.run(
        ["nmap", "-sS", "-sU", "-sV", "-Pn", "-n", "-p", _nmap_ports(ports), "127.0.0.1",
         "-oX", "-"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    results: dict[int, dict[str, object]] = {}
    for port in ET.fromstring(out.stdout).iter("port"):
        service = port.find("service")
        attrs = dict(service.attrib) if service is not None else {}
        attrs["service"] = attrs.pop("name", None)
        results[int(port.get("portid", "0"))] = {k: attrs.get(k) for k in FIELDS}
    return elapsed, results


def banner_rate(seconds: float = 3.0) -> tuple[float, float]:
    """(cold first-banner seconds, warm banners matched per CPU second) on the NULL probe."""
    db = load_probes(DEFAULT_PROBES_PATH)
    matcher = Matcher(db)
    null = db.null_probe
    assert null is not None
    start = time.perf_counter()
    for banner in BANNERS:
        matcher.match(null, banner)
    cold = time.perf_counter() - start
    count = 0
    start = time.perf_counter()
    cpu_start = time.process_time()  # CPU seconds: the machine is shared, wall time is not ours
    deadline = start + seconds
    while time.perf_counter() < deadline and count < 10_000_000:
        for banner in BANNERS:
            matcher.match(null, banner)
        count += len(BANNERS)
    return cold, count / max(time.process_time() - cpu_start, 1e-9)


def main() -> int:
    with start_bed() as bed:
        if bed.missing:
            print(f"missing servers: {bed.missing}", file=sys.stderr)
            return 1
        targets = [(s.port, s.proto) for s in bed.servers.values()]
        names = {s.port: s.name for s in bed.servers.values()}
        nw_time, nw = run_netweave(targets)
        nmap_time, nm = run_nmap(targets)
    ports = [port for port, _ in targets]
    mismatched = [names[p] for p in ports if nw.get(p) != nm.get(p)]
    identical = not mismatched
    for port in ports:
        mark = "==" if nw.get(port) == nm.get(port) else "!="
        print(f"{names[port]:>11} {port:>5}: netweave {nw.get(port)} {mark} nmap {nm.get(port)}")
    print(f"netweave probe: {nw_time:.2f} s   nmap -sV: {nmap_time:.2f} s   "
          f"speedup: {nmap_time / nw_time:.1f}x   identical results: {identical}"
          + (f" (differ: {', '.join(mismatched)})" if mismatched else ""))  # fmt: skip
    cold, rate = banner_rate()
    print(f"banner matching (NULL probe, one core): first {len(BANNERS)} banners cold "
          f"{cold:.2f} s; warm {rate:,.0f} banners per CPU second")  # fmt: skip
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
