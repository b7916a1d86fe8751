"""The fast paths of passive identification give exactly the answers of the plain ones.

* the matcher's index (prefix stems, first bytes, needles found in one Aho-Corasick pass)
  against running every regex of a probe and of its fallbacks in file order;
* probe_for_request's index against the plain scan over the probes it replaced;
* the match memo against no memo, and its bounds.
"""

from __future__ import annotations

import re
import warnings
from functools import cache
from re import _parser as sre_parse  # type: ignore[attr-defined]

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.services.first_bytes import ALL_BYTES, first_bytes
from netweave.services.match_memo import MatchMemo
from netweave.services.matcher import DEFAULT_SUBJECT_CAP, Matcher, branch_needles
from netweave.services.passive import PassiveIdentifier, probe_for_request
from netweave.services.pcre import UnsupportedPatternError, compile_pcre, translate_pcre
from netweave.services.probes_file import (
    DEFAULT_PROBES_PATH,
    ProbeDatabase,
    load_probes,
    parse_probes_text,
)
from netweave.services.records import MatchRule, Probe, Protocol, ServiceMatch, VersionTemplates
from test_services_prefilter import _generate, _UnsupportedError

pytestmark = pytest.mark.skipif(
    not DEFAULT_PROBES_PATH.exists(),
    reason=f"{DEFAULT_PROBES_PATH} missing: install Debian's nmap-common",
)

PROBES = ("NULL", "GetRequest", "HTTPOptions", "GenericLines", "TLSSessionReq")
REAL = [
    b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n",
    b"SSH-2.0-dropbear_2022.83\r\n",
    b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n",
    b"220 localhost ESMTP Exim 4.96 Mon, 23 Nov 2026 11:00:00 +0000\r\n",
    b"220 (vsFTPd 3.0.3)\r\n",
    b"220 ProFTPD Server (Debian) [::ffff:127.0.0.1]\r\n",
    b"+OK Dovecot (Debian) ready.\r\n",
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] Dovecot ready.\r\n",
    b"-ERR unknown command 'GET', with args beginning with: '/' \r\n",
    b"-NOAUTH Authentication required.\r\n",
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 11:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 615\r\nConnection: keep-alive\r\n\r\n<html>",
    b"HTTP/1.1 400 Bad Request\r\nDate: Mon, 23 Nov 2026 11:00:00 GMT\r\n"
    b"Server: Apache/2.4.57 (Debian)\r\nContent-Length: 301\r\n\r\n",
    b"HTTP/1.0 404 Not Found\r\nServer: lighttpd/1.4.69\r\n\r\n",
    b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="router"\r\n\r\n',
    b"J\x00\x00\x00\n8.0.35\x00\x08\x00\x00\x00abcdefgh\x00\xff\xff\xff\x02\x00",
    b"N",
    b"E\x00\x00\x00\x5cSFATAL\x00VFATAL\x00C0A000\x00Munsupported frontend protocol\x00",
    b"\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32),
    b"\x15\x03\x01\x00\x02\x02\x28",
    b"RFB 003.008\n",
    b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x18\xff\xfd\x1f",
    b"ERROR\r\nERROR\r\n",
    b"STAT pid 1234\r\nSTAT uptime 5\r\nSTAT version 1.6.18\r\n",
    b"x" * 1200,
    b"\x00" * 4000 + b"SSH-2.0-OpenSSH_9.2p1\r\n",
    b"\r\n" * 3000,
    b" " * 3000 + b"220 ready\r\n",
]


@cache
def _db() -> ProbeDatabase:
    return load_probes(DEFAULT_PROBES_PATH)


@cache
def _matcher() -> Matcher:
    return Matcher(_db())


@cache
def _regex(rule: MatchRule) -> re.Pattern[bytes] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return compile_pcre(rule.pattern, ignorecase=rule.ignorecase, dotall=rule.dotall)
        except (UnsupportedPatternError, re.error, OverflowError, RecursionError):
            return None


