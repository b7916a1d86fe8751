"""The sock_diag and /proc/net decoders: real kernel output, malformed input, fuzzing."""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.sockets import diag, procnet
from netweave.sockets.records import RawSocket, TcpState


def _loopback_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def test_diag_and_procfs_see_the_same_loopback_connection() -> None:
    server, client, accepted = _loopback_pair()
    try:
        port = server.getsockname()[1]
        via_diag = {_key(s) for s in diag.dump("tcp", 4) if port in (s.local_port, s.remote_port)}
        via_proc = {
            _key(s)
            for s in procnet.read_all()
            if s.proto == "tcp" and port in (s.local_port, s.remote_port)
        }
        assert via_diag == via_proc
        states = sorted(key[4] for key in via_diag)
        assert states == [TcpState.ESTABLISHED, TcpState.ESTABLISHED, TcpState.LISTEN]
        inodes = {key[5] for key in via_diag}
        assert Path(f"/proc/self/fd/{client.fileno()}").readlink().name.strip("socket:[]") in {
            str(i) for i in inodes
        }
    finally:
        for sock in (client, accepted, server):
            sock.close()


def _key(s: RawSocket) -> tuple[object, ...]:
    return (s.local_ip, s.local_port, s.remote_ip, s.remote_port, s.state, s.inode, s.uid)


def test_ipv6_v6only_flag_comes_from_diag() -> None:
    dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    only = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        dual.bind(("::", 0))
        only.bind(("::", 0))
        dual.listen()
        only.listen()
        flags = {s.local_port: s.v6only for s in diag.dump("tcp", 6)}
        assert flags[dual.getsockname()[1]] is False
        assert flags[only.getsockname()[1]] is True
    finally:
        dual.close()
        only.close()


def test_missing_diag_module_is_reported() -> None:
    # SCTP, DCCP and raw sockets have their own diag modules, not loaded on a stock host.
    for number, name in ((132, "sctp"), (33, "dccp"), (255, "raw")):
        try:
            diag.dump_protocol(number, 4, name)
        except diag.DiagUnavailableError as exc:
            assert name in str(exc)
            assert exc.errno == 2
            return
    pytest.skip("this kernel has sctp, dccp and raw diag handlers loaded: nothing is missing")


def test_truncated_reply_names_the_offset() -> None:
    header = struct.pack("=IHHII", 16 + 72, diag.SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    with pytest.raises(diag.DiagFormatError, match="byte 0"):
        diag.parse_messages(header + b"\0" * 10, "tcp", [])
    with pytest.raises(diag.DiagFormatError, match="truncated netlink header at byte 0"):
        diag.parse_messages(b"\1\2\3", "tcp", [])


def test_procfs_bad_line_names_file_and_line() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode\n"
        "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 12345 1 0000000000000000 100 0 0 10 0\n"
        "   1: zz00007F:0016 00000000:0000 0A\n"
    )
    with pytest.raises(procnet.ProcNetFormatError, match=r"/x/tcp line 3"):
        procnet.parse_table(text, "tcp", 4, "/x/tcp")
    first = procnet.parse_table(text.rsplit("\n", 2)[0], "tcp", 4)
    assert first == [RawSocket("tcp", 4, 10, "127.0.0.1", 22, "0.0.0.0", 0, 12345, 0, 0, False)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_diag_parser_never_raises_anything_else(data: bytes) -> None:
    out: list[RawSocket] = []
    with contextlib.suppress(diag.DiagFormatError):
        diag.parse_messages(data, "tcp", out)
    assert all(s.proto == "tcp" for s in out)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([2, 3, 20, 99]),
            st.sampled_from([socket.AF_INET, socket.AF_INET6, 0]),
            st.binary(min_size=0, max_size=120),
        ),
        max_size=4,
    )
)
def test_diag_parser_on_framed_messages(messages: list[tuple[int, int, bytes]]) -> None:
    data = b""
    for kind, family, payload in messages:
        body = bytes([family]) + payload
        length = 16 + len(body)
        data += struct.pack("=IHHII", length, kind, 0, 1, 0) + body + b"\0" * (-length % 4)
    out: list[RawSocket] = []
    with contextlib.suppress(diag.DiagFormatError):
        diag.parse_messages(data, "udp", out)
    assert all(s.family in (4, 6) for s in out)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_procfs_parser_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(procnet.ProcNetFormatError):
        for sock in procnet.parse_table("header\n" + text, "tcp", 6):
            assert 0 <= sock.local_port <= 0xFFFF
            assert 0 <= sock.remote_port <= 0xFFFF
