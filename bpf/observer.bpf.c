// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The flow observer: on tcx (or tc clsact) ingress and egress it keeps a per-flow LRU table
 * and sends SYN/SYN-ACK headers, the first payload of each direction and flows joined
 * mid-stream to a ring buffer. It only reads: every packet continues as if it were absent.
 *
 * Cost: most packets belong to an established flow and change nothing but its counters.
 * Those are counted in a per-CPU direct-mapped cache slot (an inlined array lookup, a key
 * compare and plain adds: no hash-table lookup, no atomics, no clock); the slot's counts go
 * to the shared LRU entry every 64th packet of a direction, on SYN/FIN/RST, on a first
 * payload or new flag, and when another flow takes the slot. Userspace adds what the slots
 * hold when it reads the tables (capture/flow_slots.py). Keys are built as little-endian
 * words, which every BPF target netweave builds for is. */
#include "netweave.h"
#include "observer.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "observer.bpf.c builds flow keys as little-endian words"
#endif

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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << NW_CACHE4_BITS);
	__type(key, __u32);
	__type(value, struct nw_flow_slot4);
} cache4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << NW_CACHE6_BITS);
	__type(key, __u32);
	__type(value, struct nw_flow_slot6);
} cache6 SEC(".maps");

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
NW_BTF_RECORD(nw_flow_slot4);
NW_BTF_RECORD(nw_flow_slot6);

/* What the per-packet path needs; events read the rest again (see describe). */
struct parsed {
	__u32 l3_off;      /* offset of the IP header from skb->data */
	__u32 l4_off;      /* offset of the TCP/UDP header */
	__u32 payload_off; /* offset of the payload */
	__u16 payload_len;
	__u16 tcp_flags;
	__u16 src_port;    /* host order */
	__u16 dst_port;
	__u8 ip_version;
	__u8 proto;
};

/* The header fields events carry, read on the rare path that sends one. */
struct described {
	struct nw_endpoints ep;
	__u32 flow_label;
	__u16 ip_total_length;
	__u16 ip_id;
	__u8 ttl;
	__u8 tos;
	__u8 ip_flags;
	__u8 ip_options_length;
};

/* TCP or UDP at off (ip_len bytes after the IP header): fills p's layer-4 fields. */
static __always_inline int parse_l4(void *data, void *end, __u32 off, __u32 ip_len,
				    struct parsed *p)
{
	p->l4_off = off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;
		__u32 doff;

		if ((void *)(tcp + 1) > end)
			return -1;
		doff = tcp->doff * 4;
		if (doff < 20)
			return -1;
		p->src_port = bpf_ntohs(tcp->source);
		p->dst_port = bpf_ntohs(tcp->dest);
		p->tcp_flags = bpf_ntohs(*(__be16 *)((void *)tcp + 12)) & 0x0FFF;
		p->payload_off = off + doff;
		p->payload_len = ip_len > doff ? ip_len - doff : 0;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *udp = data + off;

		if ((void *)(udp + 1) > end)
			return -1;
		p->src_port = bpf_ntohs(udp->source);
		p->dst_port = bpf_ntohs(udp->dest);
		p->tcp_flags = 0;
		p->payload_off = off + sizeof(*udp);
		p->payload_len = ip_len > 8 ? ip_len - 8 : 0;
	} else {
		return -1;
	}
	return 0;
}

