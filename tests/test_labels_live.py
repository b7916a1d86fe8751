"""Live labels: the agent's p0f verdicts equal `p0f -r` on a capture of the same traffic, and
servers are named from their own replies without a probe sent."""

from __future__ import annotations

import ipaddress
import subprocess
import time

from netweave.agent import Agent, AgentConfig

from testbed import TestBed


def _p0f_log(pcap, out) -> list[dict[str, str]]:
    subprocess.run(["p0f", "-r", str(pcap), "-f", "/etc/p0f/p0f.fp", "-o", str(out)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    entries = []
    for line in out.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split("] ", 1)[1].split("|"))
        entries.append(fields)
    return entries


def test_live_labels_agree_with_p0f_and_name_the_server(testbed: TestBed) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    testbed.start(b, "http", ["python3", "-m", "http.server", "8080", "--bind", "::"])
    testbed.wait_tcp(a, link.ipv4_b, 8080)
    pcap = testbed.tmp / "wire.pcap"
    dump = testbed.start(b, "tcpdump", ["tcpdump", "--immediate-mode", "-Z", "root", "-U", "-i",
                                        link.dev_b, "-w", str(pcap), "tcp port 8080"])  # fmt: skip
    time.sleep(1.0)
    with Agent(AgentConfig(netns=b)) as agent:
        for url in (f"http://{link.ipv4_b}:8080/", f"http://[{link.ipv6_b}]:8080/"):
            testbed.run(a, ["curl", "-s", "-o", "/dev/null", url])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            agent.step(0.2)
        view = agent.graph.snapshot()
    time.sleep(0.3)
    testbed.stop(dump)
    nodes = {n.ip: n for n in view.nodes}
    notes = {ip: {(x.key, x.source): x.value for x in n.annotations} for ip, n in nodes.items()}

    log = _p0f_log(pcap, testbed.tmp / "p0f.log")
    checked = 0
    for entry in log:
        if entry["mod"] not in ("syn", "syn+ack"):
            continue
        ip = ipaddress.ip_address(
            entry["cli" if entry["mod"] == "syn" else "srv"].rsplit("/", 1)[0]
        )
        mine = next(v for k, v in notes.items() if ipaddress.ip_address(k) == ip)
        assert mine[("p0f_signature", "p0f")] == entry["raw_sig"]
        os_label = mine.get(("os", "p0f"))
        if entry["os"] == "???":
            assert os_label is None
        else:
            assert os_label == entry["os"]
        checked += 1
    assert checked == 4  # SYN and SYN-ACK, IPv4 and IPv6
    assert any(e.get("os", "???") != "???" for e in log), "p0f named no OS: nothing compared"

    assert ("ja4t", "ja4t") in notes[link.ipv4_a] and ("ja4ts", "ja4ts") in notes[link.ipv4_b]
    server = nodes[link.ipv4_b]
    http = next(s for s in server.services if (s.port, s.protocol) == (8080, "tcp"))
    labels = {x.key: x.value for x in http.annotations}
    assert labels["service"] == "http" and labels["method"] == "passive"
    assert labels["product"] == "SimpleHTTPServer"