def _reference(db: ProbeDatabase, probe: Probe, response: bytes) -> tuple[str, int] | None:
    """(probe, line) nmap reports: every regex of the probe, then of each fallback, in
    file order, no prefilter at all."""
    subject = response[:DEFAULT_SUBJECT_CAP]
    if not subject:
        return None
    for candidate in db.fallbacks(probe):
        for rule in candidate.matches:
            regex = _regex(rule)
            if regex is not None and regex.search(subject) is not None:
                return candidate.name, rule.line
    return None


def _fast(matcher: Matcher, probe: Probe, response: bytes) -> tuple[str, int] | None:
    found = matcher.match(probe, response)
    return (found.probe, found.line) if found is not None else None


@cache
def _generated(name: str) -> tuple[bytes, ...]:
    """For each line of probe ``name``: a subject built from its regex that it matches."""
    probe = _db().probe("tcp", name)
    assert probe is not None
    subjects = []
    for rule in probe.matches:
        regex = _regex(rule)
        flags = (re.IGNORECASE if rule.ignorecase else 0) | (re.DOTALL if rule.dotall else 0)
        for rich in (False, True):
            try:
                tree = sre_parse.parse(translate_pcre(rule.pattern).encode("latin-1"), flags)
                subject = _generate(tree, {}, rich)
            except (_UnsupportedError, UnsupportedPatternError, re.error, KeyError, IndexError):
                continue
            if subject and regex is not None and regex.search(subject) is not None:
                subjects.append(subject)
    return tuple(subjects)


def _mutate(base: bytes, noise: bytes, where: int, how: int) -> bytes:
    at = where % (len(base) + 1)
    if how == 0:
        return base[:at] + noise + base[at:]  # inserted
    if how == 1:
        return base[:at] + noise + base[at + len(noise) :]  # overwritten
    if how == 2:
        return base[:at]  # cut
    return noise + base if how == 3 else base + noise


_MUTATIONS = dict(noise=st.binary(max_size=12), where=st.integers(0, 2000), how=st.integers(0, 4))
_SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("probe_name", PROBES)
def test_index_gives_nmaps_first_line_on_real_responses(probe_name: str) -> None:
    probe = _db().probe("tcp", probe_name)
    assert probe is not None
    for response in REAL:
        assert _fast(_matcher(), probe, response) == _reference(_db(), probe, response), response


@settings(max_examples=80, **_SLOW)
@given(base=st.sampled_from(REAL), probe_name=st.sampled_from(PROBES), **_MUTATIONS)
def test_index_gives_nmaps_first_line_on_mutated_responses(
    base: bytes, probe_name: str, noise: bytes, where: int, how: int
) -> None:
    probe = _db().probe("tcp", probe_name)
    assert probe is not None
    subject = _mutate(base, noise, where, how)
    assert _fast(_matcher(), probe, subject) == _reference(_db(), probe, subject)


@settings(max_examples=60, **_SLOW)
@given(st.binary(max_size=80), st.sampled_from(PROBES))
def test_index_gives_nmaps_first_line_on_random_bytes(subject: bytes, probe_name: str) -> None:
    probe = _db().probe("tcp", probe_name)
    assert probe is not None
    assert _fast(_matcher(), probe, subject) == _reference(_db(), probe, subject)


@settings(max_examples=120, **_SLOW)
@given(probe_name=st.sampled_from(("NULL", "GetRequest")), data=st.data(), **_MUTATIONS)
def test_index_gives_nmaps_first_line_on_subjects_built_from_match_lines(
    probe_name: str, data: st.DataObject, noise: bytes, where: int, how: int
) -> None:
    """Subjects some line of the probe matches (built from its regex), then mutated: the
    first matching line must still be the one running every regex finds."""
    generated = _generated(probe_name)
    assert len(generated) > 1000
    base = data.draw(st.sampled_from(generated))
    probe = _db().probe("tcp", probe_name)
    assert probe is not None
    for subject in (base, _mutate(base, noise, where, how)):
        assert _fast(_matcher(), probe, subject) == _reference(_db(), probe, subject)