/* The endpoints and IP header fields of a parsed packet, for an event; 0 when read. */
static __always_inline int describe(struct __sk_buff *skb, const struct parsed *p,
				    struct described *d)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	__builtin_memset(&d->ep, 0, sizeof(d->ep)); /* events copy it whole: no stack bytes leak */
	d->ep.src_port = p->src_port;
	d->ep.dst_port = p->dst_port;
	d->ep.proto = p->proto;
	d->ep.ip_version = p->ip_version;
	if (p->ip_version == 4) {
		struct iphdr *ip = data + (p->l3_off & 0xFF);
		__u32 ihl;

		if ((void *)(ip + 1) > end)
			return -1;
		ihl = ip->ihl * 4;
		__builtin_memcpy(d->ep.src, &ip->saddr, 4);
		__builtin_memcpy(d->ep.dst, &ip->daddr, 4);
		d->ttl = ip->ttl;
		d->tos = ip->tos;
		d->ip_flags = bpf_ntohs(ip->frag_off) >> 13;
		d->ip_id = bpf_ntohs(ip->id);
		d->ip_total_length = bpf_ntohs(ip->tot_len);
		d->ip_options_length = ihl > 20 ? ihl - 20 : 0;
		d->flow_label = 0;
	} else {
		struct ipv6hdr *ip6 = data + (p->l3_off & 0xFF);

		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(d->ep.src, &ip6->saddr, 16);
		__builtin_memcpy(d->ep.dst, &ip6->daddr, 16);
		d->ttl = ip6->hop_limit;
		d->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		d->flow_label = ((__u32)(ip6->flow_lbl[0] & 0x0F) << 16) |
				((__u32)ip6->flow_lbl[1] << 8) | ip6->flow_lbl[2];
		d->ip_flags = 0;
		d->ip_id = 0;
		d->ip_options_length = 0;
		d->ip_total_length = 40 + bpf_ntohs(ip6->payload_len);
	}
	return 0;
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
	struct tcphdr *tcp = data + (p->l4_off & 0xFF); /* bounded for the verifier */
	struct nw_handshake *ev;
	struct described d;
	__u32 olen;

	if ((void *)(tcp + 1) > end || describe(skb, p, &d))
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_HANDSHAKE, sizeof(*ev), skb->ifindex, now);
	ev->ep = d.ep;
	ev->seq = bpf_ntohl(tcp->seq);
	ev->ack = bpf_ntohl(tcp->ack_seq);
	ev->flow_label = d.flow_label;
	ev->window = bpf_ntohs(tcp->window);
	ev->tcp_flags = p->tcp_flags;
	ev->urgent = bpf_ntohs(tcp->urg_ptr);
	ev->ip_id = d.ip_id;
	ev->ip_total_length = d.ip_total_length;
	ev->payload_length = p->payload_len;
	ev->ttl = d.ttl;
	ev->tos = d.tos;
	ev->ip_flags = d.ip_flags;
	ev->ip_options_length = d.ip_options_length;
	__builtin_memset(ev->options, 0, sizeof(ev->options));
	olen = tcp->doff * 4 - 20; /* 0..40: doff is 4 bits and was checked >= 5 */
	ev->options_length = copy_ladder(skb, p->l4_off + 20, olen, ev->options, NW_TCP_OPT_MAX);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void emit_payload(struct __sk_buff *skb, const struct parsed *p, __u64 now)
{
	struct nw_payload *ev;
	struct described d;
	__u32 avail;

	if (describe(skb, p, &d))
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_PAYLOAD, sizeof(*ev), skb->ifindex, now);
	ev->ep = d.ep;
	ev->length = p->payload_len;
	avail = skb->len > p->payload_off ? skb->len - p->payload_off : 0;
	if (avail > p->payload_len)
		avail = p->payload_len; /* Ethernet padding is not payload */
	ev->captured = copy_ladder(skb, p->payload_off, avail, ev->data, NW_PAYLOAD_MAX);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void emit_flow_seen(struct __sk_buff *skb, const struct parsed *p, __u64 now)
{
	struct nw_flow_seen *ev;
	struct described d;

	if (describe(skb, p, &d))
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		nw_count_drop(&event_drops);
		return;
	}
	fill_header(&ev->hdr, NW_EV_FLOW_SEEN, sizeof(*ev), skb->ifindex, now);
	ev->ep = d.ep;
	ev->tcp_flags = p->tcp_flags;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	bpf_ringbuf_submit(ev, 0);
}

