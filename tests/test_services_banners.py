"""The matcher against nmap itself: banner servers on loopback, every field compared.

Each banner is served by a real TCP server (its own port); nmap -sV and `netweave probe`
read it with the NULL probe. The banners exercise $SUBST, an unset optional group (field
dropped), classes like [^]] and [^[], NULs in patterns, CPE escaping and one-CPE-per-part.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from netweave.services.matcher import Matcher
from netweave.services.passive import PassiveIdentifier
from netweave.services.probes_file import DEFAULT_PROBES_PATH, load_probes

sys.path.insert(0, str(Path(__file__).parent))
from services_beds import banner_servers

NETWEAVE = str(Path(sys.executable).with_name("netweave"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap (the reference) missing"),
    pytest.mark.skipif(os.geteuid() != 0, reason="nmap -sS needs root"),
    pytest.mark.skipif(not DEFAULT_PROBES_PATH.exists(), reason="nmap-service-probes missing"),
]

MYSQL = (
    b"\x4a\x00\x00\x00\x0a5.7.42-log\x00\x0b\x00\x00\x00abcdefgh\x00\xff\xf7\x08\x02\x00\xff\x81"
    b"\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00mysql_native_password\x00"
)
BANNERS = [
    b"SSH-2.0-OpenSSH_8.4p1 Debian-5+deb11u3\r\n",
    b"SSH-2.0-dropbear_2020.81\r\n",
    b"SSH-2.0-VShell_4_0_5 VShell\r\n",
    b"220 (vsFTPd 3.0.3)\r\n",
    b"220 ProFTPD 1.3.5e Server (Debian) [::ffff:127.0.0.1]\r\n",
    b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n",
    b"RFB 003.008\n",
    MYSQL,
    b"220 OpenFTPD server ready\r\n",
    b'<LSX>\n\t<Event sender="EALS">\n\t\t<Challenge version="9,5,1" '
    b'key="0123456789abcdef0123456789abcdef" />\n\t</Event>\n</LSX>\n\x00',
    b"Microsoft Windows XP [Version 5.1.2600]\r\n(C) Copyright 1985-2001 Microsoft Corp.\r\n"
    b"\r\nC:\\WINDOWS\\system32>",
    b"220 localhost ESMTP Exim 4.96 Mon, 23 Nov 2026 11:00:00 +0000\r\n",
    b"220 mail.example.com ESMTP Sendmail 8.15.2/8.15.2/Debian-22; Mon, 23 Nov 2026 11:00:00 "
    b"GMT; (No UCE/UBE) logging access from: localhost(OK)-localhost [127.0.0.1]\r\n",
]
FIELDS = ("service", "product", "version", "info", "hostname", "ostype", "devicetype", "cpe")


@pytest.fixture(scope="module")
def ports() -> Iterator[list[int]]:
    with banner_servers(BANNERS) as started:
        yield started


def _nmap(ports: list[int]) -> dict[int, dict[str, object]]:
    out = subprocess.run(
        ["nmap", "-sV", "-Pn", "-n", "-p", ",".join(map(str, ports)), "127.0.0.1", "-oX", "-"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    found: dict[int, dict[str, object]] = {}
    for port in ET.fromstring(out.stdout).iter("port"):
        service = port.find("service")
        assert service is not None
        found[int(port.get("portid", "0"))] = {
            "service": service.get("name"),
            "product": service.get("product"),
            "version": service.get("version"),
            "info": service.get("extrainfo"),
            "hostname": service.get("hostname"),
            "ostype": service.get("ostype"),
            "devicetype": service.get("devicetype"),
            "cpe": [c.text for c in service.iter("cpe")],
        }
    return found


def test_every_field_equals_nmaps(ports: list[int]) -> None:
    theirs = _nmap(ports)
    out = subprocess.run(
        [NETWEAVE, "probe", "--json", *(f"127.0.0.1:{p}" for p in ports)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    ours = {r["port"]: r for r in map(json.loads, out.stdout.splitlines())}
    identifier = PassiveIdentifier(Matcher(load_probes(DEFAULT_PROBES_PATH)))
    for port, banner in zip(ports, BANNERS, strict=True):
        expected = theirs[port]
        assert {k: ours[port][k] for k in FIELDS} == expected, banner
        passive = identifier.identify(banner, None, None, port, "tcp")
        assert passive is not None
        assert (passive.service, passive.product, passive.version, passive.info) == (
            expected["service"], expected["product"], expected["version"], expected["info"]
        ), banner  # fmt: skip


def test_port_that_closes_at_once_is_tcpwrapped_like_nmap() -> None:
    with banner_servers([b""], linger_s=0.0) as (port,):
        theirs = _nmap([port])[port]
        out = subprocess.run(
            [NETWEAVE, "probe", "--json", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    ours = json.loads(out.stdout)
    assert theirs["service"] == ours["service"] == "tcpwrapped"


def test_table_for_people(ports: list[int]) -> None:
    out = subprocess.run(
        [NETWEAVE, "probe", f"127.0.0.1:{ports[0]}"],
        capture_output=True, text=True, timeout=120, check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "OpenSSH" in out.stdout and "8.4p1" in out.stdout and "probes sent" in out.stdout
