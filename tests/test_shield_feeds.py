"""Feed parsing: every format, whole-file rejection with line numbers, --skip-invalid, IPsum
levels, conflicts with bypass/allow, the CLI's refusal of a bad feed, and hypothesis fuzz."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netweave.shield import feeds
from netweave.shield.feeds import FeedError, FeedFormat, parse_text, read_feed
from netweave.shield.ruleset import Protected, build_ruleset

FIREHOL = """\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# A firewall blacklist composed from IP lists
# Maintainer      : FireHOL
#
0.0.0.0/8
1.10.16.0/20
10.0.0.0/8
100.64.0.0/10
127.0.0.0/8
192.168.0.0/16
223.254.0.0/16
"""

SPAMHAUS = """\
; Spamhaus DROP List 2024/06/12 - (c) 2024 The Spamhaus Project SLU
; Last-Modified: Wed, 12 Jun 2024 01:06:37 GMT
; Expires: Wed, 12 Jun 2024 02:11:38 GMT
1.10.16.0/20 ; SBL256894
1.19.0.0/16 ; SBL434604
2.56.192.0/22 ; SBL459831
"""

SPAMHAUS_JSON = """\
{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2a06:e480::/29","sblid":"SBL301771","rir":"ripencc"}
{"type":"metadata","timestamp":1718154397,"size":81262,"records":2,"copyright":"(c) 2024"}
"""

IPSUM = """\
# IPsum Threat Intelligence Feed
# (https://github.com/stamparm/ipsum)
#
# IP\tnumber of (black)lists
#
185.224.128.17\t9
80.94.95.81\t8
45.148.10.174\t3
193.32.162.157\t2
162.216.149.167\t1
"""


def _cidrs(feed: feeds.Feed) -> list[str]:
    v4 = [
        str(ipaddress.IPv4Network((int(a), int(p))))
        for a, p in zip(feed.v4_addr, feed.v4_plen, strict=True)
    ]
    v6 = [str(ipaddress.IPv6Network(x)) for x in zip(feed.v6_addr, feed.v6_plen, strict=True)]
    return v4 + v6


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expected"),
    [
        ("level1.netset", FIREHOL, FeedFormat.FIREHOL, 7),
        ("drop.txt", SPAMHAUS, FeedFormat.SPAMHAUS, 3),
        ("drop_v4.json", SPAMHAUS_JSON, FeedFormat.SPAMHAUS_JSON, 2),
        ("ipsum.txt", IPSUM, FeedFormat.IPSUM, 5),
        ("plain.txt", "192.0.2.1\n198.51.100.0/24\n2001:db8::/32\n", FeedFormat.PLAIN, 3),
    ],
)
def test_formats_are_detected_and_parsed(
    tmp_path: Path, name: str, text: str, fmt: FeedFormat, expected: int
) -> None:
    path = tmp_path / name
    path.write_text(text)
    feed = read_feed(path)
    assert feed.format is fmt
    assert feed.count == expected
    assert not feed.skipped


def test_parsed_values_are_the_listed_networks(tmp_path: Path) -> None:
    (tmp_path / "drop.json").write_text(SPAMHAUS_JSON)
    assert _cidrs(read_feed(tmp_path / "drop.json")) == ["1.10.16.0/20", "2a06:e480::/29"]
    (tmp_path / "l1.netset").write_text(FIREHOL)
    assert _cidrs(read_feed(tmp_path / "l1.netset"))[:3] == [
        "0.0.0.0/8",
        "1.10.16.0/20",
        "10.0.0.0/8",
    ]


def test_ipsum_level_threshold(tmp_path: Path) -> None:
    (tmp_path / "ipsum.txt").write_text(IPSUM)
    feed = read_feed(tmp_path / "ipsum.txt", level=3)
    assert _cidrs(feed) == ["185.224.128.17/32", "80.94.95.81/32", "45.148.10.174/32"]
    assert feed.excluded == 2


def test_invalid_lines_reject_the_whole_file_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.netset"
    path.write_text("# header\n192.0.2.0/24\n300.1.1.1\n10.0.0.1/8\nhello\n198.51.100.7\n")
    with pytest.raises(FeedError) as err:
        read_feed(path)
    assert [b.line for b in err.value.bad] == [3, 4, 5]
    message = str(err.value)
    assert str(path) in message and "3 invalid line(s)" in message
    assert "host bits set" in message and "not an IP address" in message


def test_skip_invalid_keeps_the_rest_and_lists_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"192.0.2.0/24\n1.2.3.4/33\n\xff\xfe\n198.51.100.7\n")
    feed = read_feed(path, skip_invalid=True)
    assert _cidrs(feed) == ["192.0.2.0/24", "198.51.100.7/32"]
    assert [(b.line, b.reason) for b in feed.skipped] == [
        (2, "prefix length above /32"),
        (3, "not an IP address"),
    ]


def test_bad_json_lines_and_ipsum_lines_are_named() -> None:
    with pytest.raises(FeedError) as err:
        parse_text('{"cidr":"1.2.3.0/24"}\n{"cidr":5}\n[1]\n{oops\n', "j", FeedFormat.SPAMHAUS_JSON)
    assert [b.line for b in err.value.bad] == [2, 3, 4]
    with pytest.raises(FeedError) as err:
        parse_text("1.2.3.4\t5\n1.2.3.5\n", "ipsum", FeedFormat.IPSUM)
    assert [b.line for b in err.value.bad] == [2]


def test_overlapping_cidrs_are_aggregated() -> None:
    feed = parse_text(
        "10.0.0.0/25\n10.0.0.128/25\n10.0.0.7\n10.0.1.0/24\n192.0.2.0/24\n192.0.2.9\n",
        "f",
        FeedFormat.PLAIN,
    )
    rs = build_ruleset([feed], Protected())
    got = [
        f"{ipaddress.IPv4Address(int(a))}/{p}" for a, p in zip(rs.v4_addr, rs.v4_plen, strict=True)
    ]
    assert got == ["10.0.0.0/23", "192.0.2.0/24"]
    assert rs.listed == 6


def test_bypass_and_allow_listed_by_a_feed_are_reported(tmp_path: Path) -> None:
    (tmp_path / "firehol_level1.netset").write_text(FIREHOL)
    feed = read_feed(tmp_path / "firehol_level1.netset")
    rs = build_ruleset(
        [feed], Protected(bypass=("10.1.2.3",), allow=("192.168.7.0/24", "8.8.8.0/24"))
    )
    lines = [c.describe() for c in rs.conflicts]
    assert len(lines) == 2
    assert lines[0].startswith("bypass 10.1.2.3 is listed by") and "10.0.0.0/8" in lines[0]
    assert lines[1].startswith("allow 192.168.7.0/24") and "192.168.0.0/16" in lines[1]


def test_cli_load_rejects_a_bad_feed_naming_file_and_lines(tmp_path: Path) -> None:
    bad = tmp_path / "list.txt"
    bad.write_text("192.0.2.0/24\nnot-an-ip\n")
    env = {
        **os.environ,
        "NETWEAVE_SHIELD_STATE": str(tmp_path / "state"),
        "NETWEAVE_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "netweave", "shield", "load", str(bad)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"feed {bad}: 1 invalid line(s)" in proc.stderr and "lines 2 (" in proc.stderr


# -- fuzz --------------------------------------------------------------------------------

_octet = st.integers(0, 255).map(str)
_v4 = st.tuples(_octet, _octet, _octet, _octet).map(".".join)
_line = st.one_of(
    _v4,
    st.tuples(_v4, st.integers(0, 40)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.just("# comment"),
    st.just(""),
    st.just("2001:db8::/32"),
    st.text(alphabet='0123456789./:#; \t\r{}"abcx', max_size=20),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, max_size=12), st.sampled_from(list(FeedFormat)), st.integers(0, 12))
def test_fuzz_parsers_raise_only_feed_errors(lines: list[str], fmt: FeedFormat, level: int) -> None:
    text = "\n".join(lines)
    for skip in (False, True):
        try:
            feed = parse_text(text, "fuzz", fmt, level=level, skip_invalid=skip)
        except FeedError as e:
            assert not skip and e.bad
            continue
        assert feed.count == len(feed.v4_plen) + len(feed.v6_plen)
        assert (feed.v4_plen <= 32).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(_line, max_size=12), st.sampled_from([FeedFormat.PLAIN, FeedFormat.SPAMHAUS]))
@example(["0.0.0.0", "#\r0"], FeedFormat.PLAIN)  # a lone CR breaks a line for the line parser
def test_fuzz_fast_path_agrees_with_line_parser(lines: list[str], fmt: FeedFormat) -> None:
    text = "\n".join(lines)
    fast = feeds._fast_v4(text, fmt)
    if fast is None:
        return
    fast_path = feeds._fast_v4
    feeds._fast_v4 = lambda *_: None  # the line-by-line parser alone
    try:
        slow = feeds.parse_text(text, "slow", fmt)
    except FeedError:
        pytest.fail(f"fast path accepted what the line parser rejects: {text!r}")
    finally:
        feeds._fast_v4 = fast_path
    assert np.array_equal(fast.v4_addr, slow.v4_addr) and np.array_equal(fast.v4_plen, slow.v4_plen)
    assert not slow.v6_addr