TRICKY = r"""Probe TCP NULL q||
match optional-group m|^x(ab)?cd|
match repeated-group m|^y(?:ab)+cd|
match counted-group m|^z(ab){0,2}cd|
match lookahead m|^q(?!z)rs|
match lookbehind m|(?<=k)lm(n)op|
match alternation m=^w(x|y)zz=
match optional-atom m|^[0-9A-F]{0,3}K1|
match counted-atom m|^[0-9A-F]{2}K2|
match folded m|^HeLLo (World)|i
match two-needles m|^v[a-z]+ one [0-9]+ two\r\n|
match nested m|^n((?:ab)?c(d))ef|
match branches m=^\$Nick ([-.\w]+)|\$Lock=
match branches-folded m=^GrEeT|fArEwElL=i
match zero-run m|^Q\d\0\0\0\0\0\d|
match short-zero-run m|^R\d\0\0\0\d|
match space-run m|^S\d      \d|
match crlf-run m|U\d\r\n\r\n\r\n\d|
match lfcr-run m|V\d\n\r\n\r\n\d|
"""
TRICKY_SUBJECTS = [
    b"xcd", b"xabcd", b"yabcd", b"yababcd", b"ycd", b"zcd", b"zababcd", b"qrs", b"qzrs",
    b"-klmnop", b"lmnop", b"wxzz", b"wyzz", b"wzz", b"K1", b"AB0K1", b"ABK2", b"K2",
    b"hello world", b"HELLO WORLD!", b"vabc one 12 two\r\n", b"vabc one two\r\n", b"ncdef",
    b"nabcdef", b"nabdef", b"$Nick joe", b"xx$Lock", b"$Nic", b"greet", b"so FAREWELL",
    b"Q1\0\0\0\0\0" + b"2", b"Q1\0\0\0\0" + b"2", b"R1\0\0\0" + b"2", b"S1      2",
    b"R1\0\0\0" + b"2" + b"\0" * 5000,
    b"\r\n" * 3000 + b"U1\r\n\r\n\r\n2", b"U1\r\n\r\n2", b"V1\n\r\n\r\n2" + b"\n\r" * 3000,
]  # fmt: skip


def test_prefilter_groups_lookarounds_and_counts_keep_nmaps_answer() -> None:
    db = parse_probes_text(TRICKY)
    null = db.null_probe
    assert null is not None
    matcher = Matcher(db)
    got = {s: _fast(matcher, null, s) for s in TRICKY_SUBJECTS}
    assert got == {s: _reference(db, null, s) for s in TRICKY_SUBJECTS}
    services = {s: f.service for s in TRICKY_SUBJECTS if (f := matcher.match(null, s))}
    assert services[b"xcd"] == services[b"xabcd"] == "optional-group"
    assert services[b"zcd"] == "counted-group" and b"ycd" not in services
    assert services[b"qrs"] == "lookahead" and b"qzrs" not in services
    assert services[b"-klmnop"] == "lookbehind" and b"lmnop" not in services
    assert services[b"wxzz"] == services[b"wyzz"] == "alternation"
    assert services[b"K1"] == "optional-atom" and services[b"ABK2"] == "counted-atom"
    assert services[b"HELLO WORLD!"] == "folded"
    assert services[b"vabc one 12 two\r\n"] == "two-needles"
    assert services[b"ncdef"] == services[b"nabcdef"] == "nested"
    assert services[b"$Nick joe"] == services[b"xx$Lock"] == "branches"
    assert services[b"greet"] == services[b"so FAREWELL"] == "branches-folded"
    assert b"$Nic" not in services
    assert services[b"Q1\0\0\0\0\0" + b"2"] == "zero-run"
    assert b"Q1\0\0\0\0" + b"2" not in services
    assert services[b"R1\0\0\0" + b"2" + b"\0" * 5000] == "short-zero-run"
    assert services[b"S1      2"] == "space-run"
    assert services[b"\r\n" * 3000 + b"U1\r\n\r\n\r\n2"] == "crlf-run"
    assert b"U1\r\n\r\n2" not in services
    assert services[b"V1\n\r\n\r\n2" + b"\n\r" * 3000] == "lfcr-run"


