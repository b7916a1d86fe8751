"""The classic BPF filter of the AF_PACKET backend, hand-assembled.

It keeps what the event records are made of and drops the rest in the kernel:

* TCP segments with SYN set (SYN, SYN-ACK and odd combinations);
* TCP segments that carry payload (the first payload of a flow direction cannot be known in
  cBPF, so every payload segment passes and userspace keeps the first);
* every UDP datagram (first payloads of DNS, QUIC; VXLAN/Geneve tunnels);
* GRE and IP-in-IP (tunnels the decoder opens), IPv6 with extension headers unless the
  first one leads to ICMPv6, and frames whose VLAN tag stayed in the data (the decoder
  sorts those out);
* pure ACKs, FINs and RSTs without payload, non-first IPv4 fragments, ARP, ICMP, ICMPv6
  (MLD reports included): dropped.

The network protocol is read from the socket buffer (``SKF_AD_PROTOCOL``), not from the
frame, so the same program serves Ethernet-like devices (``link_offset`` 14) and raw-IP
devices (0), and VLAN tags the kernel took out of the frame (reported through
``PACKET_AUXDATA``) do not shift the offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["Insn", "handshake_filter", "pack_program"]

# Opcodes (linux/bpf_common.h, linux/filter.h).
LD_H_ABS: Final = 0x28
LD_B_ABS: Final = 0x30
LD_B_IND: Final = 0x50
LDX_B_MSH: Final = 0xB1
LD_MEM: Final = 0x60
LDX_MEM: Final = 0x61
ST: Final = 0x02
TAX: Final = 0x07
ALU_AND_K: Final = 0x54
ALU_RSH_K: Final = 0x74
ALU_SUB_X: Final = 0x1C
JEQ_K: Final = 0x15
JGT_K: Final = 0x25
JSET_K: Final = 0x45
RET_K: Final = 0x06

SKF_AD_OFF: Final = -0x1000
SKF_AD_PROTOCOL: Final = 0

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_P_8021Q: Final = 0x8100
ETH_P_8021AD: Final = 0x88A8

TCP_SYN: Final = 0x02
MAX_INSNS: Final = 4096


@dataclass(frozen=True, slots=True)
class Insn:
    """One cBPF instruction; ``jt``/``jf`` name labels (``""``: fall through)."""

    code: int
    k: int = 0
    jt: str = ""
    jf: str = ""
    label: str = ""


def handshake_filter(link_offset: int = 14, snaplen: int = 1024) -> list[tuple[int, int, int, int]]:
    """The filter as ``(code, jt, jf, k)`` tuples for a link header of ``link_offset`` bytes.

    Accepted packets are cut to ``snaplen`` bytes.
    """
    if link_offset not in (0, 14):
        raise ValueError(f"link_offset must be 0 (raw IP) or 14 (Ethernet), not {link_offset}")
    if not 64 <= snaplen <= 0xFFFF:
        raise ValueError(f"snaplen {snaplen} is outside 64..65535")
    n = link_offset
    accept_protos = (17, 47, 4, 41)
    program = [
        Insn(LD_H_ABS, (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF),
        Insn(JEQ_K, ETH_P_IP, jt="v4"),
        Insn(JEQ_K, ETH_P_IPV6, jt="v6"),
        Insn(JEQ_K, ETH_P_8021Q, jt="accept"),
        Insn(JEQ_K, ETH_P_8021AD, jt="accept"),
        Insn(RET_K, 0),
        # IPv4
        Insn(LD_B_ABS, n + 9, label="v4"),
        Insn(JEQ_K, 6, jt="tcp4"),
        *(Insn(JEQ_K, p, jt="accept") for p in accept_protos),
        Insn(RET_K, 0),
        Insn(LD_H_ABS, n + 6, label="tcp4"),
        Insn(JSET_K, 0x1FFF, jt="drop"),  # a non-first fragment: no TCP header
        Insn(LDX_B_MSH, n),  # X = IPv4 header length
        Insn(LD_B_IND, n + 13),
        Insn(JSET_K, TCP_SYN, jt="accept"),
        Insn(LD_B_IND, n + 12),
        Insn(ALU_AND_K, 0xF0),
        Insn(ALU_RSH_K, 2),
        Insn(ST, 0),  # M[0] = TCP header length
        Insn(LD_H_ABS, n + 2),
        Insn(ALU_SUB_X),  # total length - IP header length
        Insn(ST, 1),
        Insn(LDX_MEM, 0),
        Insn(LD_MEM, 1),
        Insn(ALU_SUB_X),  # payload length
        Insn(JGT_K, 0, jt="accept"),
        Insn(RET_K, 0),
        # IPv6 (extension headers go to userspace: rare, and the decoder walks them)
        Insn(LD_B_ABS, n + 6, label="v6"),
        Insn(JEQ_K, 6, jt="tcp6"),
        *(Insn(JEQ_K, p, jt="accept") for p in (*accept_protos, 44)),
        *(Insn(JEQ_K, p, jt="ext6") for p in (0, 43, 60)),
        Insn(RET_K, 0),
        # One extension header (hop-by-hop, routing, destination options): drop ICMPv6 behind
        # it (MLD reports carry hop-by-hop), let the rest through for the decoder to walk.
        Insn(LD_B_ABS, n + 40, label="ext6"),
        Insn(JEQ_K, 58, jt="drop"),
        Insn(RET_K, snaplen),
        Insn(LD_B_ABS, n + 40 + 13, label="tcp6"),
        Insn(JSET_K, TCP_SYN, jt="accept"),
        Insn(LD_B_ABS, n + 40 + 12),
        Insn(ALU_AND_K, 0xF0),
        Insn(ALU_RSH_K, 2),
        Insn(TAX),
        Insn(LD_H_ABS, n + 4),  # IPv6 payload length
        Insn(ALU_SUB_X),
        Insn(JGT_K, 0, jt="accept"),
        Insn(RET_K, 0, label="drop"),
        Insn(RET_K, snaplen, label="accept"),
    ]
    return _assemble(program)


def _assemble(program: list[Insn]) -> list[tuple[int, int, int, int]]:
    labels = {insn.label: i for i, insn in enumerate(program) if insn.label}
    out: list[tuple[int, int, int, int]] = []
    for i, insn in enumerate(program):
        jumps = []
        for target in (insn.jt, insn.jf):
            if not target:
                jumps.append(0)
                continue
            offset = labels[target] - i - 1
            if not 0 <= offset <= 0xFF:
                raise ValueError(f"cBPF jump from {i} to {target} out of range ({offset})")
            jumps.append(offset)
        out.append((insn.code, jumps[0], jumps[1], insn.k & 0xFFFFFFFF))
    if len(out) > MAX_INSNS:
        raise ValueError(f"cBPF program of {len(out)} instructions exceeds {MAX_INSNS}")
    return out


def pack_program(program: list[tuple[int, int, int, int]]) -> bytes:
    """``struct sock_filter[]`` bytes of a program (``u16 code; u8 jt; u8 jf; u32 k``)."""
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)
