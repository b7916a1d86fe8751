"""Blocklist feeds: plain CIDR lists, FireHOL ``.netset``, Spamhaus DROP (text and JSON
lines) and IPsum (``ip<TAB>count``), parsed into integer arrays.

A file with any invalid line is rejected whole (:class:`FeedError` lists the line numbers)
unless ``skip_invalid`` is set, in which case the valid lines are kept and the invalid ones
are reported in :attr:`Feed.skipped`.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

MAX_LISTED = 20


class FeedFormat(StrEnum):
    """The feed formats the shield reads."""

    PLAIN = "plain"
    FIREHOL = "firehol"
    SPAMHAUS = "spamhaus"
    SPAMHAUS_JSON = "spamhaus-json"
    IPSUM = "ipsum"


@dataclass(frozen=True, slots=True)
class BadLine:
    """One line of a feed that could not be used: its number (from 1), text and why."""

    line: int
    text: str
    reason: str


class FeedError(ValueError):
    """A feed was rejected; the message names the file and the bad line numbers."""

    def __init__(self, source: str, bad: list[BadLine]) -> None:
        self.source = source
        self.bad = bad
        shown = ", ".join(f"{b.line} ({b.reason}: {b.text[:40]!r})" for b in bad[:MAX_LISTED])
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        super().__init__(
            f"feed {source}: {len(bad)} invalid line(s), file rejected "
            f"(use --skip-invalid to apply the rest): lines {shown}{more}"
        )


@dataclass(frozen=True, slots=True)
class Feed:
    """A parsed feed: IPv4 and IPv6 CIDRs as arrays, and the lines it skipped.

    ``v4_addr``/``v4_plen``: network addresses (host order, uint32) and prefix lengths.
    ``v6_addr``: 128-bit network addresses as Python ints, ``v6_plen`` their lengths.
    """

    source: str
    format: FeedFormat
    v4_addr: npt.NDArray[np.uint32]
    v4_plen: npt.NDArray[np.uint8]
    v6_addr: tuple[int, ...]
    v6_plen: tuple[int, ...]
    skipped: tuple[BadLine, ...]
    excluded: int = 0

    @property
    def count(self) -> int:
        """How many CIDRs the feed lists (before aggregation)."""
        return len(self.v4_addr) + len(self.v6_addr)


def parse_cidr(text: str) -> tuple[int, int, int]:
    """``(family, address int, prefix length)`` of an address or CIDR; ValueError if bad.

    Host bits set below the prefix (``10.0.0.1/8``) are an error: the intent is unclear.
    """
    addr, slash, plen_text = text.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise ValueError("not an IP address") from None
    width = 32 if family == socket.AF_INET else 128
    if slash:
        if not plen_text.isdigit() or len(plen_text) > 3:
            raise ValueError("bad prefix length")
        plen = int(plen_text)
        if plen > width:
            raise ValueError(f"prefix length above /{width}")
    else:
        plen = width
    value = int.from_bytes(packed, "big")
    if value & ((1 << (width - plen)) - 1):
        raise ValueError("host bits set below the prefix length")
    return family, value, plen


def detect_format(path: Path, lines: list[str]) -> FeedFormat:
    """Guess a feed's format from its name and first data line."""
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("{"):
            return FeedFormat.SPAMHAUS_JSON
        if ";" in line:
            return FeedFormat.SPAMHAUS
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and "/" not in fields[0]:
            return FeedFormat.IPSUM
        break
    if path.suffix in (".netset", ".ipset"):
        return FeedFormat.FIREHOL
    return FeedFormat.PLAIN


def _line_cidr(fmt: FeedFormat, line: str, level: int) -> str | None:
    """The CIDR text of one stripped, non-comment line; None when filtered out by level."""
    if fmt is FeedFormat.SPAMHAUS_JSON:
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError("not a JSON object") from None
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        if record.get("type") == "metadata":
            return None
        cidr = record.get("cidr")
        if not isinstance(cidr, str):
            raise ValueError('no "cidr" string')
        return cidr
    if fmt is FeedFormat.SPAMHAUS:
        line = line.split(";", 1)[0].strip()
    else:
        line = line.split("#", 1)[0].strip()
    fields = line.split()
    if fmt is FeedFormat.IPSUM:
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError("expected `ip<TAB>count`")
        return fields[0] if int(fields[1]) >= level else None
    if len(fields) != 1:
        raise ValueError("expected one address or CIDR")
    return fields[0]


_COMMENT_LINES = {c: re.compile(rf"^[ \t]*(?:{c}[^\n]*)?\r?(?:\n|\Z)", re.MULTILINE) for c in "#;"}
_INLINE_COMMENT = {c: re.compile(rf"[ \t]*{c}[^\n]*") for c in "#;"}
_EDGE_SPACE = re.compile(r"^[ \t]+|[ \t\r]+$", re.MULTILINE)
# Line breaks of str.splitlines (what the line parser numbers by) other than \n and \r\n.
_ODD_BREAK = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]|\r(?!\n)")
_SEPARATORS = np.zeros(256, dtype=bool)
_SEPARATORS[[ord("."), ord("/"), ord("\n")]] = True
DOT, SLASH = ord("."), ord("/")


