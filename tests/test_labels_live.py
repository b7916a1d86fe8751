"""Live labels: the agent's p0f verdicts equal `p0f -r` on a capture of the same traffic, and
servers are named from their own replies without a probe sent."""

from __future__ import annotations

import ipaddress
import subprocess
import time
import xml.etree.ElementTree as ET

from netweave.agent import Agent, AgentConfig

from fingerprint_fixtures import p0f_entries
from testbed import TestBed


def _p0f_log(pcap, out) -> list[dict[str, str]]:
    subprocess.run(["p0f", "-r", str(pcap), "-f", "/etc/p0f/p0f.fp", "-o", str(out)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return p0f_entries(out)


def test_live_labels_agree_with_p0f_and_name_the_server(testbed: TestBed) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    testbed.start(b, "http", ["python3", "-m", "http.server", "8080", "--bind", "::"])
    testbed.wait_tcp(a, link.ipv4_b, 8080)
    pcap = testbed.tmp / "wire.pcap"
    dump = testbed.capture(b, link.dev_b, pcap, "tcp port 8080")
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


def _servers(bed: TestBed, ns: str, ip: str) -> dict[str, int]:
    """nginx, sshd and redis-server from Debian inside ``ns`` on ``ip``; name -> port."""
    root = bed.tmp
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("<html>bed</html>\n")
    temps = " ".join(f"{k}_temp_path {root}/{k};" for k in ("client_body", "proxy", "fastcgi",
                                                            "uwsgi", "scgi"))  # fmt: skip
    (root / "nginx.conf").write_text(
        f"worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        f"events {{ worker_connections 64; }}\nhttp {{ access_log off; {temps}\n"
        f"server {{ listen {ip}:80; root {root}/www; }} }}\n"
    )
    key = root / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "sshd_config").write_text(
        f"Port 22\nListenAddress {ip}\nHostKey {key}\nPidFile {root}/sshd.pid\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
    bed.start(ns, "nginx", ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
    bed.start(ns, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")])
    redis = ["redis-server", "--port", "6379", "--bind", ip, "--protected-mode", "no",
             "--dir", str(root), "--save", "", "--appendonly", "no"]  # fmt: skip
    bed.start(ns, "redis", redis)
    ports = {"http": 80, "ssh": 22, "redis": 6379}
    for port in ports.values():
        bed.wait_tcp(ns, ip, port)
    return ports


def _nmap(bed: TestBed, ns: str, ip: str, ports: list[int]) -> dict[int, dict[str, str]]:
    out = bed.run(ns, ["nmap", "-sV", "-Pn", "-n", "-p", ",".join(map(str, ports)), ip, "-oX",
                       "-"], timeout=300).stdout  # fmt: skip
    found = {}
    for port in ET.fromstring(out).iter("port"):
        service = port.find("service")
        assert service is not None
        found[int(port.get("portid", "0"))] = {k: service.get(k, "") for k in
                                               ("name", "product", "version")}  # fmt: skip
    return found


def test_passive_labels_name_debian_servers_as_nmap_does(testbed: TestBed) -> None:
    a, b = testbed.add_ns("client"), testbed.add_ns("server")
    link = testbed.link(a, b)
    ip = link.ipv4_b
    ports = _servers(testbed, b, ip)
    with Agent(AgentConfig(netns=b)) as agent:
        testbed.run(a, ["curl", "-s", "-o", "/dev/null", f"http://{ip}/"])
        testbed.run(a, ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", f"nobody@{ip}", "true"],
                    check=False)  # fmt: skip
        testbed.run(a, ["redis-cli", "-h", ip, "INFO"])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            agent.step(0.2)
        view = agent.graph.snapshot()
    server = next(n for n in view.nodes if n.ip == ip)
    passive = {
        s.port: {a.key: a.value for a in s.annotations} for s in server.services
    }  # no probe was sent: these came from the flows alone
    reference = _nmap(testbed, a, ip, sorted(ports.values()))
    for name, port in ports.items():
        labels, nmap = passive[port], reference[port]
        assert labels["method"] == "passive"
        assert labels["service"] == nmap["name"] == name
        assert labels.get("product", "") == nmap["product"]
        assert labels.get("version", "") == nmap["version"]
