// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The flow observer: on tcx (or tc clsact) ingress and egress it keeps a per-flow LRU table
 * and sends SYN/SYN-ACK headers, the first payload of each direction and flows joined
 * mid-stream to a ring buffer. It only reads: every packet continues as if it were absent. */
#include "netweave.h"
#include "observer.h"

#define NW_CONTINUE TC_ACT_UNSPEC
#define NW_FLOW_SEEN_INTERVAL_NS (60ULL * 1000000000ULL)
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nw_flow_key4);
	__type(value, struct nw_flow_stats);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nw_flow_key);
	__type(value, struct nw_flow_stats);
} flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

NW_RINGBUF_DROPS(event_drops);

NW_BTF_RECORD(nw_handshake);
NW_BTF_RECORD(nw_payload);
NW_BTF_RECORD(nw_flow_seen);
NW_BTF_RECORD(nw_flow_key);
NW_BTF_RECORD(nw_flow_key4);
NW_BTF_RECORD(nw_flow_stats);

struct parsed {
	struct nw_endpoints ep;
	__u32 l4_off;      /* offset of the TCP/UDP header from skb->data */
	__u32 payload_off; /* offset of the payload */
	__u16 payload_len;
	__u16 tcp_flags;
	__u16 ip_total_length;
	__u16 ip_id;
	__u32 flow_label;
	__u8 ttl;
	__u8 tos;
	__u8 ip_flags;
	__u8 ip_options_length;
};

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return -1;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		__be16 *inner = data + off + 2;

		if ((void *)(inner + 1) > end)
			return -1;
		proto = *inner;
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		if ((void *)(ip + 1) > end)
			return -1;
		ihl = ip->ihl * 4;
		if (ihl < 20 || (ip->frag_off & bpf_htons(IP_OFFSET_)))
			return -1; /* malformed, or a later fragment without ports */
		__builtin_memcpy(p->ep.src, &ip->saddr, 4);
		__builtin_memcpy(p->ep.dst, &ip->daddr, 4);
		p->ep.ip_version = 4;
		p->ep.proto = ip->protocol;
		p->ttl = ip->ttl;
		p->tos = ip->tos;
		p->ip_flags = bpf_ntohs(ip->frag_off) >> 13;
		p->ip_id = bpf_ntohs(ip->id);
		p->ip_total_length = bpf_ntohs(ip->tot_len);
		p->ip_options_length = ihl - 20;
		p->flow_label = 0;
		off += ihl;
		p->payload_len = p->ip_total_length > ihl ? p->ip_total_length - ihl : 0;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(p->ep.src, &ip6->saddr, 16);
		__builtin_memcpy(p->ep.dst, &ip6->daddr, 16);
		p->ep.ip_version = 6;
		p->ep.proto = ip6->nexthdr;
		p->ttl = ip6->hop_limit;
		p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		p->flow_label = ((__u32)(ip6->flow_lbl[0] & 0x0F) << 16) |
				((__u32)ip6->flow_lbl[1] << 8) | ip6->flow_lbl[2];
		p->ip_flags = 0;
		p->ip_id = 0;
		p->ip_options_length = 0;
		p->payload_len = bpf_ntohs(ip6->payload_len);
		p->ip_total_length = 40 + p->payload_len;
		off += sizeof(*ip6);
	} else {
		return -1;
	}
	p->l4_off = off;
	if (p->ep.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;
		__u32 doff;

		if ((void *)(tcp + 1) > end)
			return -1;
		doff = tcp->doff * 4;
		if (doff < 20)
			return -1;
		p->ep.src_port = bpf_ntohs(tcp->source);
		p->ep.dst_port = bpf_ntohs(tcp->dest);
		p->tcp_flags = bpf_ntohs(*(__be16 *)((void *)tcp + 12)) & 0x0FFF;
		p->payload_off = off + doff;
		p->payload_len = p->payload_len > doff ? p->payload_len - doff : 0;
	} else if (p->ep.proto == IPPROTO_UDP) {
		struct udphdr *udp = data + off;

		if ((void *)(udp + 1) > end)
			return -1;
		p->ep.src_port = bpf_ntohs(udp->source);
		p->ep.dst_port = bpf_ntohs(udp->dest);
		p->tcp_flags = 0;
		p->payload_off = off + sizeof(*udp);
		p->payload_len = p->payload_len > 8 ? p->payload_len - 8 : 0;
	} else {
		return -1;
	}
	return 0;
}