/* The flow's table entry, created on its first packet (*fresh set then). */
static __always_inline struct nw_flow_stats *flow_of(void *table, const void *key, int dir,
						     __u32 ifindex, int *fresh)
{
	struct nw_flow_stats init = {}, *st;

	st = bpf_map_lookup_elem(table, key);
	if (st)
		return st;
	init.first_ns = bpf_ktime_get_ns();
	init.last_ns = init.first_ns;
	init.a_is_hi = dir;
	init.ifindex = ifindex;
	/* Another CPU may create it first: then this packet is not the flow's first. */
	*fresh = !bpf_map_update_elem(table, key, &init, BPF_NOEXIST);
	return bpf_map_lookup_elem(table, key);
}

struct nw_dir_count {
	__u64 packets;
	__u64 bytes;
};

static __always_inline int keys_equal(const void *a, const void *b, const __u32 size)
{
	const __u64 *x = a, *y = b;
	__u64 diff = 0;

#pragma unroll
	for (__u32 i = 0; i < size / 8; i++)
		diff |= x[i] ^ y[i];
	return !diff;
}

/* Move a slot's pending counts into a table entry (or drop them with no entry). */
static __always_inline void flush_counts(struct nw_slot_tail *t, struct nw_flow_stats *st)
{
	struct nw_dir_count *from = (void *)&t->packets_lo_hi;
	struct nw_dir_count *to = (void *)&st->packets_lo_hi;

#pragma unroll
	for (int d = 0; d < 2; d++) {
		__u64 packets = from[d].packets, bytes = from[d].bytes;

		if (!packets)
			continue;
		from[d].packets = 0;
		from[d].bytes = 0;
		if (st) {
			__sync_fetch_and_add(&to[d].packets, packets);
			__sync_fetch_and_add(&to[d].bytes, bytes);
		}
	}
}

/* A packet the slot cannot take alone: the first of its flow on this CPU, one whose flags
 * or first payload the table has not seen, or every 64th of a direction. It goes through
 * the shared table entry (created if new), moves the slot's pending counts there (the
 * slot's previous flow's into that flow's entry) and refills the slot for this flow. */
static __always_inline void count_slow(struct __sk_buff *skb, const struct parsed *p,
				       void *table, const void *key, void *slot,
				       const __u32 key_size, const __u32 proto_off, int dir)
{
	struct nw_slot_tail *t = slot + key_size;
	struct nw_dir_count *c;
	struct nw_flow_stats *st;
	__u64 before;
	int fresh = 0, periodic = 0;

	dir &= 1;
	c = (struct nw_dir_count *)&t->packets_lo_hi + dir;
	st = flow_of(table, key, dir, skb->ifindex, &fresh);
	if (keys_equal(slot, key, key_size)) {
		periodic = (c->packets & 63) == 63;
		flush_counts(t, st);
	} else if (*(__u8 *)(slot + proto_off)) {
		flush_counts(t, bpf_map_lookup_elem(table, slot)); /* evict the slot's flow */
	}
	if (!st)
		return;
	if (dir) {
		before = __sync_fetch_and_add(&st->packets_hi_lo, 1);
		__sync_fetch_and_add(&st->bytes_hi_lo, skb->len);
	} else {
		before = __sync_fetch_and_add(&st->packets_lo_hi, 1);
		__sync_fetch_and_add(&st->bytes_lo_hi, skb->len);
	}
	periodic |= !(before & 63);
	/* Reading a clock costs 25-35 ns here: refresh last-seen on control packets and every
	 * 64th packet of a direction; userspace knows a flow whose counts grew was alive. */
	if (periodic || (p->tcp_flags & 0x07))
		st->last_ns = bpf_ktime_get_ns();
	if ((st->tcp_flags | p->tcp_flags) != st->tcp_flags)
		st->tcp_flags |= p->tcp_flags;

	if (p->tcp_flags & 0x02) { /* SYN */
		st->handshake_seen = 1;
		emit_handshake(skb, p, bpf_ktime_get_ns());
	} else if (!st->handshake_seen && (fresh || periodic)) {
		__u64 now = bpf_ktime_get_ns();

		if (fresh || now - st->seen_event_ns >= NW_FLOW_SEEN_INTERVAL_NS) {
			st->seen_event_ns = now;
			emit_flow_seen(skb, p, now);
		}
	}
	if (p->payload_len && !(st->payload_seen & (1U << dir))) {
		__u32 old = __sync_fetch_and_or(&st->payload_seen, 1U << dir);

		if (!(old & (1U << dir)))
			emit_payload(skb, p, bpf_ktime_get_ns());
	}
	__builtin_memcpy(slot, key, key_size);
	t->tcp_flags = st->tcp_flags & ~0x07;
	t->payload_seen = st->payload_seen;
}

