"""JA4T, JA4TS and JA4S: FoxIO's JA4+ fingerprints (FoxIO License 1.1, see NOTICE).

These fingerprints are licensed separately from JA4 (BSD-3): the FoxIO License 1.1 allows
non-commercial use only and FoxIO states a patent is pending. They live in this module on
their own, and every caller can switch them off (``netweave fingerprint --no-foxio``,
``FingerprintOptions.foxio = False``); nothing else in netweave imports them.

Rendering follows FoxIO's reference Wireshark dissector (``packet-ja4.c``):

* JA4T (flags exactly SYN, 0x002) and JA4TS (flags exactly SYN-ACK, 0x012):
  ``window_options_mss_wscale``. Option kinds are listed in wire order, every EOL and
  padding byte included, as Wireshark's option walk yields them; an option with an
  impossible length ends the walk. Empty options render ``00``; the MSS is printed with
  at least two digits (``00`` when absent); a window scale of 0 or absent renders ``00``.
* JA4TS of a retransmitted SYN-ACK (capture replay) carries ``_d1-d2...``: the
  whole-second gaps between the SYN-ACKs seen so far on that TCP stream (at most 10).
* JA4S: ``t`` + version + extension count + first/last ALPN character (``99`` when the
  ALPN starts with a non-alphanumeric character) + ``_`` + cipher + ``_`` + truncated
  SHA-256 of the extension list in wire order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from netweave.capture.events import TCP_ACK, TCP_SYN, TcpHandshake
from netweave.fingerprint.ja4 import hash12, version_code
from netweave.fingerprint.tls_hello import ServerHello, is_grease

MAX_SYN_ACK_TIMES = 10
LICENCE = "FoxIO License 1.1"


@dataclass(frozen=True, slots=True)
class TcpOptionView:
    """What Wireshark's TCP option walk shows JA4T: kinds in order, MSS and shift values."""

    kinds: tuple[int, ...]
    mss: int
    wscale: int


def wireshark_options(options: bytes) -> TcpOptionView:
    """Walk TCP options as Wireshark 4.0 does; never raises."""
    kinds: list[int] = []
    mss = wscale = 0
    pos = 0
    end = len(options)
    while pos < end:
        kind = options[pos]
        if kind in (0, 1):
            kinds.append(kind)
            pos += 1
            continue
        if pos + 1 >= end:
            break  # length byte past the end of the options
        length = options[pos + 1]
        if length < 2 or pos + length > end:
            break  # impossible length: Wireshark stops dissecting options here
        kinds.append(kind)
        if kind == 2 and length == 4:
            mss = (options[pos + 2] << 8) | options[pos + 3]
        elif kind == 3 and length == 3:
            wscale = options[pos + 2]
        pos += length
    return TcpOptionView(tuple(kinds), mss, wscale)


@functools.lru_cache(maxsize=8192)
def rendered(window: int, options: bytes) -> str:
    """JA4T/JA4TS text of a window and TCP options block (without any suffix)."""
    # A handful of stacks produce most handshakes: render each (window, options) once.
    return _render(window, wireshark_options(options))


def gaps_suffix(times: list[int]) -> str:
    """``d1-d2...``: whole-second gaps between successive SYN-ACK times (nanoseconds)."""
    return "-".join(
        str(_round_half_away((times[i] - times[i - 1]) / 1e9)) for i in range(1, len(times))
    )


def _render(window: int, view: TcpOptionView) -> str:
    kinds = "-".join(str(k) for k in view.kinds) or "00"
    scale = "00" if view.wscale == 0 else str(view.wscale)
    return f"{window}_{kinds}_{view.mss:02d}_{scale}"


def ja4t(h: TcpHandshake) -> str | None:
    """JA4T of a SYN (flags exactly 0x002), else ``None``."""
    if h.tcp_flags != TCP_SYN:
        return None
    return rendered(h.window, h.tcp_options)


