"""p0f v3 TCP fingerprints of SYN and SYN-ACK records, computed and matched as p0f 3.09b does.

* :func:`p0f_packet` turns a :class:`~netweave.capture.events.TcpHandshake` into p0f's view
  of the packet (``parse_packet()`` in p0f's ``process.c``): TTL, option layout and
  every quirk.
* :func:`match` is ``tcp_find_match()`` of ``fp_tcp.c``: candidates with the same option
  layout in file order, fuzzy quirk rules, TTL distance up to 35, wildcards; specific
  before generic, fuzzy last.
* :func:`raw_signature` and :func:`params` render ``raw_sig`` and ``params`` as p0f logs them.
* :class:`P0fObserver` keeps p0f's per-flow state so that only the first SYN and the first
  SYN-ACK of a flow are fingerprinted, as p0f does.

The ``ack+`` quirk: p0f 3.09b tests ``RD32(tcp->ack) & !(tcp->flags & TCP_RST)``, a bitwise
AND with 1, on the acknowledgement field read in host byte order. On x86 that is bit 24 of
the real acknowledgement number, so p0f reports ``ack+`` only when that one bit is set.
``AckRule.P0F_X86`` (the default) reproduces this so raw signatures equal p0f's;
``AckRule.CORRECTED`` reports ``ack+`` for any non-zero acknowledgement on a segment
without ACK (and without RST), which is what the quirk is documented to mean.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from netweave.capture.events import (
    IP_FLAG_DF,
    IP_FLAG_MF,
    IP_FLAG_RESERVED,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_NS,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    TcpHandshake,
)
from netweave.fingerprint.p0f_db import (
    MAX_TCP_OPT,
    OPT_EOL,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SOK,
    OPT_TS,
    OPT_WS,
    OPTION_NAMES,
    QUIRK_DF,
    QUIRK_ECN,
    QUIRK_FLOW,
    QUIRK_NAMES,
    QUIRK_NZ_ACK,
    QUIRK_NZ_ID,
    QUIRK_NZ_MBZ,
    QUIRK_NZ_URG,
    QUIRK_OPT_BAD,
    QUIRK_OPT_EOL_NZ,
    QUIRK_OPT_EXWS,
    QUIRK_OPT_NZ_TS2,
    QUIRK_OPT_ZERO_TS1,
    QUIRK_PUSH,
    QUIRK_URG,
    QUIRK_ZERO_ACK,
    QUIRK_ZERO_ID,
    QUIRK_ZERO_SEQ,
    WIN_MOD,
    WIN_MSS,
    WIN_MTU,
    WIN_NORMAL,
    P0fDatabase,
    P0fSignature,
)

MAX_DIST = 35
MIN_TCP4 = 40
MIN_TCP6 = 60
SPECIAL_MSS = 1331
SPECIAL_WIN = 1337


class AckRule(enum.Enum):
    """How the ``ack+`` quirk is decided (see the module docstring)."""

    P0F_X86 = "p0f"
    CORRECTED = "corrected"


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """p0f's reading of a TCP options block."""

    layout: tuple[int, ...]
    eol_pad: int
    mss: int
    wscale: int
    ts1: int
    quirks: int