/* Subprograms: one copy of the slow path per table, called from the packet path. */
static __noinline void count_slow4(struct __sk_buff *skb, const struct parsed *p,
				   const struct nw_flow_key4 *key, struct nw_flow_slot4 *slot, int dir)
{
	count_slow(skb, p, &flows4, key, slot, sizeof(*key),
		   __builtin_offsetof(struct nw_flow_key4, proto), dir);
}

static __noinline void count_slow6(struct __sk_buff *skb, const struct parsed *p,
				   const struct nw_flow_key *key, struct nw_flow_slot6 *slot, int dir)
{
	count_slow(skb, p, &flows6, key, slot, sizeof(*key),
		   __builtin_offsetof(struct nw_flow_key, proto), dir);
}

/* A packet the slot can take: its flow's, with flags and payload state the table already
 * has, and not the 64th of its direction since the slot was filled. */
static __always_inline int slot_takes(const struct nw_slot_tail *t, const struct parsed *p,
				      int dir)
{
	const struct nw_dir_count *c = (const struct nw_dir_count *)&t->packets_lo_hi + dir;

	return !(p->tcp_flags & ~t->tcp_flags) && (!p->payload_len || (t->payload_seen >> dir) & 1) &&
	       (c->packets & 63) != 63;
}

static __always_inline void slot_count(struct nw_slot_tail *t, int dir, __u32 len)
{
	struct nw_dir_count *c = (struct nw_dir_count *)&t->packets_lo_hi + dir;

	c->packets++;
	c->bytes += len;
}

static __always_inline int observe4(struct __sk_buff *skb, void *data, void *end, __u32 off)
{
	struct nw_flow_key4 key __attribute__((aligned(8)));
	struct iphdr *ip = data + off;
	struct nw_flow_slot4 *slot;
	struct parsed p;
	__u32 ihl, ip_len, s, d, lo, hi, idx;
	__u64 w0, w1;
	int dir;

	if ((void *)(ip + 1) > end)
		return NW_CONTINUE;
	ihl = ip->ihl * 4;
	if (ihl < 20 || (ip->frag_off & bpf_htons(IP_OFFSET_)))
		return NW_CONTINUE; /* malformed, or a later fragment without ports */
	p.l3_off = off;
	p.ip_version = 4;
	p.proto = ip->protocol;
	ip_len = bpf_ntohs(ip->tot_len);
	ip_len = ip_len > ihl ? ip_len - ihl : 0;
	if (parse_l4(data, end, off + ihl, ip_len, &p))
		return NW_CONTINUE;

	/* The key as two little-endian words (struct nw_flow_key4's layout), endpoints ordered
	 * so both directions of a flow share it. */
	s = ip->saddr;
	d = ip->daddr;
	dir = s != d ? s > d : p.src_port > p.dst_port;
	lo = dir ? d : s;
	hi = dir ? s : d;
	w0 = lo | (__u64)hi << 32;
	w1 = dir ? p.dst_port | (__u32)p.src_port << 16 : p.src_port | (__u32)p.dst_port << 16;
	w1 |= (__u64)(skb->ifindex & 0xFFFF) << 32 | (__u64)p.proto << 48;
	idx = ((w0 * 0x9E3779B97F4A7C15ULL ^ w1) * 0x9E3779B97F4A7C15ULL) >> (64 - NW_CACHE4_BITS);
	slot = bpf_map_lookup_elem(&cache4, &idx);
	if (!slot)
		return NW_CONTINUE;
	if (((__u64 *)slot)[0] == w0 && ((__u64 *)slot)[1] == w1 && slot_takes(&slot->t, &p, dir)) {
		slot_count(&slot->t, dir, skb->len);
		return NW_CONTINUE;
	}
	((__u64 *)&key)[0] = w0;
	((__u64 *)&key)[1] = w1;
	count_slow4(skb, &p, &key, slot, dir);
	return NW_CONTINUE;
}

