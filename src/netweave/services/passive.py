"""Passive service identification: label a server from traffic, sending nothing (sans-IO).

Two cases, as the issue describes them:

* the server spoke first (its first payload, from the endpoint that sent the SYN-ACK):
  that banner is matched against the NULL probe;
* the client spoke first: the probe whose request the client's bytes correspond to is
  chosen (an HTTP request -> ``GetRequest``, ``OPTIONS`` -> ``HTTPOptions``, a TLS
  ClientHello -> ``TLSSessionReq``, the exact payload of any probe -> that probe, else the
  probe sharing the longest prefix) and the server's reply is matched against it and its
  fallbacks.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Final

from netweave.services.engine_cache import load_matcher
from netweave.services.matcher import Matcher
from netweave.services.probes_file import DEFAULT_PROBES_PATH
from netweave.services.records import Probe, Protocol, ServiceMatch

__all__ = ["PassiveIdentifier", "default_identifier", "identify_passive", "probe_for_request"]

_HTTP_REQUEST: Final = re.compile(
    rb"^(GET|HEAD|POST|PUT|DELETE|PATCH|CONNECT|TRACE|OPTIONS) \S+ (HTTP|RTSP|SIP)/\d"
)
_SIP_OPTIONS: Final = re.compile(rb"^OPTIONS sip:\S+ SIP/2\.0")
_MIN_SHARED_PREFIX: Final = 4


class PassiveIdentifier:
    """Matches observed payloads against one probes database; keeps the regex cache."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.db = matcher.db

    def identify(
        self,
        server_first: bytes | None,
        client_first: bytes | None,
        server_reply: bytes | None,
        port: int,
        proto: str,
    ) -> ServiceMatch | None:
        """The service a server runs, from what it sent; None if nothing matched.

        ``server_first``: the server's first payload when it spoke first (a banner).
        ``client_first`` and ``server_reply``: the client's first payload and the server's
        answer when the client spoke first. A hard match wins over a soft one; the banner
        is tried first. Never raises on any bytes.
        """
        protocol: Protocol = "udp" if proto.lower() == "udp" else "tcp"
        soft: ServiceMatch | None = None
        null = self.db.null_probe
        if server_first and protocol == "tcp" and null is not None:
            found = self.matcher.match(null, server_first)
            if found is not None and not found.soft:
                return found
            soft = found
        if client_first and server_reply:
            probe = probe_for_request(self.db.probes, client_first, protocol, port)
            if probe is not None:
                found = self.matcher.match(probe, server_reply)
                if found is not None and (not found.soft or soft is None):
                    return found
        return soft


def probe_for_request(
    probes: tuple[Probe, ...], request: bytes, protocol: Protocol, port: int
) -> Probe | None:
    """The probe whose request ``request`` (a client's first payload) corresponds to."""
    candidates = [p for p in probes if p.protocol == protocol and not p.is_null]
    by_name = {p.name: p for p in candidates}
    for probe in candidates:
        if probe.payload == request:
            return probe
    if protocol == "tcp":
        if _SIP_OPTIONS.match(request):
            return by_name.get("SIPOptions")
        http = _HTTP_REQUEST.match(request)
        if http is not None:
            method, family = http.group(1), http.group(2)
            if family == b"RTSP":
                return by_name.get("RTSPRequest")
            if method == b"OPTIONS":
                return by_name.get("HTTPOptions")
            return by_name.get("GetRequest")
        if len(request) > 5 and request[0] == 0x16 and request[1] == 0x03 and request[5] == 0x01:
            return by_name.get("TLSSessionReq") or by_name.get("SSLSessionReq")
    best: Probe | None = None
    best_len = _MIN_SHARED_PREFIX - 1
    for probe in candidates:
        shared = _shared_prefix(probe.payload, request)
        better = shared > best_len or (
            shared == best_len and best is not None and _prefer(probe, best, port)
        )
        if shared >= _MIN_SHARED_PREFIX and better:
            best, best_len = probe, shared
    return best


def _prefer(probe: Probe, other: Probe, port: int) -> bool:
    """Tie-break: a probe listing the port, then the lower rarity (file order otherwise)."""
    mine = (port not in probe.ports, probe.rarity)
    theirs = (port not in other.ports, other.rarity)
    return mine < theirs


def _shared_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@cache
def default_identifier(path: str = str(DEFAULT_PROBES_PATH)) -> PassiveIdentifier:
    """A shared identifier over the probes file at ``path`` (loaded once per path)."""
    return PassiveIdentifier(load_matcher(Path(path)))


def identify_passive(
    server_first: bytes | None,
    client_first: bytes | None,
    server_reply: bytes | None,
    port: int,
    proto: str,
    *,
    identifier: PassiveIdentifier | None = None,
) -> ServiceMatch | None:
    """Label a server port from observed payloads (see :meth:`PassiveIdentifier.identify`).

    Uses ``identifier`` or the shared one over Debian's nmap-service-probes.
    """
    engine = identifier if identifier is not None else default_identifier()
    return engine.identify(server_first, client_first, server_reply, port, proto)