/* Order endpoints so both directions of a flow share one key; returns 1 when src is "hi". */
static __always_inline int make_key(const struct parsed *p, __u32 ifindex, struct nw_flow_key *k)
{
	__u64 s0, s1, d0, d1;
	int src_hi;

	__builtin_memcpy(&s0, p->ep.src, 8);
	__builtin_memcpy(&s1, p->ep.src + 8, 8);
	__builtin_memcpy(&d0, p->ep.dst, 8);
	__builtin_memcpy(&d1, p->ep.dst + 8, 8);
	if (s0 != d0)
		src_hi = s0 > d0;
	else if (s1 != d1)
		src_hi = s1 > d1;
	else
		src_hi = p->ep.src_port > p->ep.dst_port;
	if (src_hi) {
		__builtin_memcpy(k->addr_lo, p->ep.dst, 16);
		__builtin_memcpy(k->addr_hi, p->ep.src, 16);
		k->port_lo = p->ep.dst_port;
		k->port_hi = p->ep.src_port;
	} else {
		__builtin_memcpy(k->addr_lo, p->ep.src, 16);
		__builtin_memcpy(k->addr_hi, p->ep.dst, 16);
		k->port_lo = p->ep.src_port;
		k->port_hi = p->ep.dst_port;
	}
	k->ifindex = ifindex;
	k->proto = p->ep.proto;
	k->ip_version = p->ep.ip_version;
	return src_hi;
}

static __always_inline int make_key4(const struct parsed *p, __u32 ifindex,
				     struct nw_flow_key4 *k)
{
	__u32 s, d;
	int src_hi;

	__builtin_memcpy(&s, p->ep.src, 4);
	__builtin_memcpy(&d, p->ep.dst, 4);
	src_hi = s != d ? s > d : p->ep.src_port > p->ep.dst_port;
	if (src_hi) {
		__builtin_memcpy(k->addr_lo, &d, 4);
		__builtin_memcpy(k->addr_hi, &s, 4);
		k->port_lo = p->ep.dst_port;
		k->port_hi = p->ep.src_port;
	} else {
		__builtin_memcpy(k->addr_lo, &s, 4);
		__builtin_memcpy(k->addr_hi, &d, 4);
		k->port_lo = p->ep.src_port;
		k->port_hi = p->ep.dst_port;
	}
	k->ifindex = ifindex;
	k->proto = p->ep.proto;
	k->_pad = 0;
	return src_hi;
}

static __always_inline void fill_header(struct nw_event_header *h, __u16 kind, __u16 size,
					__u32 ifindex, __u64 now)
{
	h->kind = kind;
	h->size = size;
	h->ifindex = ifindex;
	h->ts_ns = now;
}

/* Copy len bytes (at most max) with constant sizes only: the verifier accepts every load,
 * where one variable-length load loses its bounds to the compiler. */
static __always_inline __u16 copy_ladder(struct __sk_buff *skb, __u32 from, __u32 len, __u8 *dst,
					 const __u32 max)
{
	__u32 at = 0;

	if (len >= max)
		return bpf_skb_load_bytes(skb, from, dst, max) ? 0 : max;
#define NW_STEP(n)                                                                           \
	if ((n) < max && (len & (n))) {                                                      \
		if (at > max - (n) || bpf_skb_load_bytes(skb, from + at, dst + at, (n)))     \
			return at;                                                           \
		at += (n);                                                                   \
	}
	NW_STEP(128)
	NW_STEP(64)
	NW_STEP(32)
	NW_STEP(16)
	NW_STEP(8)
	NW_STEP(4)
	NW_STEP(2)
	NW_STEP(1)
#undef NW_STEP
	return at;
}