def parse_tcp_options(options: bytes, *, syn_only: bool) -> TcpOptions:
    """Read TCP options as p0f does (``syn_only``: the segment is a plain SYN, for ts2+).

    Never raises: impossible lengths end the walk and set the ``bad`` quirk.
    """
    layout: list[int] = []
    eol_pad = mss = wscale = ts1 = quirks = 0
    end = len(options)
    pos = 0
    aborted = False
    while pos < end and len(layout) < MAX_TCP_OPT:
        kind = options[pos]
        layout.append(kind)
        pos += 1
        if kind == OPT_EOL:
            eol_pad = end - pos
            # p0f's `while (data < opt_end && !*data++);` steps past the first non-zero
            # byte, so a non-zero *last* padding byte goes unnoticed; kept as p0f has it.
            while pos < end:
                byte = options[pos]
                pos += 1
                if byte:
                    break
            if pos != end:
                quirks |= QUIRK_OPT_EOL_NZ
                pos = end
        elif kind == OPT_NOP:
            pass
        elif kind == OPT_MSS:
            if pos + 3 > end:
                aborted = True
                break
            if options[pos] != 4:
                quirks |= QUIRK_OPT_BAD
            mss = (options[pos + 1] << 8) | options[pos + 2]
            pos += 3
        elif kind == OPT_WS:
            if pos + 2 > end:
                aborted = True
                break
            if options[pos] != 3:
                quirks |= QUIRK_OPT_BAD
            wscale = options[pos + 1]
            if wscale > 14:
                quirks |= QUIRK_OPT_EXWS
            pos += 2
        elif kind == OPT_SOK:
            if pos + 1 > end:
                aborted = True
                break
            if options[pos] != 2:
                quirks |= QUIRK_OPT_BAD
            pos += 1
        elif kind == OPT_SACK:
            if pos == end or not 10 <= options[pos] <= 34 or pos - 1 + options[pos] > end:
                aborted = True
                break
            pos += options[pos] - 1
        elif kind == OPT_TS:
            if pos + 9 > end:
                aborted = True
                break
            if options[pos] != 10:
                quirks |= QUIRK_OPT_BAD
            ts1 = int.from_bytes(options[pos + 1 : pos + 5], "big")
            if not ts1:
                quirks |= QUIRK_OPT_ZERO_TS1
            if syn_only and any(options[pos + 5 : pos + 9]):
                quirks |= QUIRK_OPT_NZ_TS2
            pos += 9
        else:
            if pos == end or not 2 <= options[pos] <= 40 or pos - 1 + options[pos] > end:
                aborted = True
                break
            pos += options[pos] - 1
    if aborted or pos != end:
        quirks |= QUIRK_OPT_BAD
    return TcpOptions(tuple(layout), eol_pad, mss, wscale, ts1, quirks)


@dataclass(frozen=True, slots=True)
class P0fPacket:
    """p0f's view of a SYN or SYN-ACK (``struct packet_data`` reduced to what matching uses)."""

    to_server: bool
    ip_version: int
    ttl: int
    tos: int
    ip_options_length: int
    mss: int
    win: int
    wscale: int
    layout: tuple[int, ...]
    eol_pad: int
    quirks: int
    pay_class: int
    tot_hdr: int
    ts1: int


def p0f_packet(h: TcpHandshake, *, ack_rule: AckRule = AckRule.P0F_X86) -> P0fPacket | None:
    """p0f's reading of a handshake record; ``None`` where p0f would not fingerprint it."""
    ack_bit = (h.ack >> 24) & 1 if ack_rule is AckRule.P0F_X86 else int(h.ack != 0)
    return p0f_view(
        h.ip_version, h.ttl, h.tos, h.ip_flags, h.ip_id == 0, h.flow_label != 0,
        h.ip_options_length, h.seq == 0, ack_bit, h.ack == 0, h.window, h.tcp_flags,
        h.urgent_pointer != 0, h.tcp_options, h.payload_length != 0,
    )  # fmt: skip


