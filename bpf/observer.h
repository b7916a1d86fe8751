/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Records the flow observer shares with userspace. Each is versioned by its size: the
 * decoder checks every layout against the object's BTF, and a record of the wrong size is
 * counted and dropped, never decoded. Addresses are 16 bytes; IPv4 sits in the first 4. */
#ifndef NETWEAVE_OBSERVER_H
#define NETWEAVE_OBSERVER_H

#define NW_PAYLOAD_MAX 256
#define NW_TCP_OPT_MAX 40

enum nw_kind {
	NW_EV_HANDSHAKE = 1,
	NW_EV_PAYLOAD = 2,
	NW_EV_FLOW_SEEN = 3,
};

/* IPv4 flows: a 16-byte key hashes in half the time of the IPv6 one (measured here). */
struct nw_flow_key4 {
	__u8 addr_lo[4];  /* the endpoint with the lower (address, port) */
	__u8 addr_hi[4];
	__u16 port_lo;    /* host order */
	__u16 port_hi;
	__u16 ifindex;    /* low 16 bits; the full index is in nw_flow_stats */
	__u8 proto;
	__u8 _pad;
};

struct nw_flow_key {
	__u8 addr_lo[16]; /* the endpoint with the lower (address, port) */
	__u8 addr_hi[16];
	__u16 port_lo;    /* host order */
	__u16 port_hi;
	__u32 ifindex;
	__u8 proto;
	__u8 ip_version;
	__u8 _pad[6];
};

struct nw_flow_stats {
	__u64 packets_lo_hi; /* from lo to hi */
	__u64 bytes_lo_hi;
	__u64 packets_hi_lo;
	__u64 bytes_hi_lo;
	__u64 first_ns;      /* bpf_ktime_get_ns */
	__u64 last_ns;       /* refreshed by SYN/FIN/RST and every 64th packet of a direction */
	__u64 seen_event_ns; /* last FlowSeen event for this flow */
	__u16 tcp_flags;     /* OR of every TCP flags field seen */
	__u8 a_is_hi;        /* 1 when the flow's first packet came from hi */
	__u8 handshake_seen;
	__u32 payload_seen;  /* bit 0: lo->hi first payload sent, bit 1: hi->lo (atomic) */
	__u32 ifindex;
	__u32 _pad;
};

/* Per-CPU flow cache: a direct-mapped array of slots in front of the flow tables. A slot
 * holds one flow's key and the packets of it this CPU saw since it last added them to the
 * flow's table entry (plain adds, no lookup of the shared table); userspace adds what the
 * slots hold when it reads the tables. Power-of-two sizes: the index is a hash's top bits. */
#define NW_CACHE4_BITS 11
#define NW_CACHE6_BITS 9

struct nw_slot_tail {
	__u64 packets_lo_hi; /* not yet in the table entry */
	__u64 bytes_lo_hi;
	__u64 packets_hi_lo;
	__u64 bytes_hi_lo;
	__u16 tcp_flags;     /* flags already in the entry, SYN/FIN/RST left out */
	__u8 payload_seen;   /* the entry's payload_seen bits when the slot was filled */
	__u8 _pad[5];
};

struct nw_flow_slot4 {
	struct nw_flow_key4 key; /* protocol 0: an empty slot */
	struct nw_slot_tail t;
};

struct nw_flow_slot6 {
	struct nw_flow_key key;  /* protocol 0: an empty slot */
	struct nw_slot_tail t;
};

struct nw_event_header {
	__u16 kind;
	__u16 size;
	__u32 ifindex;
	__u64 ts_ns;
};

struct nw_endpoints {
	__u8 src[16];
	__u8 dst[16];
	__u16 src_port;
	__u16 dst_port;
	__u8 proto;
	__u8 ip_version;
	__u8 _pad[2];
};

struct nw_handshake {
	struct nw_event_header hdr;
	struct nw_endpoints ep;
	__u32 seq;
	__u32 ack;
	__u32 flow_label;
	__u16 window;
	__u16 tcp_flags;     /* 12 bits: reserved, NS, CWR, ECE, URG, ACK, PSH, RST, SYN, FIN */
	__u16 urgent;
	__u16 ip_id;
	__u16 ip_total_length;
	__u16 payload_length;
	__u8 ttl;
	__u8 tos;
	__u8 ip_flags;       /* reserved 0x4, DF 0x2, MF 0x1 */
	__u8 ip_options_length;
	__u8 options_length;
	__u8 _pad[3];
	__u8 options[NW_TCP_OPT_MAX];
};

struct nw_payload {
	struct nw_event_header hdr;
	struct nw_endpoints ep;
	__u16 length;        /* payload bytes in the packet */
	__u16 captured;      /* bytes copied into data */
	__u8 _pad[4];
	__u8 data[NW_PAYLOAD_MAX];
};

struct nw_flow_seen {
	struct nw_event_header hdr;
	struct nw_endpoints ep;
	__u16 tcp_flags;
	__u8 _pad[6];
};

#endif /* NETWEAVE_OBSERVER_H */