static __always_inline void emit_handshake(struct __sk_buff *skb, const struct parsed *p, __u64 now)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct tcphdr *tcp = data + p->l4_off;
	struct nw_handshake *ev;
	__u32 olen;

	if ((void *)(tcp + 1) > end)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_HANDSHAKE, sizeof(*ev), skb->ifindex, now);
	ev->ep = p->ep;
	ev->seq = bpf_ntohl(tcp->seq);
	ev->ack = bpf_ntohl(tcp->ack_seq);
	ev->flow_label = p->flow_label;
	ev->window = bpf_ntohs(tcp->window);
	ev->tcp_flags = p->tcp_flags;
	ev->urgent = bpf_ntohs(tcp->urg_ptr);
	ev->ip_id = p->ip_id;
	ev->ip_total_length = p->ip_total_length;
	ev->payload_length = p->payload_len;
	ev->ttl = p->ttl;
	ev->tos = p->tos;
	ev->ip_flags = p->ip_flags;
	ev->ip_options_length = p->ip_options_length;
	__builtin_memset(ev->options, 0, sizeof(ev->options));
	olen = tcp->doff * 4 - 20; /* 0..40: doff is 4 bits and was checked >= 5 */
	ev->options_length = copy_ladder(skb, p->l4_off + 20, olen, ev->options, NW_TCP_OPT_MAX);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void emit_payload(struct __sk_buff *skb, const struct parsed *p, __u64 now)
{
	struct nw_payload *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	__u32 avail;

	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_PAYLOAD, sizeof(*ev), skb->ifindex, now);
	ev->ep = p->ep;
	ev->length = p->payload_len;
	avail = skb->len > p->payload_off ? skb->len - p->payload_off : 0;
	if (avail > p->payload_len)
		avail = p->payload_len; /* Ethernet padding is not payload */
	ev->captured = copy_ladder(skb, p->payload_off, avail, ev->data, NW_PAYLOAD_MAX);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void emit_flow_seen(struct __sk_buff *skb, const struct parsed *p, __u64 now)
{
	struct nw_flow_seen *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_FLOW_SEEN, sizeof(*ev), skb->ifindex, now);
	ev->ep = p->ep;
	ev->tcp_flags = p->tcp_flags;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	bpf_ringbuf_submit(ev, 0);
}

/* The flow's counters, created on its first packet; *dir is 1 when the sender is "hi". */
static __always_inline struct nw_flow_stats *flow_of(const struct parsed *p, __u32 ifindex,
						     int *dir, int *fresh)
{
	struct nw_flow_stats init = {}, *st;
	void *table, *key;
	struct nw_flow_key4 k4;
	struct nw_flow_key k6;

	if (p->ep.ip_version == 4) {
		*dir = make_key4(p, ifindex, &k4);
		table = &flows4;
		key = &k4;
	} else {
		__builtin_memset(&k6, 0, sizeof(k6));
		*dir = make_key(p, ifindex, &k6);
		table = &flows6;
		key = &k6;
	}
	st = bpf_map_lookup_elem(table, key);
	if (st)
		return st;
	init.first_ns = bpf_ktime_get_ns();
	init.last_ns = init.first_ns;
	init.a_is_hi = *dir;
	init.ifindex = ifindex;
	bpf_map_update_elem(table, key, &init, BPF_NOEXIST);
	*fresh = 1;
	return bpf_map_lookup_elem(table, key);
}

SEC("tc")
int observe(struct __sk_buff *skb)
{
	struct nw_flow_stats *st;
	struct parsed p;
	__u64 before;
	int dir = 0, fresh = 0;

	__builtin_memset(&p.ep, 0, sizeof(p.ep)); /* events copy it whole: no stack bytes leak */
	if (parse(skb, &p))
		return NW_CONTINUE;
	st = flow_of(&p, skb->ifindex, &dir, &fresh);
	if (!st)
		return NW_CONTINUE;
	if (dir) {
		before = __sync_fetch_and_add(&st->packets_hi_lo, 1);
		__sync_fetch_and_add(&st->bytes_hi_lo, skb->len);
	} else {
		before = __sync_fetch_and_add(&st->packets_lo_hi, 1);
		__sync_fetch_and_add(&st->bytes_lo_hi, skb->len);
	}
	/* Reading a clock costs 25-35 ns here: refresh last-seen on control packets and every
	 * 64th packet of a direction; userspace knows a flow whose counts grew was alive. */
	if (!(before & 63) || (p.tcp_flags & 0x07))
		st->last_ns = bpf_ktime_get_ns();
	if ((st->tcp_flags | p.tcp_flags) != st->tcp_flags)
		st->tcp_flags |= p.tcp_flags;

	if (p.tcp_flags & 0x02) { /* SYN */
		st->handshake_seen = 1;
		emit_handshake(skb, &p, bpf_ktime_get_ns());
	} else if (!st->handshake_seen && (fresh || !(before & 63))) {
		__u64 now = bpf_ktime_get_ns();

		if (fresh || now - st->seen_event_ns >= NW_FLOW_SEEN_INTERVAL_NS) {
			st->seen_event_ns = now;
			emit_flow_seen(skb, &p, now);
		}
	}
	if (p.payload_len && !(st->payload_seen & (1U << dir))) {
		__u32 old = __sync_fetch_and_or(&st->payload_seen, 1U << dir);

		if (!(old & (1U << dir)))
			emit_payload(skb, &p, bpf_ktime_get_ns());
	}
	return NW_CONTINUE;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