def _strip(text: str, comment: str) -> str:
    """Drop comment lines, inline comments and edge blanks (regexes only where needed)."""
    lines = text.split("\n", 64)
    head = 0
    while head < min(len(lines), 64) and (not lines[head] or lines[head][0] == comment):
        head += 1  # the usual header block, without a regex over the whole file
    body = "\n".join(lines[head:]) if head else text
    if comment in body:
        body = _COMMENT_LINES[comment].sub("", body)
        body = _INLINE_COMMENT[comment].sub("", body)
    if " " in body or "\t" in body or "\r" in body:
        body = _EDGE_SPACE.sub("", body)
    if "\n\n" in body:
        body = re.sub(r"\n{2,}", "\n", body)
    body = body.lstrip("\n")
    return body if not body or body.endswith("\n") else body + "\n"


def _fast_v4(text: str, fmt: FeedFormat) -> Feed | None:
    """Parse an IPv4-only plain/FireHOL/Spamhaus text with numpy; None if it is anything
    else (or has any doubtful line), so the line-by-line parser reports it exactly.

    Every line must be ``a.b.c.d`` or ``a.b.c.d/n``: numbers of 1-3 digits without
    leading zeros, octets up to 255, lengths up to 32, no host bits below the length.
    """
    if fmt not in (FeedFormat.PLAIN, FeedFormat.FIREHOL, FeedFormat.SPAMHAUS):
        return None
    if _ODD_BREAK.search(text):  # lines counted differently: leave it to the line parser
        return None
    body = _strip(text, ";" if fmt is FeedFormat.SPAMHAUS else "#")
    if not body.isascii():
        return None
    raw = np.frombuffer(body.encode("ascii"), dtype=np.uint8)
    if len(raw) == 0:
        return Feed("", fmt, np.zeros(0, np.uint32), np.zeros(0, np.uint8), (), (), ())
    digit = raw - np.uint8(48)
    is_digit = digit < 10
    ends = np.flatnonzero(~is_digit)  # each separator closes one number
    seps = raw[ends]
    if not _SEPARATORS[seps].all():
        return None
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts
    if length.min() < 1 or length.max() > 3 or ((raw[starts] == 48) & (length > 1)).any():
        return None
    values = digit[ends - 1].astype(np.int64)
    values += np.where(length >= 2, 10 * digit[ends - 2].astype(np.int64), 0)
    values += np.where(length >= 3, 100 * digit[ends - 3].astype(np.int64), 0)
    newlines = np.flatnonzero(seps == 10)
    count = np.diff(np.concatenate([[-1], newlines]))  # numbers per line
    if not np.isin(count, (4, 5)).all():
        return None
    first = newlines - count + 1
    if not ((seps[first] == DOT) & (seps[first + 1] == DOT) & (seps[first + 2] == DOT)).all():
        return None
    slash = count == 5
    if not (seps[newlines[slash] - 1] == SLASH).all():
        return None
    octets = values[first[:, None] + np.arange(4)]
    plen = np.where(slash, values[np.minimum(first + 4, len(values) - 1)], 32)
    if (octets > 255).any() or (plen > 32).any():
        return None
    addr = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
    if (addr & ((np.int64(1) << (32 - plen)) - 1)).any():
        return None
    return Feed("", fmt, addr.astype(np.uint32), plen.astype(np.uint8), (), (), ())


def parse_text(
    text: str,
    source: str,
    fmt: FeedFormat,
    *,
    level: int = 1,
    skip_invalid: bool = False,
) -> Feed:
    """Parse a feed's text; raises :class:`FeedError` on invalid lines unless skipping."""
    fast = _fast_v4(text, fmt)
    if fast is not None:
        return Feed(source, fmt, fast.v4_addr, fast.v4_plen, (), (), ())
    v4a: list[int] = []
    v4p: list[int] = []
    v6a: list[int] = []
    v6p: list[int] = []
    bad: list[BadLine] = []
    excluded = 0
    comment = ";" if fmt is FeedFormat.SPAMHAUS else "#"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == comment or (fmt is FeedFormat.SPAMHAUS and line[0] == "#"):
            continue
        try:
            cidr = _line_cidr(fmt, line, level)
            if cidr is None:
                excluded += 1
                continue
            family, value, plen = parse_cidr(cidr)
        except ValueError as e:
            bad.append(BadLine(number, raw.rstrip("\r\n"), str(e)))
            continue
        if family == socket.AF_INET:
            v4a.append(value)
            v4p.append(plen)
        else:
            v6a.append(value)
            v6p.append(plen)
    if bad and not skip_invalid:
        raise FeedError(source, bad)
    return Feed(
        source,
        fmt,
        np.array(v4a, dtype=np.uint32),
        np.array(v4p, dtype=np.uint8),
        tuple(v6a),
        tuple(v6p),
        tuple(bad),
        excluded,
    )


def read_feed(
    path: Path | str,
    *,
    fmt: FeedFormat | None = None,
    level: int = 1,
    skip_invalid: bool = False,
) -> Feed:
    """Read and parse the feed file at ``path`` (format detected unless given)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FeedError(str(p), [BadLine(0, "", f"cannot read: {e.strerror}")]) from e
    # Undecodable bytes become U+FFFD, which makes their line invalid like any other.
    text = data.decode("utf-8", errors="replace")
    kind = fmt or detect_format(p, text[:65536].splitlines()[:200])
    return parse_text(text, str(p), kind, level=level, skip_invalid=skip_invalid)