static __always_inline int observe6(struct __sk_buff *skb, void *data, void *end, __u32 off)
{
	struct nw_flow_key key __attribute__((aligned(8)));
	struct ipv6hdr *ip6 = data + off;
	struct nw_flow_slot6 *slot;
	struct parsed p;
	__u64 s0, s1, d0, d1, w[6], h, diff;
	__u32 idx;
	int dir;

	if ((void *)(ip6 + 1) > end)
		return NW_CONTINUE;
	p.l3_off = off;
	p.ip_version = 6;
	p.proto = ip6->nexthdr;
	if (parse_l4(data, end, off + sizeof(*ip6), bpf_ntohs(ip6->payload_len), &p))
		return NW_CONTINUE;

	__builtin_memcpy(&s0, &ip6->saddr, 8);
	__builtin_memcpy(&s1, (void *)&ip6->saddr + 8, 8);
	__builtin_memcpy(&d0, &ip6->daddr, 8);
	__builtin_memcpy(&d1, (void *)&ip6->daddr + 8, 8);
	if (s0 != d0)
		dir = s0 > d0;
	else if (s1 != d1)
		dir = s1 > d1;
	else
		dir = p.src_port > p.dst_port;
	/* The key as six little-endian words (struct nw_flow_key's layout). */
	w[0] = dir ? d0 : s0;
	w[1] = dir ? d1 : s1;
	w[2] = dir ? s0 : d0;
	w[3] = dir ? s1 : d1;
	w[4] = dir ? p.dst_port | (__u32)p.src_port << 16 : p.src_port | (__u32)p.dst_port << 16;
	w[4] |= (__u64)skb->ifindex << 32;
	w[5] = p.proto | 6 << 8;
	h = w[0];
#pragma unroll
	for (int i = 1; i < 6; i++)
		h = h * 0x9E3779B97F4A7C15ULL ^ w[i];
	idx = (h * 0x9E3779B97F4A7C15ULL) >> (64 - NW_CACHE6_BITS);
	slot = bpf_map_lookup_elem(&cache6, &idx);
	if (!slot)
		return NW_CONTINUE;
	diff = 0;
#pragma unroll
	for (int i = 0; i < 6; i++)
		diff |= ((__u64 *)slot)[i] ^ w[i];
	if (!diff && slot_takes(&slot->t, &p, dir)) {
		slot_count(&slot->t, dir, skb->len);
		return NW_CONTINUE;
	}
	__builtin_memcpy(&key, w, sizeof(key));
	count_slow6(skb, &p, &key, slot, dir);
	return NW_CONTINUE;
}

SEC("tc")
int observe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return NW_CONTINUE;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		__be16 *inner = data + off + 2;

		if ((void *)(inner + 1) > end)
			return NW_CONTINUE;
		proto = *inner;
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return observe4(skb, data, end, off);
	if (proto == bpf_htons(ETH_P_IPV6))
		return observe6(skb, data, end, off);
	return NW_CONTINUE;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