def ja4ts_base(h: TcpHandshake) -> str | None:
    """JA4TS of a SYN-ACK (flags exactly 0x012) without the retransmission suffix."""
    if h.tcp_flags != TCP_SYN | TCP_ACK:
        return None
    return rendered(h.window, h.tcp_options)


def _round_half_away(seconds: float) -> int:
    return math.floor(seconds + 0.5) if seconds >= 0 else -math.floor(-seconds + 0.5)


@dataclass(slots=True)
class _Stream:
    syn_seq: int | None
    syn_ack_times: list[int] = field(default_factory=list)


class Ja4tsTracker:
    """JA4TS with the retransmission suffix, over the handshake records of a replay."""

    def __init__(self, max_streams: int = 200_000) -> None:
        # keyed by IP version and the two endpoints in a fixed order (either direction)
        self._streams: dict[tuple[int, str, int, str, int], _Stream] = {}
        self._max = max_streams

    def observe(self, h: TcpHandshake) -> str | None:
        """JA4TS for a SYN-ACK (suffixed when retransmitted); records SYNs; else ``None``."""
        return self.observe_many((h,))[0]

    def observe_many(self, handshakes: Sequence[TcpHandshake]) -> list[str | None]:
        """:meth:`observe` of each record in turn (one loop: replay's batch path)."""
        out: list[str | None] = []
        add = out.append
        streams = self._streams
        for h in handshakes:
            flags = h.tcp_flags
            if flags != TCP_SYN and flags != TCP_SYN | TCP_ACK:
                add(None)
                continue
            src, sport, dst, dport = h.src, h.src_port, h.dst, h.dst_port
            if (src, sport) <= (dst, dport):
                key = (h.ip_version, src, sport, dst, dport)
            else:
                key = (h.ip_version, dst, dport, src, sport)
            stream = streams.get(key)
            if flags == TCP_SYN:
                if stream is None or (stream.syn_seq is not None and stream.syn_seq != h.seq):
                    self._store(key, _Stream(h.seq))
                elif stream.syn_seq is None:
                    stream.syn_seq = h.seq
                add(None)
                continue
            base = rendered(h.window, h.tcp_options)
            if stream is None:
                stream = _Stream(None)
                self._store(key, stream)
            times = stream.syn_ack_times
            if len(times) < MAX_SYN_ACK_TIMES:
                times.append(h.timestamp_ns)
            if len(times) <= 1:
                add(base)
                continue
            gaps = "-".join(
                str(_round_half_away((times[i] - times[i - 1]) / 1e9)) for i in range(1, len(times))
            )
            add(f"{base}_{gaps}")
        return out

    def _store(self, key: tuple[int, str, int, str, int], stream: _Stream) -> None:
        if key not in self._streams and len(self._streams) >= self._max:
            self._streams.pop(next(iter(self._streams)))
        self._streams[key] = stream


def _alpn_pair(alpn: tuple[bytes, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    text = alpn[0].decode("utf-8", "replace")
    if not (text[0].isascii() and text[0].isalnum()):
        return "99"
    return text[0] + text[-1]


def ja4s(hello: ServerHello, *, transport: str = "t") -> str:
    """JA4S of a ServerHello, as FoxIO's Wireshark dissector renders it."""
    return _ja4s(hello, transport, hashed=True)


def ja4s_raw(hello: ServerHello, *, transport: str = "t") -> str:
    """JA4S_r: the extension list in clear."""
    return _ja4s(hello, transport, hashed=False)


def _ja4s(hello: ServerHello, transport: str, *, hashed: bool) -> str:
    version = hello.version
    if hello.supported_version is not None and not is_grease(hello.supported_version):
        version = max(version, hello.supported_version)
    extensions = [e for e in hello.extensions if not is_grease(e)]
    cipher = "" if is_grease(hello.cipher) else f"{hello.cipher:04x}"
    ext_text = ",".join(f"{e:04x}" for e in extensions)
    tail = hash12(ext_text) if hashed else ext_text
    return (
        f"{transport}{version_code(version)}{len(extensions):02d}{_alpn_pair(hello.alpn)}"
        f"_{cipher}_{tail}"
    )