def test_branch_needles_are_in_every_subject_a_branch_matches() -> None:
    """Over Debian's file: subjects built from each line's regex (first or last branch)."""
    checked = 0
    for probe in _db().probes:
        for rule in probe.matches:
            needles = branch_needles(rule)
            regex = _regex(rule)
            if not needles or regex is None:
                continue
            flags = (re.IGNORECASE if rule.ignorecase else 0) | (re.DOTALL if rule.dotall else 0)
            tree = sre_parse.parse(translate_pcre(rule.pattern).encode("latin-1"), flags)
            for rich in (False, True):
                try:
                    subject = _generate(tree, {}, rich)
                except (_UnsupportedError, KeyError, IndexError):
                    continue
                if regex.search(subject) is not None:
                    haystack = subject.lower() if rule.ignorecase else subject
                    assert any(n in haystack for n in needles), (rule.line, subject)
                    checked += 1
    assert checked >= 2


DIGITS, HEX = b"0123456789", b"0123456789ABCDEF"


@pytest.mark.parametrize(
    ("pattern", "ignorecase", "expected"),
    [
        (r"^(?:MSG|SEL|ID)x", False, b"IMS"),
        (r"^[0-9A-F]{12}$", False, HEX),
        (r"^[0-9A-F]{0,2}x", False, HEX + b"x"),  # the class may be absent: x may lead
        (r"^\d+:", False, DIGITS),
        (r"^(?=a)[ab]", False, b"ab"),  # what a lookahead asserts is not relied on
        (r"^hello", True, b"Hh"),
        (r"^[^a-y]", True, bytes(b for b in range(256) if not 0x61 <= b | 0x20 <= 0x79)),
        (r"^\bz", False, b"z"),
        (r"^x?", False, ALL_BYTES),  # may match empty: any subject
        (r"^ab|c", False, ALL_BYTES),  # the second branch is not anchored
        (r"^.x", False, ALL_BYTES),
        (r"x", False, ALL_BYTES),
    ],
)
def test_first_bytes_of_anchored_lines(pattern: str, ignorecase: bool, expected: bytes) -> None:
    rule = MatchRule(1, "s", pattern, ignorecase, False, False, VersionTemplates())
    assert first_bytes(rule) == bytes(sorted(expected))
    regex = compile_pcre(pattern, ignorecase=ignorecase, dotall=False)
    for head in set(range(256)) - set(first_bytes(rule)):  # tried with a few tails:
        for tail in (b"", b"x", b"SG", b"ello", b"z", b":", b"0x"):
            assert regex.search(bytes([head]) + tail) is None, (pattern, head, tail)


@settings(max_examples=150, **_SLOW)
@given(st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b"x", b"y", b"z", b"k", b"K1", b"AB",
                                 b"lm", b"nop", b"q", b"rs", b"w", b"zz", b"e", b"f", b"n",
                                 b"$Nick ", b"$Lock", b"GREET", b"farewell", b"\0", b"Q1",
                                 b"R2", b"S3", b"\0\0\0", b"   ", b"U4", b"V5", b"\r\n",
                                 b"\n\r"]),
                max_size=10))  # fmt: skip
def test_prefilter_on_tricky_lines_agrees_with_every_regex(parts: list[bytes]) -> None:
    db = parse_probes_text(TRICKY)
    null = db.null_probe
    assert null is not None
    subject = b"".join(parts)
    assert _fast(Matcher(db), null, subject) == _reference(db, null, subject)


# ---- probe_for_request ----


