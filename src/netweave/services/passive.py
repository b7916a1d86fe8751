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
from bisect import bisect_left
from functools import cache
from pathlib import Path
from typing import Final

from netweave.services.engine_cache import load_matcher
from netweave.services.match_memo import DEFAULT_MEMO_BYTES, DEFAULT_MEMO_ENTRIES, MatchMemo
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
    """Matches observed payloads against one probes database; keeps the regex cache.

    Match results are memoised (see :mod:`netweave.services.match_memo`): at most
    ``memo_entries`` of them and ``memo_bytes`` of subjects; 0 entries turns it off.
    """

    def __init__(
        self,
        matcher: Matcher,
        memo_entries: int = DEFAULT_MEMO_ENTRIES,
        memo_bytes: int = DEFAULT_MEMO_BYTES,
    ) -> None:
        self.matcher = matcher
        self.db = matcher.db
        self.memo = MatchMemo(memo_entries, memo_bytes) if memo_entries > 0 else None

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
            found = self._match(null, server_first)
            if found is not None and not found.soft:
                return found
            soft = found
        if client_first and server_reply:
            probe = probe_for_request(self.db.probes, client_first, protocol, port)
            if probe is not None:
                found = self._match(probe, server_reply)
                if found is not None and (not found.soft or soft is None):
                    return found
        return soft

    def _match(self, probe: Probe, response: bytes) -> ServiceMatch | None:
        """``matcher.match(probe, response)``, each probe's own lines memoised: a reply
        that matched nothing for the client's probe is matched against the NULL probe
        (a fallback) once, not again when it is then taken for a banner."""
        memo = self.memo
        if memo is None:
            return self.matcher.match(probe, response)
        # the matcher reads no further than subject_cap: the rest cannot change the answer
        subject = response[: self.matcher.subject_cap]
        if not subject:
            return None
        for candidate in self.db.fallbacks(probe):
            key = (candidate.protocol, candidate.name, subject)
            known, found = memo.lookup(key)
            if not known:
                found = self.matcher.match_lines(candidate, subject)
                memo.store(key, found)
            if found is not None:
                return found
        return None


def probe_for_request(
    probes: tuple[Probe, ...], request: bytes, protocol: Protocol, port: int
) -> Probe | None:
    """The probe whose request ``request`` (a client's first payload) corresponds to."""
    index = _request_index(probes, protocol)
    exact = index.by_payload.get(request)
    if exact is not None:
        return exact
    by_name = index.by_name
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
    return index.closest(request, port)


class _RequestIndex:
    """The probes of one protocol (NULL aside) arranged for :func:`probe_for_request`.

    ``by_payload``: the first probe (file order) sending each payload; ``by_name``: the
    probes by name. The payloads sorted, so the probes sharing the longest prefix with a
    request are found by bisection next to where the request would sort.
    """

    __slots__ = ("_heads", "_payloads", "_ranked", "by_name", "by_payload")

    def __init__(self, probes: tuple[Probe, ...], protocol: Protocol) -> None:
        candidates = [p for p in probes if p.protocol == protocol and not p.is_null]
        self.by_name = {p.name: p for p in candidates}
        self.by_payload: dict[bytes, Probe] = {}
        for probe in candidates:
            self.by_payload.setdefault(probe.payload, probe)
        order = sorted(range(len(candidates)), key=lambda i: candidates[i].payload)
        self._payloads = [candidates[i].payload for i in order]
        self._ranked = [(i, candidates[i]) for i in order]  # (file order, probe)
        self._heads = frozenset(p[:_MIN_SHARED_PREFIX] for p in self._payloads)

    def closest(self, request: bytes, port: int) -> Probe | None:
        """The probe sharing the longest prefix (at least _MIN_SHARED_PREFIX bytes) with
        ``request``; among equals the first in file order of those :func:`_prefer` ranks
        best (a probe listing ``port``, then the lower rarity)."""
        if request[:_MIN_SHARED_PREFIX] not in self._heads:
            return None  # shares fewer than _MIN_SHARED_PREFIX bytes with every payload
        payloads = self._payloads
        at = bisect_left(payloads, request)
        longest = 0
        for neighbour in payloads[max(at - 1, 0) : at + 1]:
            longest = max(longest, _shared_prefix(neighbour, request))
        if longest < _MIN_SHARED_PREFIX:
            return None
        stem = request[:longest]
        tied: list[tuple[int, Probe]] = []
        for position in range(bisect_left(payloads, stem), len(payloads)):
            if not payloads[position].startswith(stem):
                break
            tied.append(self._ranked[position])
        tied.sort(key=lambda ranked: ranked[0])
        best = tied[0][1]
        for _, probe in tied[1:]:
            if _prefer(probe, best, port):
                best = probe
        return best


_REQUEST_INDEXES: dict[tuple[int, Protocol], tuple[tuple[Probe, ...], _RequestIndex]] = {}
_MAX_REQUEST_INDEXES: Final = 16


def _request_index(probes: tuple[Probe, ...], protocol: Protocol) -> _RequestIndex:
    """The index of ``probes`` for ``protocol``, built once per tuple (kept alive with it,
    so its id cannot be reused while cached)."""
    key = (id(probes), protocol)
    cached = _REQUEST_INDEXES.get(key)
    if cached is not None and cached[0] is probes:
        return cached[1]
    if len(_REQUEST_INDEXES) >= _MAX_REQUEST_INDEXES:
        _REQUEST_INDEXES.clear()
    index = _RequestIndex(probes, protocol)
    _REQUEST_INDEXES[key] = (probes, index)
    return index


def _prefer(probe: Probe, other: Probe, port: int) -> bool:
    """Tie-break: a probe listing the port, then the lower rarity (file order otherwise)."""
    mine = (port not in probe.ports, probe.rarity)
    theirs = (port not in other.ports, other.rarity)
    return mine < theirs


def _shared_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` have in common (bisection on slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


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
