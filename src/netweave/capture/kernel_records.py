"""ctypes mirrors of the flow observer's records in ``bpf/observer.h``.

Every class here is checked against the loaded object's BTF (size and member offsets)
before anything is decoded with it, so a layout change on one side fails loudly.
"""

from __future__ import annotations

from ctypes import Structure, c_uint8, c_uint16, c_uint32, c_uint64

NW_EV_HANDSHAKE = 1
NW_EV_PAYLOAD = 2
NW_EV_FLOW_SEEN = 3


class EventHeader(Structure):
    """``struct nw_event_header``: kind, size (the record's version), ifindex, time."""

    _fields_ = [("kind", c_uint16), ("size", c_uint16), ("ifindex", c_uint32), ("ts_ns", c_uint64)]


class Endpoints(Structure):
    """``struct nw_endpoints``: addresses (IPv4 in the first 4 bytes), ports, protocol."""

    _fields_ = [
        ("src", c_uint8 * 16),
        ("dst", c_uint8 * 16),
        ("src_port", c_uint16),
        ("dst_port", c_uint16),
        ("proto", c_uint8),
        ("ip_version", c_uint8),
        ("_pad", c_uint8 * 2),
    ]


class HandshakeRecord(Structure):
    """``struct nw_handshake``: one TCP segment with SYN set."""

    _fields_ = [
        ("hdr", EventHeader),
        ("ep", Endpoints),
        ("seq", c_uint32),
        ("ack", c_uint32),
        ("flow_label", c_uint32),
        ("window", c_uint16),
        ("tcp_flags", c_uint16),
        ("urgent", c_uint16),
        ("ip_id", c_uint16),
        ("ip_total_length", c_uint16),
        ("payload_length", c_uint16),
        ("ttl", c_uint8),
        ("tos", c_uint8),
        ("ip_flags", c_uint8),
        ("ip_options_length", c_uint8),
        ("options_length", c_uint8),
        ("_pad", c_uint8 * 3),
        ("options", c_uint8 * 40),
    ]


class PayloadRecord(Structure):
    """``struct nw_payload``: the first payload bytes of one direction of a flow."""

    _fields_ = [
        ("hdr", EventHeader),
        ("ep", Endpoints),
        ("length", c_uint16),
        ("captured", c_uint16),
        ("_pad", c_uint8 * 4),
        ("data", c_uint8 * 256),
    ]


class FlowSeenRecord(Structure):
    """``struct nw_flow_seen``: a flow whose handshake was not seen."""

    _fields_ = [
        ("hdr", EventHeader),
        ("ep", Endpoints),
        ("tcp_flags", c_uint16),
        ("_pad", c_uint8 * 6),
    ]


class FlowKey4(Structure):
    """``struct nw_flow_key4``: an IPv4 flow with its endpoints in (address, port) order."""

    _fields_ = [
        ("addr_lo", c_uint8 * 4),
        ("addr_hi", c_uint8 * 4),
        ("port_lo", c_uint16),
        ("port_hi", c_uint16),
        ("ifindex", c_uint16),
        ("proto", c_uint8),
        ("_pad", c_uint8),
    ]


class FlowKey(Structure):
    """``struct nw_flow_key``: a flow with its endpoints in (address, port) order."""

    _fields_ = [
        ("addr_lo", c_uint8 * 16),
        ("addr_hi", c_uint8 * 16),
        ("port_lo", c_uint16),
        ("port_hi", c_uint16),
        ("ifindex", c_uint32),
        ("proto", c_uint8),
        ("ip_version", c_uint8),
        ("_pad", c_uint8 * 6),
    ]


class FlowStats(Structure):
    """``struct nw_flow_stats``: the flow table's counters."""

    _fields_ = [
        ("packets_lo_hi", c_uint64),
        ("bytes_lo_hi", c_uint64),
        ("packets_hi_lo", c_uint64),
        ("bytes_hi_lo", c_uint64),
        ("first_ns", c_uint64),
        ("last_ns", c_uint64),
        ("seen_event_ns", c_uint64),
        ("tcp_flags", c_uint16),
        ("a_is_hi", c_uint8),
        ("handshake_seen", c_uint8),
        ("payload_seen", c_uint32),
        ("ifindex", c_uint32),
        ("_pad", c_uint32),
    ]


class SlotTail(Structure):
    """``struct nw_slot_tail``: a cache slot's counts not yet added to the flow's entry."""

    _fields_ = [
        ("packets_lo_hi", c_uint64),
        ("bytes_lo_hi", c_uint64),
        ("packets_hi_lo", c_uint64),
        ("bytes_hi_lo", c_uint64),
        ("tcp_flags", c_uint16),
        ("payload_seen", c_uint8),
        ("_pad", c_uint8 * 5),
    ]


class FlowSlot4(Structure):
    """``struct nw_flow_slot4``: one slot of the per-CPU IPv4 flow cache."""

    _fields_ = [("key", FlowKey4), ("t", SlotTail)]


class FlowSlot6(Structure):
    """``struct nw_flow_slot6``: one slot of the per-CPU IPv6 flow cache."""

    _fields_ = [("key", FlowKey), ("t", SlotTail)]


RECORDS: dict[str, type[Structure]] = {
    "nw_event_header": EventHeader,
    "nw_endpoints": Endpoints,
    "nw_handshake": HandshakeRecord,
    "nw_payload": PayloadRecord,
    "nw_flow_seen": FlowSeenRecord,
    "nw_flow_key": FlowKey,
    "nw_flow_key4": FlowKey4,
    "nw_flow_stats": FlowStats,
    "nw_slot_tail": SlotTail,
    "nw_flow_slot4": FlowSlot4,
    "nw_flow_slot6": FlowSlot6,
}
"""C struct name -> Python record, for the BTF check at load."""
