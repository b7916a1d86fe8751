"""Benchmark: passive service identification, flows identified per CPU second on one core.

Each flow is identified the way ``netweave replay`` labels a server (src/netweave/labels.py):
``identify(None, client_first, server_reply)`` when the client spoke first, then the
server's payload alone as a banner if that found nothing. Three workloads:

* short: every flow has the server payload b"x" * 1200 and the client payload b"x" * 200
  (the synthetic 100k-packet capture of short flows);
* varied: HTTP responses with varying Date/Content-Length/Server versions, SSH, SMTP, FTP
  and IMAP banners with varying versions and host names, TLS ServerHellos with random
  random bytes and session ids, Redis and Postgres replies; every flow is new (no flow is
  timed twice), so a memo only helps where real servers would repeat themselves;
* 16KiB: server payloads of 16 KiB, the most the matcher reads (runs of zeros, spaces and
  CRLF, random bytes, HTML), each ending in new bytes: the worst cases of finding literals.

This tree is timed with its match memo on and off, against a reference tree in separate
processes, same run, same payloads: ``--reference-rev`` (default ``0d7889f``, the last
commit before the matcher index and the memo; its ``src`` is exported from git into a
temporary directory) or ``--reference SRC``, a source tree on disk.
Run (the machine is shared: take the lock):
    flock /tmp/netweave-bench.lock .venv/bin/python bench/bench_passive.py \
        [--reference-rev REV | --reference SRC]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Flow = tuple[bytes | None, bytes | None, int]  # (client_first, server_payload, port)
BUDGET_S = 0.6
ROUNDS = 3
REFERENCE_REV = "0d7889f"  # before the matcher index, the request index and the memo
WORKLOADS = ("short", "varied", "16KiB")
SHORT_CLIENT, SHORT_SERVER = b"x" * 200, b"x" * 1200
HOSTS = [f"{name}{i}.example.{tld}" for name in ("mail", "mx", "ftp", "srv") for i in range(40)
         for tld in ("org", "net")]  # fmt: skip


def short_flows(count: int) -> list[Flow]:
    return [(SHORT_CLIENT, SHORT_SERVER, 20000 + i % 1000) for i in range(count)]


def varied_flows(count: int, seed: int) -> list[Flow]:
    rnd = random.Random(seed)
    flows: list[Flow] = []
    for i in range(count):
        kind = i % 9
        n = rnd.randrange(10**6)
        if kind in (0, 1):  # HTTP, the client first
            body = b"<html><body>" + b"w" * rnd.randrange(10, 600) + b"</body></html>"
            server = rnd.choice([b"nginx/1.22.1", b"nginx/1.18.0 (Ubuntu)",
                                 b"Apache/2.4.57 (Debian)", b"lighttpd/1.4.69"])  # fmt: skip
            status = rnd.choice([b"200 OK", b"404 Not Found", b"301 Moved Permanently"])
            reply = (
                b"HTTP/1.1 %s\r\nServer: %s\r\nDate: %s, %02d Nov 2026 %02d:%02d:%02d GMT\r\n"
                b"Content-Type: text/html\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
                b"\r\n" % (status, server, rnd.choice([b"Mon", b"Tue", b"Sat"]),
                           rnd.randrange(1, 29), rnd.randrange(24), rnd.randrange(60),
                           rnd.randrange(60), len(body))
            ) + body  # fmt: skip
            flows.append((b"GET /%d HTTP/1.1\r\nHost: h%d\r\n\r\n" % (n, n), reply, 80))
        elif kind == 2:
            flows.append((None, b"SSH-2.0-OpenSSH_%d.%dp1 Debian-%d+deb12u%d\r\n"
                          % (rnd.randrange(7, 10), rnd.randrange(10), rnd.randrange(1, 9),
                             rnd.randrange(1, 9)), 22))  # fmt: skip
        elif kind == 3:
            host = rnd.choice(HOSTS).encode()
            flows.append((None, b"220 %s ESMTP Postfix (Debian/GNU)\r\n" % host, 25))
        elif kind == 4:
            host = rnd.choice(HOSTS).encode()
            flows.append((None, b"220 ProFTPD Server (%s) [::ffff:10.%d.%d.%d]\r\n"
                          % (host, n % 256, n // 256 % 256, n // 65536 % 256), 21))  # fmt: skip
        elif kind == 5:
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rnd.randbytes(32)
            reply = (b"\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03" + rnd.randbytes(32)
                     + b"\x20" + rnd.randbytes(32) + b"\x13\x01\x00\x00\x2e\x00\x2b\x00\x02\x03"
                     b"\x04")  # fmt: skip
            flows.append((hello + b"\x00" * 40, reply, 443))
        elif kind == 6:
            reply = rnd.choice([b"-NOAUTH Authentication required.\r\n",
                                b"+PONG\r\n", b"-ERR unknown command 'x%d'\r\n" % n])  # fmt: skip
            flows.append((b"*1\r\n$4\r\nPING\r\n", reply, 6379))
        elif kind == 7:
            reply = (
                b"E\x00\x00\x00\x5cSFATAL\x00C0A000\x00Munsupported frontend protocol %d\x00" % n
            )
            flows.append((b"\x00\x00\x00\x08\x04\xd2\x16\x2f", rnd.choice([b"N", reply]), 5432))
        else:
            flows.append((None, b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE "
                          b"IDLE] Dovecot (Debian) ready %d.\r\n" % n, 143))  # fmt: skip
    return flows


def large_flows(count: int, seed: int) -> list[Flow]:
    """16 KiB server payloads (the matcher's subject cap): runs of one byte, of CRLF,
    random bytes, a long HTTP response; as banners and as replies to a GET."""
    rnd = random.Random(seed)
    size = 16384
    flows: list[Flow] = []
    for i in range(count):
        payload = [
            b"\x00" * size,
            b" " * size,
            b"\r\n" * (size // 2),
            rnd.randbytes(size),
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n" + b"<p>hello world</p>\r\n" * 800,
        ][i % 5][: size - 4] + rnd.randbytes(4)  # new bytes every flow: no memo hits
        flows.append((b"GET / HTTP/1.0\r\n\r\n" if i % 2 else None, payload, 80))
    return flows


def worker(memo: bool) -> None:
    """Time this interpreter's netweave (whatever sys.path gives) and print JSON rates."""
    from netweave.services.engine_cache import load_matcher
    from netweave.services.passive import PassiveIdentifier

    params = inspect.signature(PassiveIdentifier).parameters
    if "memo_entries" in params:
        identifier = PassiveIdentifier(load_matcher(), memo_entries=4096 if memo else 0)
    else:
        identifier = PassiveIdentifier(load_matcher())
    identify = identifier.identify

    def identify_flow(flow: Flow) -> object:
        client_first, server_payload, port = flow
        match = None
        if client_first is not None:
            match = identify(None, client_first, server_payload, port, "tcp")
        if match is None:
            match = identify(server_payload, None, None, port, "tcp")
        return match

    def timed(chunks: Iterator[list[Flow]]) -> dict[str, float]:
        """Flows per CPU second over fresh chunks (built untimed) until the budget is spent."""
        done = found = 0
        spent = 0.0
        for flows in chunks:
            start = time.process_time()
            for flow in flows:
                found += identify_flow(flow) is not None
            spent += time.process_time() - start
            done += len(flows)
            if spent > BUDGET_S:
                break
        return {"flows_per_s": done / spent, "flows": done, "identified": found}

    check = short_flows(50) + varied_flows(900, seed=1) + large_flows(10, seed=1)
    answers = [identify_flow(flow) for flow in check]  # also warms: compiles what they reach
    digest = hashlib.sha256(repr(answers).encode()).hexdigest()[:16]
    out: dict[str, object] = {"module": inspect.getsourcefile(PassiveIdentifier), "answers": digest}
    out["short"] = timed(short_flows(2000) for _ in range(10_000))
    out["varied"] = timed(varied_flows(2000, seed) for seed in range(2, 10_000))
    out["16KiB"] = timed(large_flows(20, seed) for seed in range(2, 10_000))
    print(json.dumps(out))


def spawn(src: Path, memo: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    args = [sys.executable, __file__, "--worker", "--memo" if memo else "--no-memo"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=120)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--reference-rev", default=REFERENCE_REV)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memo", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.worker:
        worker(args.memo)
        return 0
    with tempfile.TemporaryDirectory(prefix="nw-passive-ref-") as tmp:
        reference = args.reference or exported(args.reference_rev, Path(tmp))
        return compare(reference)


def exported(rev: str, into: Path) -> Path:
    """The ``src`` tree of git revision ``rev`` of this repository, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def compare(reference_src: Path) -> int:
    """Time the reference tree and this one (memo on and off) and print the figures."""
    # The machine is shared: the three trees take turns, ROUNDS times; each keeps its
    # best round (the one least disturbed by other jobs).
    configs = {"reference": (reference_src, False), "memo on": (ROOT / "src", True),
               "memo off": (ROOT / "src", False)}  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for _ in range(ROUNDS):
        for name, (src, memo) in configs.items():
            result = spawn(src, memo)
            kept = best.setdefault(name, result)
            for workload in WORKLOADS:
                if result[workload]["flows_per_s"] > kept[workload]["flows_per_s"]:
                    kept[workload] = result[workload]
            if result["answers"] != kept["answers"]:
                kept["answers"] = "differs between rounds"
    reference = best.pop("reference")
    print(f"reference: {reference['module']}; best of {ROUNDS} rounds")
    same = all(run["answers"] == reference["answers"] for run in best.values())
    print(f"identical answers on {50 + 900 + 10} check flows (short, varied, 16KiB): {same}")
    for workload in WORKLOADS:
        ref = reference[workload]["flows_per_s"]
        told = f"{reference[workload]['identified']}/{reference[workload]['flows']} identified"
        print(f"{workload:>6}: reference        {ref:>10,.0f} flows/CPU s          ({told})")
        for mode, run in best.items():
            rate = run[workload]["flows_per_s"]
            print(f"{'':>8}this tree, {mode:<8} {rate:>10,.0f} flows/CPU s {rate / ref:6.1f}x  "
                  f"({run[workload]['identified']}/{run[workload]['flows']} "
                  "identified)")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
