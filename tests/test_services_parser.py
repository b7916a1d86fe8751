"""The nmap-service-probes parser, unescaping, templates and PCRE translation."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.services.escapes import UnescapeError, cstring_unescape
from netweave.services.pcre import UnsupportedPatternError, compile_pcre, translate_pcre
from netweave.services.probes_file import (
    DEFAULT_PROBES_PATH,
    ProbesFileError,
    load_probes,
    parse_match_line,
    parse_probes_text,
)
from netweave.services.records import VersionTemplates
from netweave.services.templates import fill_template, fill_templates, transform_cpe

PROBES = DEFAULT_PROBES_PATH
needs_probes = pytest.mark.skipif(
    not PROBES.exists(), reason=f"{PROBES} missing: install Debian's nmap-common"
)


def _grep_count(regex: str) -> int:
    """Count lines with grep, independently of the parser."""
    assert shutil.which("grep"), "grep is needed to count lines independently"
    out = subprocess.run(
        ["grep", "-c", "-E", regex, str(PROBES)], capture_output=True, text=True, check=False
    )
    return int(out.stdout.strip() or 0)


@needs_probes
def test_every_line_of_debians_file_is_parsed() -> None:
    db = load_probes(PROBES)
    assert db.issues == ()
    assert len(db.probes) == _grep_count("^Probe ")
    assert db.match_count == _grep_count("^match ")
    assert db.softmatch_count == _grep_count("^softmatch ")
    assert sum(1 for p in db.probes if p.fallback_names) == _grep_count("^fallback ")
    assert sum(1 for p in db.probes if p.sslports) == _grep_count("^sslports ")
    null = db.null_probe
    assert null is not None and null.payload == b"" and null.totalwait_ms == 6000
    assert null.tcpwrapped_ms == 3000
    assert db.is_excluded(9100, "tcp") and db.is_excluded(9107, "tcp")
    assert not db.is_excluded(9100, "udp")


@needs_probes
def test_probe_directives_and_fallbacks_as_nmap_compiles_them() -> None:
    db = load_probes(PROBES)
    get = db.probe("tcp", "GetRequest")
    assert get is not None
    assert get.payload == b"GET / HTTP/1.0\r\n\r\n"
    assert get.rarity == 1 and 80 in get.ports and 443 in get.sslports
    options = db.probe("tcp", "HTTPOptions")
    assert options is not None
    assert [p.name for p in db.fallbacks(options)] == ["HTTPOptions", "GetRequest", "NULL"]
    # TCP probe falling back to a UDP one (nmap looks the name up in the other protocol)
    dns = db.probe("tcp", "DNSVersionBindReqTCP")
    assert dns is not None
    assert [(p.protocol, p.name) for p in db.fallbacks(dns)] == [
        ("tcp", "DNSVersionBindReqTCP"),
        ("udp", "DNSVersionBindReq"),
        ("tcp", "NULL"),
    ]
    udp = db.probe("udp", "DNSStatusRequest")
    assert udp is not None and [p.name for p in db.fallbacks(udp)] == ["DNSStatusRequest"]
    assert db.probe("tcp", "SSLSessionReq") is not None
    assert all(1 <= p.rarity <= 9 for p in db.probes)


def test_damaged_lines_are_reported_with_line_numbers_and_skipped() -> None:
    text = "\n".join(
        [
            "# comment",
            "Exclude T:9100-9102",
            "Probe TCP NULL q||",
            "totalwaitms 6000",
            "match ssh m|^SSH-([\\d.]+)-| p/OpenSSH/ v/$1/",
            "match broken m|^unterminated",  # line 6
            "match weird m|^x|z",  # line 7: illegal regexp option
            "rarity 12",  # line 8
            "bogus directive",  # line 9
            "Probe TCP Bad q|\\xZZ|",  # line 10: bad escape
            "match orphan m|^a|",  # line 11: belongs to the damaged probe
            "Probe TCP GetRequest q|GET / HTTP/1.0\\r\\n\\r\\n|",
            "ports 80,8000-8002",
            "fallback Nope",  # unknown fallback: reported at the probe line
            "match http m|^HTTP/1\\.[01] \\d\\d\\d| p/generic/",
        ]
    )
    db = parse_probes_text(text, source="test")
    lines = [issue.line for issue in db.issues]
    assert lines == [6, 7, 8, 9, 10, 11, 12]
    assert "no closing" in db.issues[0].message
    assert "illegal regexp option" in db.issues[1].message
    assert "rarity" in db.issues[2].message
    assert "unknown directive" in db.issues[3].message
    assert "escaping" in db.issues[4].message
    assert "damaged Probe on line 10" in db.issues[5].message
    assert "unknown fallback" in db.issues[6].message
    assert [p.name for p in db.probes] == ["NULL", "GetRequest"]
    get = db.probe("tcp", "GetRequest")
    assert get is not None and get.ports == frozenset({80, 8000, 8001, 8002})
    assert db.excluded_tcp == frozenset({9100, 9101, 9102})
    assert "line 6" in str(db.issues[0])


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProbesFileError, match="cannot read nmap service probes file"):
        load_probes(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ProbesFileError, match="no Probe directive"):
        load_probes(empty)


def test_match_line_any_delimiter_flags_and_templates() -> None:
    rule = parse_match_line(
        "match ftp m=^220 (\\S+) FTP=is p|Pure-FTPd| v,$1, i/a b/ h/$2/ o/Linux/ d/router/ "
        "cpe:/a:pureftpd:pure-ftpd:$1/ cpe:=o:linux:linux_kernel=a",
        42,
    )
    assert rule.service == "ftp" and rule.line == 42 and not rule.soft
    assert rule.pattern == "^220 (\\S+) FTP" and rule.ignorecase and rule.dotall
    assert rule.templates == VersionTemplates(
        product="Pure-FTPd",
        version="$1",
        info="a b",
        hostname="$2",
        ostype="Linux",
        devicetype="router",
        cpe=("cpe:/a:pureftpd:pure-ftpd:$1", "cpe:/o:linux:linux_kernel"),
    )
    soft = parse_match_line("softmatch smtp m|^220 .*smtp|i", 1)
    assert soft.soft and soft.ignorecase and not soft.dotall
    with pytest.raises(ValueError, match="unknown template"):
        parse_match_line("match x m|a| q/1/", 1)
    with pytest.raises(ValueError, match="must begin with 'm'"):
        parse_match_line("match x n|a|", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET / HTTP/1.0\\r\\n\\r\\n", b"GET / HTTP/1.0\r\n\r\n"),
        ("\\0\\x1E\\x06", b"\x00\x1e\x06"),
        ("\\a\\b\\f\\n\\r\\t\\v\\\\", b"\x07\x08\x0c\n\r\t\x0b\\"),
        ("\\016", b"\x0016"),  # nmap has no octal: \0 then '1' '6'
        ("a\\|b\\.", b"a|b."),
        ("\xe9", b"\xe9"),
    ],
)
def test_cstring_unescape_like_nmap(text: str, expected: bytes) -> None:
    assert cstring_unescape(text) == expected


@pytest.mark.parametrize("text", ["\\x1", "\\xZZ", "\\q", "\\1", "abc\\"])
def test_cstring_unescape_refuses_what_nmap_refuses(text: str) -> None:
    with pytest.raises(UnescapeError):
        cstring_unescape(text)


def _match(pattern: bytes, subject: bytes) -> re.Match[bytes]:
    found = re.search(pattern, subject)
    assert found is not None
    return found


def test_template_substitutions() -> None:
    m = _match(rb"^v(\d+)_(\d+)_(\d+) (.*)\r\n(\d\d)?", b"v1_2_3 W\x00O\x00R\x00K\r\n")
    assert fill_template("$1.$2.$3", m) == b"1.2.3"
    assert fill_template("$P(4)", m) == b"WORK"
    assert fill_template('$SUBST(4,"\\0","-")', m) == b"W-O-R-K"
    assert fill_template('v$SUBST(1,"1","one")', m) == b"vone"
    assert fill_template("$5", m) is None  # unset group: the field is dropped
    assert fill_template("$9", m) is None  # no such group
    assert fill_template("$X(1)", m) is None  # unknown command
    assert fill_template("ends with comma, ", m) == b"ends with comma"
    m2 = _match(rb"^(..)(...)", b"\x01\x02\x00\x01\x00")
    assert fill_template('$I(1,">")', m2) == b"258"
    assert fill_template('$I(2,"<")', m2) == b"256"
    assert fill_template('$I(1,"x")', m2) is None


def test_cpe_transform_and_one_cpe_per_part() -> None:
    assert transform_cpe(b"Foo Bar:1/2") == b"foo_bar%3A1%2F2"
    rule = parse_match_line(
        "match ssh m|^SSH-([\\d.]+)-OpenSSH_(\\S+) (\\w+)| p/OpenSSH/ v/$2/ i/protocol $1/ "
        "cpe:/a:openbsd:openssh:$2/ cpe:/o:debian:debian_linux/ cpe:/o:linux:$3/a",
        1,
    )
    m = _match(rule.pattern.encode(), b"SSH-2.0-OpenSSH_9.2p1 Linux Kernel")
    product, version, info, _h, _o, _d, cpes = fill_templates(rule.templates, m)
    assert (product, version, info) == ("OpenSSH", "9.2p1", "protocol 2.0")
    # nmap keeps one CPE per part (a, h, o): the last o wins; substitutions lower-cased
    assert cpes == ("cpe:/a:openbsd:openssh:9.2p1", "cpe:/o:linux:linux")


def test_field_longer_than_nmaps_buffer_is_dropped() -> None:
    m = _match(rb"^(.*)$", b"x" * 100)
    filled = fill_templates(VersionTemplates(product="$1", info="$1"), m)
    assert filled[0] is None  # product buffer is 80 bytes
    assert filled[2] == "x" * 100  # info buffer is 256


@pytest.mark.parametrize(
    ("pcre", "subject", "matches"),
    [
        (r"^a\Z", b"a\n", True),  # PCRE \Z allows a final newline
        (r"^a\z", b"a\n", False),
        (r"^a\h+b", b"a \tb", True),
        (r"^x{,2}", b"x{,2}", True),  # {,n} is a literal in PCRE
        (r"^[[:digit:]]+$", b"123", True),
        (r"^(?<ver>\d+)", b"42", True),
        (r"^\x{41}\x4", b"A\x04", True),
        (r"^a(?i)b|c", b"aB", True),
        (r"^a(?i)b|C", b"c", True),  # the flag reaches the alternative after |
        (r"^\Qa.b\E$", b"a.b", True),
        (r"^\Qa.b\E$", b"axb", False),
        (r"^[^]]+$", b"abc", True),
        (r"^\i", b"i", True),  # PCRE1: unknown letter escape is the letter
    ],
)
def test_pcre_translation(pcre: str, subject: bytes, matches: bool) -> None:
    regex = compile_pcre(pcre, ignorecase=False, dotall=False)
    assert (regex.search(subject) is not None) is matches, translate_pcre(pcre)


@pytest.mark.parametrize("pcre", [r"(?R)", r"a\Gb", r"a\Kb", r"\p{L}", r"(?|a)"])
def test_pcre_constructs_python_lacks_are_reported(pcre: str) -> None:
    with pytest.raises(UnsupportedPatternError):
        translate_pcre(pcre)


_LINE_HEADS = st.sampled_from(
    ["match ", "softmatch ", "Probe TCP ", "Probe UDP ", "ports ", "sslports ", "rarity ",
     "fallback ", "totalwaitms ", "tcpwrappedms ", "Exclude ", "", "#"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_LINE_HEADS, st.text(max_size=60)), max_size=12))
def test_parser_never_raises_on_any_lines(lines: list[tuple[str, str]]) -> None:
    text = "Probe TCP NULL q||\n" + "\n".join(head + body for head, body in lines)
    db = parse_probes_text(text)
    assert db.probes  # the first probe always survives
    assert all(issue.line >= 1 for issue in db.issues)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=40))
def test_translation_raises_only_its_own_errors(pattern: str) -> None:
    with contextlib.suppress(UnsupportedPatternError, re.error, OverflowError, RecursionError):
        compile_pcre(pattern, ignorecase=False, dotall=True)