def _plain_probe_for_request(
    probes: tuple[Probe, ...], request: bytes, protocol: Protocol, port: int
) -> Probe | None:
    """The scan probe_for_request did before it had an index (kept here as the reference)."""
    candidates = [p for p in probes if p.protocol == protocol and not p.is_null]
    by_name = {p.name: p for p in candidates}
    for probe in candidates:
        if probe.payload == request:
            return probe
    if protocol == "tcp":
        if re.match(rb"^OPTIONS sip:\S+ SIP/2\.0", request):
            return by_name.get("SIPOptions")
        http = re.match(
            rb"^(GET|HEAD|POST|PUT|DELETE|PATCH|CONNECT|TRACE|OPTIONS) \S+ (HTTP|RTSP|SIP)/\d",
            request,
        )
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
    best_len = 3
    for probe in candidates:
        shared = _plain_shared_prefix(probe.payload, request)
        better = shared > best_len or (
            shared == best_len and best is not None and _plain_prefer(probe, best, port)
        )
        if shared >= 4 and better:
            best, best_len = probe, shared
    return best


def _plain_prefer(probe: Probe, other: Probe, port: int) -> bool:
    return (port not in probe.ports, probe.rarity) < (port not in other.ports, other.rarity)


def _plain_shared_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@cache
def _payloads() -> tuple[bytes, ...]:
    return tuple(p.payload for p in _db().probes if p.payload)


@cache
def _ports() -> tuple[int, ...]:
    return tuple(sorted({port for p in _db().probes for port in p.ports}))


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.sampled_from(["tcp", "udp"]),
    st.binary(max_size=12),
    st.integers(0, 4),
    st.integers(0, 400),
)
def test_request_index_picks_the_probe_the_plain_scan_picks(
    data: st.DataObject, protocol: Protocol, noise: bytes, how: int, where: int
) -> None:
    payload = data.draw(st.sampled_from(_payloads()))
    port = data.draw(st.one_of(st.sampled_from(_ports()), st.integers(1, 65535)))
    probes = _db().probes
    for request in (payload, _mutate(payload, noise, where, how), noise):
        want = _plain_probe_for_request(probes, request, protocol, port)
        assert probe_for_request(probes, request, protocol, port) is want, (request, port)


def test_request_index_agrees_on_cut_payloads_of_every_probe() -> None:
    """A request sharing 5 bytes with each probe in turn, on its ports and on others."""
    probes = _db().probes
    for probe in probes:
        if len(probe.payload) < 6 or probe.is_null:
            continue
        request = probe.payload[:5] + b"\xfe\xfd"
        for port in [*sorted(probe.ports)[:3], 1, 64999]:  # and ports no probe lists
            want = _plain_probe_for_request(probes, request, probe.protocol, port)
            assert probe_for_request(probes, request, probe.protocol, port) is want


TIES = """Probe TCP NULL q||
Probe TCP AlphaOne q|ABCD1|
rarity 5
ports 100
Probe TCP AlphaTwo q|ABCD2|
rarity 5
ports 100,200
Probe TCP AlphaThree q|ABCD3|
rarity 5
ports 200
Probe TCP AlphaRare q|ABCD4|
rarity 7
ports 300
Probe TCP Beta q|ABCE|
rarity 1
Probe UDP Gamma q|ABCD5|
rarity 1
"""


def test_request_ties_go_to_the_port_then_rarity_then_file_order() -> None:
    probes = parse_probes_text(TIES).probes
    chosen = {
        (request, port): (found.name if (found := probe_for_request(probes, request, "tcp", port))
                          else None)
        for request in (b"ABCD9", b"ABCEx", b"ABCE", b"ABCX", b"ABCD4")
        for port in (1, 100, 200, 300)
    }  # fmt: skip
    assert chosen[b"ABCD9", 1] == "AlphaOne"  # all rank alike: the first in the file
    assert chosen[b"ABCD9", 100] == "AlphaOne"
    assert chosen[b"ABCD9", 200] == "AlphaTwo"  # lists the port, and comes first
    assert chosen[b"ABCD9", 300] == "AlphaRare"  # the port beats the rarity
    assert {chosen[b"ABCEx", p] for p in (1, 100)} == {"Beta"}
    assert chosen[b"ABCE", 200] == "Beta" and chosen[b"ABCD4", 100] == "AlphaRare"  # exact
    assert chosen[b"ABCX", 1] is None  # 3 shared bytes are not enough


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"", b"AB", b"ABC", b"ABCD", b"ABCE", b"ABCD1", b"ABCD4", b"ABCD5"]),
    st.lists(st.sampled_from([b"A", b"D", b"E", b"1", b"4", b"5", b"\xfe"]), max_size=3),
    st.sampled_from([1, 100, 200, 300]),
    st.sampled_from(["tcp", "udp"]),
)
def test_request_index_agrees_with_the_plain_scan_on_ties(
    head: bytes, tail: list[bytes], port: int, protocol: Protocol
) -> None:
    probes = parse_probes_text(TIES).probes
    request = head + b"".join(tail)
    want = _plain_probe_for_request(probes, request, protocol, port)
    assert probe_for_request(probes, request, protocol, port) is want


