"""The fast ring-buffer decoder agrees with the ctypes view of ``struct nw_sock_event``."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from netweave.sockets.live import EVENT_SIZE, SockEvent, decode, decode_record


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=EVENT_SIZE, max_size=EVENT_SIZE),
    st.sampled_from([socket.AF_INET, socket.AF_INET6, 0, 77]),
)
def test_struct_decoder_equals_ctypes_decoder(raw: bytes, family: int) -> None:
    # Put a real family in place (its offset: cookie, ts, pid, netns, 2 addresses, 2 ports).
    offset = 8 + 8 + 4 + 4 + 16 + 16 + 2 + 2
    record = raw[:offset] + struct.pack("=H", family) + raw[offset + 2 :]
    names: dict[bytes, str] = {}
    fast = decode_record(record, names)
    assert fast == decode(SockEvent.from_buffer_copy(record))
    assert decode_record(record, names) == fast  # the address cache changes nothing


def test_ipv4_record_fields() -> None:
    record = struct.pack(
        "=QQII16s16sHHHBBB7x16s",
        0xDEADBEEF, 123456789, 4242, 4026531840,
        socket.inet_aton("10.1.2.3"), socket.inet_aton("192.0.2.7"),
        0, 443, socket.AF_INET, 1, 7, 2, b"curl\0garbage",
    )  # fmt: skip
    event = decode_record(record)
    assert (event.cookie, event.ktime_ns, event.pid, event.netns) == (
        0xDEADBEEF, 123456789, 4242, 4026531840,
    )  # fmt: skip
    assert (event.saddr, event.daddr, event.sport, event.dport) == ("10.1.2.3", "192.0.2.7", 0, 443)
    assert (event.old_state, event.new_state, event.comm) == (7, 2, "curl")
