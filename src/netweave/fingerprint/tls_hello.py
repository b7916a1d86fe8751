"""Sans-IO parser of TLS ClientHello and ServerHello messages from a flow's first bytes.

Input is the start of a TCP payload (TLS records, possibly several carrying one handshake
message); output is a :class:`ClientHello` or :class:`ServerHello` with the fields JA4 and
JA4S read, or ``None`` when the bytes are not a complete, well-formed hello. Never raises
on bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

HANDSHAKE = 0x16
RECORD_TYPES = (0x14, 0x15, 0x16, 0x17)
CLIENT_HELLO = 1
SERVER_HELLO = 2
EXT_SERVER_NAME = 0x0000
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B


def is_grease(value: int) -> bool:
    """True for the GREASE values of RFC 8701 (0x0a0a, 0x1a1a, ... 0xfafa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The parts of a ClientHello that JA4 reads, in wire order."""

    version: int
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    supported_versions: tuple[int, ...]
    alpn: tuple[bytes, ...]
    signature_algorithms: tuple[int, ...]
    server_name: str | None


@dataclass(frozen=True, slots=True)
class ServerHello:
    """The parts of a ServerHello that JA4S reads, in wire order."""

    version: int
    cipher: int
    extensions: tuple[int, ...]
    supported_version: int | None
    alpn: tuple[bytes, ...]


class _MalformedError(Exception):
    pass


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _MalformedError
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def sub(self, n: int) -> _Reader:
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n)

    def left(self) -> int:
        return self.end - self.pos

    def u16s(self) -> tuple[int, ...]:
        """All remaining whole 16-bit values (an odd trailing byte is ignored)."""
        count = (self.end - self.pos) // 2
        values: tuple[int, ...] = struct.unpack_from(f"!{count}H", self.data, self.pos)
        self.pos = self.end
        return values


def handshake_messages(data: bytes, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """``(end_offset, type, body)`` of each handshake message in the TLS records at ``start``.

    Messages spanning several records are joined; ``end_offset`` is where the record that
    completed the message ends. The walk stops at the first byte that is not a TLS record.
    """
    pending = bytearray()
    pos = start
    while pos + 5 <= len(data):
        ctype, major = data[pos], data[pos + 1]
        if ctype not in RECORD_TYPES or major != 0x03:
            return
        length = (data[pos + 3] << 8) | data[pos + 4]
        end = pos + 5 + length
        if end > len(data):
            return
        if ctype == HANDSHAKE:
            pending += data[pos + 5 : end]
            while len(pending) >= 4:
                need = 4 + int.from_bytes(pending[1:4], "big")
                if len(pending) < need:
                    break
                yield end, pending[0], bytes(pending[4:need])
                del pending[:need]
        else:
            pending.clear()
        pos = end


def stream_hellos(data: bytes) -> Iterator[tuple[int, ClientHello | ServerHello]]:
    """Every well-formed ClientHello/ServerHello at the start of a TCP stream.

    The stream may open with TLS records directly, or with an HTTP ``CONNECT`` request or
    its response, after which the TLS records follow. Yields ``(end_offset, hello)``.
    """
    start = 0
    if data.startswith((b"CONNECT ", b"HTTP/")):
        head_end = data.find(b"\r\n\r\n", 0, 4096)
        if head_end < 0:
            return
        start = head_end + 4
    for end, kind, body in handshake_messages(data, start):
        hello = parse_hello_body(kind, body)
        if hello is not None:
            yield end, hello


def parse_hello_body(kind: int, body: bytes) -> ClientHello | ServerHello | None:
    """Parse a handshake message body of type 1 or 2; ``None`` for other types or bad data."""
    try:
        if kind == CLIENT_HELLO:
            return _client_hello(body)
        if kind == SERVER_HELLO:
            return _server_hello(body)
    except _MalformedError:
        return None
    return None


def parse_hello(payload: bytes) -> ClientHello | ServerHello | None:
    """The first hello in the TLS records at the start of ``payload``, if any."""
    for _end, hello in stream_hellos(payload):
        return hello
    return None


def _extensions(r: _Reader) -> list[tuple[int, _Reader]]:
    out: list[tuple[int, _Reader]] = []
    if r.left() == 0:
        return out
    block = r.sub(r.u16())
    while block.left():
        etype = block.u16()
        out.append((etype, block.sub(block.u16())))
    return out


def _alpn(r: _Reader) -> tuple[bytes, ...]:
    names = r.sub(r.u16())
    out: list[bytes] = []
    while names.left():
        out.append(names.take(names.u8()))
    return tuple(out)


def _client_hello(body: bytes) -> ClientHello:
    # Walked with plain index arithmetic: this runs once per TLS connection.
    n = len(body)
    if n < 35:
        raise _MalformedError
    version = (body[0] << 8) | body[1]
    pos = 35 + body[34]  # after version, random and the session id
    if pos + 2 > n:
        raise _MalformedError
    size = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if size % 2 or pos + size > n:
        raise _MalformedError
    ciphers: tuple[int, ...] = struct.unpack_from(f"!{size // 2}H", body, pos)
    pos += size
    if pos >= n:
        raise _MalformedError
    pos += 1 + body[pos]  # compression methods
    if pos > n:
        raise _MalformedError
    extensions: list[int] = []
    versions: tuple[int, ...] = ()
    alpn: tuple[bytes, ...] = ()
    sigalgs: tuple[int, ...] = ()
    server_name: str | None = None
    if pos < n:
        if pos + 2 > n:
            raise _MalformedError
        end = pos + 2 + ((body[pos] << 8) | body[pos + 1])
        pos += 2
        if end > n:
            raise _MalformedError
        while pos < end:
            if pos + 4 > end:
                raise _MalformedError
            etype = (body[pos] << 8) | body[pos + 1]
            length = (body[pos + 2] << 8) | body[pos + 3]
            pos += 4
            if pos + length > end:
                raise _MalformedError
            extensions.append(etype)
            if length and etype in _CLIENT_EXTENSIONS_READ:
                stop = pos + length
                if etype == EXT_SUPPORTED_VERSIONS:
                    count = body[pos]
                    if pos + 1 + count > stop:
                        raise _MalformedError
                    versions = struct.unpack_from(f"!{count // 2}H", body, pos + 1)
                elif etype == EXT_SIGNATURE_ALGORITHMS:
                    count = ((body[pos] << 8) | body[pos + 1]) if length >= 2 else -1
                    if count < 0 or pos + 2 + count > stop:
                        raise _MalformedError
                    sigalgs = struct.unpack_from(f"!{count // 2}H", body, pos + 2)
                elif etype == EXT_ALPN:
                    alpn = _alpn(_Reader(body, pos, stop))
                elif length >= 5 and body[pos + 2] == 0:  # server_name, host_name entry
                    size = (body[pos + 3] << 8) | body[pos + 4]
                    if pos + 5 + size > stop:
                        raise _MalformedError
                    server_name = body[pos + 5 : pos + 5 + size].decode("ascii", "replace")
            pos += length
    return ClientHello(
        version=version,
        ciphers=ciphers,
        extensions=tuple(extensions),
        supported_versions=versions,
        alpn=alpn,
        signature_algorithms=sigalgs,
        server_name=server_name,
    )


_CLIENT_EXTENSIONS_READ = frozenset(
    (EXT_SUPPORTED_VERSIONS, EXT_ALPN, EXT_SIGNATURE_ALGORITHMS, EXT_SERVER_NAME)
)


def _server_hello(body: bytes) -> ServerHello:
    r = _Reader(body)
    version = r.u16()
    r.take(32)
    r.take(r.u8())  # session id
    cipher = r.u16()
    r.u8()  # compression method
    extensions: list[int] = []
    selected: int | None = None
    alpn: tuple[bytes, ...] = ()
    for etype, ext in _extensions(r):
        extensions.append(etype)
        if etype == EXT_SUPPORTED_VERSIONS and ext.left() >= 2:
            selected = ext.u16()
        elif etype == EXT_ALPN and ext.left():
            alpn = _alpn(ext)
    return ServerHello(
        version=version,
        cipher=cipher,
        extensions=tuple(extensions),
        supported_version=selected,
        alpn=alpn,
    )