@functools.lru_cache(maxsize=16384)
def p0f_view(
    ip_version: int, ttl: int, tos_byte: int, ip_flags: int, zero_id: bool, has_flow: bool,
    ip_options_length: int, zero_seq: bool, nz_ack: int, zero_ack: bool, window: int,
    tcp_flags: int, nz_urgent: bool, options: bytes, has_payload: bool,
) -> P0fPacket | None:  # fmt: skip
    """p0f's view of a packet from the header fields it depends on (see :func:`p0f_packet`)."""
    flags = tcp_flags & 0xFF
    tcp_type = flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)
    if tcp_type not in (TCP_SYN, TCP_SYN | TCP_ACK):
        return None
    if ip_version == 4 and ip_flags & IP_FLAG_MF:
        return None
    quirks = 0
    if ip_version == 4:
        tos = tos_byte >> 2
        if tos_byte & 0x03:
            quirks |= QUIRK_ECN
        if ip_flags & IP_FLAG_RESERVED:
            quirks |= QUIRK_NZ_MBZ
        if ip_flags & IP_FLAG_DF:
            quirks |= QUIRK_DF
            if not zero_id:
                quirks |= QUIRK_NZ_ID
        elif zero_id:
            quirks |= QUIRK_ZERO_ID
        tot_hdr = 20 + ip_options_length
    else:
        tos = (tos_byte >> 2) & 0x3F
        if has_flow:
            quirks |= QUIRK_FLOW
        if tos_byte & 0x03:
            quirks |= QUIRK_ECN
        tot_hdr = 40
    tot_hdr += 20 + len(options)
    if flags & (TCP_ECE | TCP_CWR) or tcp_flags & TCP_NS:
        quirks |= QUIRK_ECN
    if zero_seq:
        quirks |= QUIRK_ZERO_SEQ
    if flags & TCP_ACK:
        if zero_ack:
            quirks |= QUIRK_ZERO_ACK
    elif not flags & TCP_RST and nz_ack:
        quirks |= QUIRK_NZ_ACK
    if flags & TCP_URG:
        quirks |= QUIRK_URG
    elif nz_urgent:
        quirks |= QUIRK_NZ_URG
    if flags & TCP_PSH:
        quirks |= QUIRK_PUSH
    opts = parse_tcp_options(options, syn_only=tcp_type == TCP_SYN)
    return P0fPacket(
        to_server=tcp_type == TCP_SYN,
        ip_version=ip_version,
        ttl=ttl,
        tos=tos,
        ip_options_length=ip_options_length,
        mss=opts.mss,
        win=window,
        wscale=opts.wscale,
        layout=opts.layout,
        eol_pad=opts.eol_pad,
        quirks=quirks | opts.quirks,
        pay_class=1 if has_payload else 0,
        tot_hdr=tot_hdr,
        ts1=opts.ts1,
    )


def guess_dist(ttl: int) -> int:
    """Distance to the nearest usual initial TTL (32, 64, 128, 255) at or above ``ttl``."""
    for initial in (32, 64, 128):
        if ttl <= initial:
            return initial - ttl
    return 255 - ttl


def window_multiplier(pk: P0fPacket, syn_mss: int) -> tuple[int, bool] | None:
    """``(multiplier, use_mtu)`` when the window is a multiple of MSS/MTU, p0f's order."""
    win, mss = pk.win, pk.mss
    if not win or mss < 100:
        return None
    candidates: list[tuple[int, bool]] = [(mss, False)]
    if pk.ts1:
        candidates.append((mss - 12, False))
    candidates += [(1500 - MIN_TCP4, False), (1500 - MIN_TCP4 - 12, False)]
    if pk.ip_version == 6:
        candidates += [(1500 - MIN_TCP6, False), (1500 - MIN_TCP6 - 12, False)]
    candidates += [(mss + MIN_TCP4, True), (mss + pk.tot_hdr, True)]
    if pk.ip_version == 6:
        candidates.append((mss + MIN_TCP6, True))
    candidates.append((1500, True))
    if syn_mss:
        candidates += [(syn_mss, False), (syn_mss - 12, False)]
    for div, use_mtu in candidates:
        if div > 0 and win % div == 0:
            return win // div, use_mtu
    return None


@dataclass(frozen=True, slots=True)
class P0fMatch:
    """Outcome of matching: the signature (None when unknown), distance, fuzzy flag."""

    signature: P0fSignature | None
    dist: int
    fuzzy: bool


