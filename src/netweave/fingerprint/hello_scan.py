"""Compiled pass over many first payloads: where the TLS hellos are and what JA4/JA4S read.

:func:`scan_hellos` walks the payloads the way :func:`~netweave.fingerprint.tls_hello.
stream_hellos` does (an optional HTTP CONNECT head, TLS records, handshake messages joined
across records, the same validity checks as the hello parsers) in one numba-compiled loop,
and gives for every well-formed ClientHello and ServerHello its payload, end offset, kind
and a *key*: the hello's bytes reduced to exactly what its JA4 or JA4S depends on (version,
cipher suites, extension types in order, and the contents of supported_versions,
signature_algorithms and ALPN), with everything that changes per connection left out
(random, session id, server name, key shares, padding).

Real clients repeat a handful of TLS stacks, so the fingerprints are computed once per key
by the Python parser and JA4/JA4S code, and every later hello with the same key is a
dictionary hit (:class:`netweave.fingerprint.replay.Fingerprinter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from netweave.capture.compiled import jit

I64 = npt.NDArray[np.int64]

_HEAD_LIMIT = 4096
_CONNECT = (67, 79, 78, 78, 69, 67, 84, 32)  # b"CONNECT "
_HTTP = (72, 84, 84, 80, 47)  # b"HTTP/"
_ABSENT = 0xFFFF  # an extension of length 0: its content was not read
_EXT_SERVER_NAME = 0x0000
_EXT_SIGNATURE_ALGORITHMS = 0x000D
_EXT_ALPN = 0x0010
_EXT_SUPPORTED_VERSIONS = 0x002B


@dataclass(frozen=True, slots=True)
class HelloScan:
    """Every hello found, in payload order and stream order within a payload."""

    payload: I64  # index of the payload it was found in
    end: I64  # offset in the payload where the record completing it ends
    kind: I64  # 1 ClientHello, 2 ServerHello
    key_start: I64
    key_end: I64
    keys: bytes  # the keys back to back

    def key_list(self) -> list[bytes]:
        """Each hello's key, in scan order."""
        blob = self.keys
        return [blob[a:b] for a, b in zip(self.key_start.tolist(), self.key_end.tolist(),
                                          strict=True)]  # fmt: skip


def scan_hellos(payloads: list[bytes]) -> HelloScan:
    """Find the hellos of every payload in ``payloads``."""
    blob = b"".join(payloads)
    sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
    bounds = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    return scan_spans(blob, bounds[:-1], bounds[1:])


def scan_spans(data: bytes | npt.NDArray[np.uint8], start: I64, stop: I64) -> HelloScan:
    """Find the hellos of the payloads ``data[start[k]:stop[k]]`` (payload ``k``)."""
    img = np.frombuffer(data, dtype=np.uint8)
    sizes = stop - start
    total = int(sizes.sum())
    room = total // 39 + 1  # a well-formed hello takes 39 bytes or more
    out = np.zeros((5, room), dtype=np.int64)
    keys = np.empty(2 * total + 64, dtype=np.uint8)
    scratch = np.empty(int(sizes.max()) if sizes.size else 0, dtype=np.uint8)
    found, used = _scan(img, start, stop, out, keys, scratch)
    if used < 0:
        raise RuntimeError("hello scan ran out of room (a bug in its sizing)")
    return HelloScan(out[0, :found], out[1, :found], out[2, :found], out[3, :found],
                     out[4, :found], keys[:used].tobytes())  # fmt: skip


@jit
def _starts(d: Any, a: int, n: int, prefix: Any) -> bool:
    k = 0
    while k < len(prefix) and k < n and d[a + k] == prefix[k]:
        k += 1
    return k == len(prefix)


@jit
def _scan(data: Any, start: Any, stop: Any, out: Any, keys: Any, scratch: Any) -> tuple[int, int]:
    found = 0
    used = 0
    for p in range(start.shape[0]):
        a = start[p]
        n = stop[p] - a
        pos = 0
        if _starts(data, a, n, _CONNECT) or _starts(data, a, n, _HTTP):
            head = -1
            for k in range(min(n, _HEAD_LIMIT) - 3):
                q = a + k
                if data[q] == 13 and data[q + 1] == 10 and data[q + 2] == 13 and data[q + 3] == 10:
                    head = k
                    break
            if head < 0:
                continue
            pos = head + 4
        # handshake messages of the TLS records, joined across records in ``scratch``
        ps = 0
        pe = 0
        while pos + 5 <= n:
            ctype = data[a + pos]
            if ctype < 0x14 or ctype > 0x17 or data[a + pos + 1] != 0x03:
                break
            end = pos + 5 + ((int(data[a + pos + 3]) << 8) | int(data[a + pos + 4]))
            if end > n:
                break
            if ctype == 0x16:
                size = end - pos - 5
                scratch[pe : pe + size] = data[a + pos + 5 : a + end]
                pe += size
                while pe - ps >= 4:
                    need = 4 + ((int(scratch[ps + 1]) << 16) | (int(scratch[ps + 2]) << 8)
                                | int(scratch[ps + 3]))  # fmt: skip
                    if pe - ps < need:
                        break
                    kind = scratch[ps]
                    if found >= out.shape[1] or used + need + 16 > keys.shape[0]:
                        return found, -1  # no room: cannot happen with the sizes given
                    key_at = used
                    if kind == 1:
                        used = _client_key(scratch, ps + 4, ps + need, keys, used)
                    elif kind == 2:
                        used = _server_key(scratch, ps + 4, ps + need, keys, used)
                    else:
                        used = -1
                    if used >= 0:
                        out[0, found] = p
                        out[1, found] = end
                        out[2, found] = kind
                        out[3, found] = key_at
                        out[4, found] = used
                        found += 1
                    else:
                        used = key_at
                    ps += need
                if ps == pe:
                    ps = 0
                    pe = 0
            else:
                ps = 0
                pe = 0
            pos = end
    return found, used