# ---- the memo ----

_HIT = ServiceMatch("s", False, "NULL", 1)


def test_memo_keeps_the_most_recently_used_entries() -> None:
    memo = MatchMemo(max_entries=3, max_bytes=1 << 20)
    for i in range(3):
        memo.store(("tcp", "NULL", b"%d" % i), _HIT)
    assert memo.lookup(("tcp", "NULL", b"0")) == (True, _HIT)  # 0 is now the freshest
    memo.store(("tcp", "NULL", b"3"), None)
    assert len(memo) == 3
    assert memo.lookup(("tcp", "NULL", b"1")) == (False, None)  # the oldest went
    assert memo.lookup(("tcp", "NULL", b"0")) == (True, _HIT)
    assert memo.lookup(("tcp", "NULL", b"3")) == (True, None)  # a remembered miss


def test_memo_bounds_its_bytes() -> None:
    memo = MatchMemo(max_entries=1000, max_bytes=10_000)
    for i in range(100):
        memo.store(("tcp", "NULL", bytes([i % 256]) * 1000), None)
        assert memo.size_bytes <= 10_000
    assert 0 < len(memo) < 10
    memo.store(("tcp", "NULL", b"x" * 20_000), None)  # larger than the whole memo
    assert memo.lookup(("tcp", "NULL", b"x" * 20_000)) == (False, None)


@settings(max_examples=60, **_SLOW)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(REAL)),
            st.one_of(st.none(), st.sampled_from([b"GET / HTTP/1.0\r\n\r\n", b"stats\r\n",
                                                  b"\x16\x03\x01\x00\x40\x01", b"HELP\r\n"])),
            st.one_of(st.none(), st.sampled_from(REAL), st.binary(max_size=40)),
            st.sampled_from([22, 25, 80, 443, 6379, 11211, 31337]),
        ),
        max_size=12,
    )
)  # fmt: skip
def test_identify_with_memo_equals_identify_without(
    flows: list[tuple[bytes | None, bytes | None, bytes | None, int]],
) -> None:
    with_memo = PassiveIdentifier(_matcher(), memo_entries=4)
    without = PassiveIdentifier(_matcher(), memo_entries=0)
    assert without.memo is None
    for _ in range(2):  # the second round is served from the memo where it still holds
        for server_first, client_first, reply, port in flows:
            want = without.identify(server_first, client_first, reply, port, "tcp")
            assert with_memo.identify(server_first, client_first, reply, port, "tcp") == want


def test_memo_key_is_the_subject_the_matcher_reads() -> None:
    """Bytes past subject_cap cannot change a match: two replies equal up to it share one
    memo entry, and the answer is the one matching gives."""
    matcher = Matcher(_db(), subject_cap=64)
    identifier = PassiveIdentifier(matcher)
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n".ljust(64, b" ")
    first = identifier.identify(banner + b"one", None, None, 22, "tcp")
    second = identifier.identify(banner + b"two", None, None, 22, "tcp")
    null = _db().null_probe
    assert null is not None
    assert first == second == matcher.match(null, banner + b"three")
    assert identifier.memo is not None and len(identifier.memo) == 1
    assert (identifier.memo.hits, identifier.memo.misses) == (1, 1)