def match(db: P0fDatabase, pk: P0fPacket, syn_mss: int = 0) -> P0fMatch:
    """Find the p0f.fp signature for ``pk`` exactly as p0f 3.09b's ``tcp_find_match()``."""
    multi = window_multiplier(pk, syn_mss)
    win_multi, use_mtu = multi if multi is not None else (-1, False)
    fmatch: P0fSignature | None = None
    gmatch: P0fSignature | None = None
    bucket = db.syn_by_layout if pk.to_server else db.synack_by_layout
    for ref in bucket.get(pk.layout, ()):
        fuzzy = False
        ref_quirks = ref.quirks
        if ref.ip_version == -1:
            ref_quirks &= (
                ~QUIRK_FLOW if pk.ip_version == 4 else ~(QUIRK_DF | QUIRK_NZ_ID | QUIRK_ZERO_ID)
            )
        if ref_quirks != pk.quirks:
            deleted = (ref_quirks ^ pk.quirks) & ref_quirks
            added = (ref_quirks ^ pk.quirks) & pk.quirks
            if (
                fmatch is not None
                or deleted & ~(QUIRK_DF | QUIRK_NZ_ID)
                or added & ~(QUIRK_ZERO_ID | QUIRK_ECN)
            ):
                continue
            fuzzy = True
        if ref.eol_pad != pk.eol_pad or ref.ip_options_length != pk.ip_options_length:
            continue
        if ref.bad_ttl:
            if ref.ttl < pk.ttl:
                continue
        elif ref.ttl < pk.ttl or ref.ttl - pk.ttl > MAX_DIST:
            fuzzy = True
        if ref.mss not in (-1, pk.mss):
            continue
        if ref.wscale not in (-1, pk.wscale):
            continue
        if ref.pay_class not in (-1, pk.pay_class):
            continue
        if ref.win_type == WIN_NORMAL and ref.win != pk.win:
            continue
        if ref.win_type == WIN_MOD and pk.win % ref.win:
            continue
        if ref.win_type == WIN_MSS and (use_mtu or ref.win != win_multi):
            continue
        if ref.win_type == WIN_MTU and (not use_mtu or ref.win != win_multi):
            continue
        if not fuzzy:
            if not ref.label.generic:
                return P0fMatch(ref, ref.ttl - pk.ttl, False)
            if gmatch is None:
                gmatch = ref
        elif fmatch is None:
            fmatch = ref
    if gmatch is not None:
        return P0fMatch(gmatch, gmatch.ttl - pk.ttl, False)
    if fmatch is not None and fmatch.label.os_class is None:
        return P0fMatch(None, guess_dist(pk.ttl), False)  # no fuzzy matches for tools
    if (
        fmatch is None
        or fmatch.ttl < pk.ttl
        or (not fmatch.bad_ttl and fmatch.ttl - pk.ttl > MAX_DIST)
    ):
        dist = guess_dist(pk.ttl)
    else:
        dist = fmatch.ttl - pk.ttl
    return P0fMatch(fmatch, dist, fmatch is not None)


def raw_signature(pk: P0fPacket, syn_mss: int = 0, *, synack: bool = False) -> str:
    """The ``raw_sig`` p0f logs for this packet (``dump_sig()`` of ``fp_tcp.c``)."""
    dist = guess_dist(pk.ttl)
    head = f"{pk.ip_version}:{pk.ttl}+{dist if dist <= MAX_DIST else '?'}"
    mss = "*" if pk.mss == SPECIAL_MSS and synack else str(pk.mss)
    multi = window_multiplier(pk, syn_mss)
    if multi is not None and multi[0] > 0:
        win = f"{'mtu' if multi[1] else 'mss'}*{multi[0]}"
    else:
        win = str(pk.win)
    options = ",".join(
        f"eol+{pk.eol_pad}" if kind == OPT_EOL else OPTION_NAMES.get(kind, f"?{kind}")
        for kind in pk.layout
    )
    quirks = ",".join(name for bit, name in QUIRK_NAMES if pk.quirks & bit)
    pclass = "+" if pk.pay_class else "0"
    return f"{head}:{pk.ip_options_length}:{mss}:{win},{pk.wscale}:{options}:{quirks}:{pclass}"


def params(pk: P0fPacket, result: P0fMatch) -> str:
    """The ``params`` field p0f logs (``dump_flags()``): generic, fuzzy, ... or ``none``."""
    words: list[str] = []
    if result.signature is not None:
        if result.signature.label.generic:
            words.append("generic")
        if result.fuzzy:
            words.append("fuzzy")
        if result.signature.bad_ttl:
            words.append("random_ttl")
    if result.dist > MAX_DIST:
        words.append("excess_dist")
    if pk.tos:
        words.append(f"tos:0x{pk.tos:02x}")
    return " ".join(words) if words else "none"