@jit
def _put16(keys: Any, at: Any, value: Any) -> Any:
    keys[at] = (value >> 8) & 0xFF
    keys[at + 1] = value & 0xFF
    return at + 2


@jit
def _copy(keys: Any, at: Any, b: Any, lo: Any, hi: Any) -> Any:
    keys[at : at + hi - lo] = b[lo:hi]
    return at + hi - lo


@jit
def _u16(b: Any, p: Any) -> Any:
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@jit
def _alpn_ok(b: Any, pos: int, stop: int) -> int:
    """End of a well-formed ALPN name list at ``pos`` (bounded by ``stop``), else -1."""
    if pos + 2 > stop:
        return -1
    end: int = pos + 2 + _u16(b, pos)
    if end > stop:
        return -1
    q = pos + 2
    while q < end:
        q += 1 + int(b[q])
        if q > end:
            return -1
    return end


@jit
def _client_key(b: Any, s: int, e: int, keys: Any, at: int) -> int:
    """Key of the ClientHello body ``b[s:e]`` written at ``keys[at]``; -1 when malformed.

    The checks are those of ``tls_hello._client_hello``.
    """
    n = e - s
    if n < 35:
        return -1
    pos = 35 + int(b[s + 34])
    if pos + 2 > n:
        return -1
    size = _u16(b, s + pos)
    pos += 2
    if size % 2 or pos + size > n:
        return -1
    keys[at] = 1
    at = _put16(keys, at + 1, _u16(b, s))
    at = _put16(keys, at, size)
    at = _copy(keys, at, b, s + pos, s + pos + size)
    pos += size
    if pos >= n:
        return -1
    pos += 1 + int(b[s + pos])
    if pos > n:
        return -1
    count_at = at
    at += 2
    count = 0
    if pos < n:
        if pos + 2 > n:
            return -1
        end = pos + 2 + _u16(b, s + pos)
        pos += 2
        if end > n:
            return -1
        while pos < end:
            if pos + 4 > end:
                return -1
            etype = _u16(b, s + pos)
            length = _u16(b, s + pos + 2)
            pos += 4
            if pos + length > end:
                return -1
            count += 1
            at = _put16(keys, at, etype)
            stop = pos + length
            if etype == _EXT_SUPPORTED_VERSIONS:
                if not length:
                    at = _put16(keys, at, _ABSENT)
                else:
                    listed = np.int64(b[s + pos])
                    if pos + 1 + listed > stop:
                        return -1
                    take = listed // 2 * 2
                    at = _put16(keys, at, take)
                    at = _copy(keys, at, b, s + pos + 1, s + pos + 1 + take)
            elif etype == _EXT_SIGNATURE_ALGORITHMS:
                if not length:
                    at = _put16(keys, at, _ABSENT)
                else:
                    sized = np.int64(_u16(b, s + pos)) if length >= 2 else np.int64(-1)
                    if sized < 0 or pos + 2 + sized > stop:
                        return -1
                    take = sized // 2 * 2
                    at = _put16(keys, at, take)
                    at = _copy(keys, at, b, s + pos + 2, s + pos + 2 + take)
            elif etype == _EXT_ALPN:
                if not length:
                    at = _put16(keys, at, _ABSENT)
                else:
                    names_end = _alpn_ok(b, s + pos, s + stop)
                    if names_end < 0:
                        return -1
                    at = _put16(keys, at, names_end - (s + pos))
                    at = _copy(keys, at, b, s + pos, names_end)
            elif (
                etype == _EXT_SERVER_NAME
                and length >= 5
                and b[s + pos + 2] == 0
                and pos + 5 + _u16(b, s + pos + 3) > stop
            ):
                return -1  # a host_name entry running past its extension
            pos = stop
    _put16(keys, count_at, count)
    return at


@jit
def _server_key(b: Any, s: int, e: int, keys: Any, at: int) -> int:
    """Key of the ServerHello body ``b[s:e]`` written at ``keys[at]``; -1 when malformed.

    The checks are those of ``tls_hello._server_hello``.
    """
    n = e - s
    pos = 2 + 32
    if pos + 1 > n:
        return -1
    pos += 1 + int(b[s + pos])
    if pos + 3 > n:  # cipher suite and compression method
        return -1
    keys[at] = 2
    at = _put16(keys, at + 1, _u16(b, s))
    at = _put16(keys, at, _u16(b, s + pos))
    pos += 3
    count_at = at
    at += 2
    count = 0
    if pos < n:
        if pos + 2 > n:
            return -1
        end = pos + 2 + _u16(b, s + pos)
        pos += 2
        if end > n:
            return -1
        while pos < end:
            if pos + 2 > end:
                return -1
            etype = _u16(b, s + pos)
            if pos + 4 > end:
                return -1
            length = _u16(b, s + pos + 2)
            pos += 4
            if pos + length > end:
                return -1
            count += 1
            at = _put16(keys, at, etype)
            if etype == _EXT_SUPPORTED_VERSIONS:
                if length >= 2:
                    at = _put16(keys, at, 2)
                    at = _copy(keys, at, b, s + pos, s + pos + 2)
                else:
                    at = _put16(keys, at, _ABSENT)
            elif etype == _EXT_ALPN:
                if not length:
                    at = _put16(keys, at, _ABSENT)
                else:
                    names_end = _alpn_ok(b, s + pos, s + pos + length)
                    if names_end < 0:
                        return -1
                    at = _put16(keys, at, names_end - (s + pos))
                    at = _copy(keys, at, b, s + pos, names_end)
            pos += length
    _put16(keys, count_at, count)
    return at
