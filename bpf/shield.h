/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The shield's maps, records and verdict, shared by shield.bpf.c and shield_bench.bpf.c.
 *
 * IPv4 lookup: a multibit trie in ARRAY maps. v4_l1 holds 2^20 slots indexed by the top 20
 * bits of the source address (stored as 2^16 values of 16 slots: one inlined array access
 * and one load); below it, chunks of 16 slots consume 4 bits each (3 levels).
 * A slot is 0 (no rule), a rule id (best match pushed down to the leaves), or
 * NW_SHIELD_CHILD | chunk index. Most addresses cost one inlined array access.
 * IPv6 lookup: one hash keyed by (prefix length, masked address), probed for each prefix
 * length present, longest first (the list is a const volatile of each loaded instance).
 * An id with NW_SHIELD_ALLOW set is an allowlist entry: passed, counted, never dropped.
 * Each CPU remembers the last listed IPv4 source it saw (its slot of v4_last) with that
 * source's uncommitted counts: a burst from one source (a flood) costs one compare and two
 * adds, no map lookup. */
#ifndef NW_SHIELD_H
#define NW_SHIELD_H

#include "netweave.h"

#define NW_SHIELD_L1_BITS 20
#define NW_SHIELD_L1_SLOTS (1u << NW_SHIELD_L1_BITS)
#define NW_SHIELD_CHILD 0x80000000u
#define NW_SHIELD_ALLOW 0x40000000u
#define NW_SHIELD_ID_MASK 0x3fffffffu
#define NW_SHIELD_MAX_BYPASS4 8
#define NW_SHIELD_MAX_BYPASS6 4
#define NW_SHIELD_MAX_V6_LENS 129

/* Per-rule counters (per CPU), two per rule id: enforcing and dry run. */
struct nw_shield_count {
	__u64 packets;
	__u64 bytes;
};

/* Sixteen trie slots: one value of v4_l1 or v4_chunks. */
struct nw_shield_chunk {
	__u32 slot[16];
};

/* What rule id N is, for userspace (status, counters carried across swaps). */
struct nw_shield_rule {
	__u32 addr[4]; /* network order; IPv4 in addr[0] */
	__u8 family;   /* 4 or 6 */
	__u8 plen;
	__u8 allow;
	__u8 _pad;
	__u32 _pad2;
};

/* Key of the IPv6 rule hash: the prefix length and the address masked to it. */
struct nw_shield_v6_key {
	__u32 plen;
	__u32 addr[4];
};

/* The run-time switches, one entry shared by every loaded instance of an interface. */
struct nw_shield_flags {
	__u32 dry_run;
	__u32 _pad;
};

/* A CPU's last listed IPv4 source, its rule id and mode, and the counts not yet added to
 * `counters` (userspace adds them when it reads totals). One cache line per CPU. */
struct nw_shield_last {
	__u32 addr; /* network order */
	__u32 mode; /* dry run flag + 1; 0: empty slot */
	__u32 id;
	__u32 _pad;
	__u64 packets;
	__u64 bytes;
	__u64 _line[4];
};

#define NW_SHIELD_LAST_SLOTS 512 /* CPUs; with more, use_last is 0 and the slots unused */

/* Totals kept outside the rules (per CPU): packets passed by a bypass address. Unlisted
 * sources pass uncounted (the cheapest path); matches are counted per rule. */
#define NW_SHIELD_STAT_BYPASSED 0
#define NW_SHIELD_STATS 1

NW_BTF_RECORD(nw_shield_count);
NW_BTF_RECORD(nw_shield_chunk);
NW_BTF_RECORD(nw_shield_rule);
NW_BTF_RECORD(nw_shield_v6_key);
NW_BTF_RECORD(nw_shield_flags);
NW_BTF_RECORD(nw_shield_last);

const volatile __u32 bypass4[NW_SHIELD_MAX_BYPASS4] = {};
const volatile __u32 n_bypass4 = 0;
const volatile __u32 bypass6[NW_SHIELD_MAX_BYPASS6][4] = {};
const volatile __u32 n_bypass6 = 0;
const volatile __u8 v6_lens[NW_SHIELD_MAX_V6_LENS] = {};
const volatile __u32 n_v6_lens = 0;
const volatile __u32 use_last = 0;

/* One bit per /20 (v4_l1 slot) that any rule touches: 128 KiB that stay in cache, so the
 * common case (a source no rule mentions) never touches the 4 MiB first level. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, NW_SHIELD_L1_SLOTS / 64);
	__type(key, __u32);
	__type(value, __u64);
} v4_any SEC(".maps");

/* One bit per /24 that any rule touches (2 MiB), read only when the /20 bit is set: most
 * sources in a /20 holding a few small rules stop here instead of walking the trie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, (1u << 24) / 64);
	__type(key, __u32);
	__type(value, __u64);
} v4_any24 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, NW_SHIELD_L1_SLOTS / 16);
	__type(key, __u32);
	__type(value, struct nw_shield_chunk);
} v4_l1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_shield_chunk);
} v4_chunks SEC(".maps");

/* Userspace-only tables of the loaded rule set: what each id is, and the totals carried
 * over from earlier rule sets for rules that stayed (reported = base + counters; base is
 * indexed like counters). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_shield_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_shield_count);
} base SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct nw_shield_v6_key);
	__type(value, __u32);
} v6_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_shield_count);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_SHIELD_STATS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Indexed by CPU number: a global (map ".bss.last", one per instance) costs no lookup. */
struct nw_shield_last v4_last[NW_SHIELD_LAST_SLOTS] SEC(".bss.last");

/* The switches as a global of their own section (map ".data.flags", shared by every
 * instance): read with one load, no lookup. */
struct nw_shield_flags nw_flags SEC(".data.flags") = {};

static __always_inline __u32 nw_shield_slot(void *map, __u32 key, __u32 nibble)
{
	struct nw_shield_chunk *c = bpf_map_lookup_elem(map, &key);

	return c ? c->slot[nibble & 15] : 0;
}

static __always_inline __u32 nw_shield_lookup4(__u32 addr)
{
	__u32 slot = addr >> (32 - NW_SHIELD_L1_BITS), word = slot >> 6, v;
	__u64 *any = bpf_map_lookup_elem(&v4_any, &word);

	if (!any || !((*any >> (slot & 63)) & 1))
		return 0;
	word = addr >> 14;
	any = bpf_map_lookup_elem(&v4_any24, &word);
	if (!any || !((*any >> ((addr >> 8) & 63)) & 1))
		return 0;
	v = nw_shield_slot(&v4_l1, addr >> 16, addr >> 12);

	if (!(v & NW_SHIELD_CHILD))
		return v;
	v = nw_shield_slot(&v4_chunks, v & ~NW_SHIELD_CHILD, addr >> 8);
	if (!(v & NW_SHIELD_CHILD))
		return v;
	v = nw_shield_slot(&v4_chunks, v & ~NW_SHIELD_CHILD, addr >> 4);
	if (!(v & NW_SHIELD_CHILD))
		return v;
	return nw_shield_slot(&v4_chunks, v & ~NW_SHIELD_CHILD, addr);
}

static __always_inline __u32 nw_shield_lookup6(const __u32 *addr)
{
	struct nw_shield_v6_key key;
	__u32 i;

	for (i = 0; i < NW_SHIELD_MAX_V6_LENS; i++) {
		__u32 plen, w, bits, *id;

		if (i >= n_v6_lens)
			break;
		plen = v6_lens[i];
		key.plen = plen;
		for (w = 0; w < 4; w++) {
			bits = plen > w * 32 ? plen - w * 32 : 0;
			if (bits >= 32)
				key.addr[w] = addr[w];
			else if (bits == 0)
				key.addr[w] = 0;
			else
				key.addr[w] = addr[w] & bpf_htonl(~((1u << (32 - bits)) - 1));
		}
		id = bpf_map_lookup_elem(&v6_rules, &key);
		if (id)
			return *id;
	}
	return 0;
}

static __always_inline void nw_shield_stat(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);

	if (n)
		*n += 1;
}

/* Allowlist entries and dry run pass; any other match drops. */
static __always_inline int nw_shield_decide(__u32 id, __u32 dry)
{
	return (id & NW_SHIELD_ALLOW) || dry ? XDP_PASS : XDP_DROP;
}

/* Each rule has two counters, [2 * id] while enforcing and [2 * id + 1] in dry run, so
 * drops and would-drops are told apart without a second counter per packet; allowlist
 * entries always count in the first. */
static __always_inline void nw_shield_count(__u32 id, __u32 dry, __u64 packets, __u64 bytes)
{
	__u32 idx = (id & NW_SHIELD_ID_MASK) << 1 | (dry && !(id & NW_SHIELD_ALLOW));
	struct nw_shield_count *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets += packets;
		c->bytes += bytes;
	}
}

/* Count a match of rule ``id`` and decide. */
static __always_inline int nw_shield_matched(__u32 id, __u64 len)
{
	__u32 dry = nw_flags.dry_run;

	nw_shield_count(id, dry, 1, len);
	return nw_shield_decide(id, dry);
}

/* The verdict of IPv4 source ``saddr`` (network order), through this CPU's v4_last slot. */
static __always_inline int nw_shield_verdict4(__u32 saddr, __u64 len)
{
	__u32 dry = nw_flags.dry_run, id;
	struct nw_shield_last *last;

	if (!use_last) {
		id = nw_shield_lookup4(bpf_ntohl(saddr));
		return id ? nw_shield_matched(id, len) : XDP_PASS;
	}
	last = &v4_last[bpf_get_smp_processor_id() & (NW_SHIELD_LAST_SLOTS - 1)];
	if (*(__u64 *)last == ((__u64)(dry + 1) << 32 | saddr)) {
		last->packets += 1;
		last->bytes += len;
		return nw_shield_decide(last->id, dry);
	}
	id = nw_shield_lookup4(bpf_ntohl(saddr));
	if (!id)
		return XDP_PASS;
	if (last->mode)
		nw_shield_count(last->id, last->mode - 1, last->packets, last->bytes);
	last->addr = saddr;
	last->mode = dry + 1;
	last->id = id;
	last->packets = 1;
	last->bytes = len;
	return nw_shield_decide(id, dry);
}

static __always_inline int nw_shield_verdict(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 len = (__u64)(end - data);
	__u16 proto;
	void *l3;
	__u32 i, id;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	proto = *(__u16 *)(data + 12); /* one load (ethhdr is packed: h_proto is read bytewise) */
	l3 = eth + 1;
#pragma unroll
	for (i = 0; i < 2 && proto != bpf_htons(ETH_P_IP); i++) { /* untagged IPv4: one test */
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
			__u16 *tag = l3;

			if ((void *)(tag + 2) > end)
				return XDP_PASS;
			proto = tag[1];
			l3 = tag + 2;
		}
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		__u32 saddr;

		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		saddr = ip->saddr;
		for (i = 0; i < NW_SHIELD_MAX_BYPASS4; i++) {
			if (i >= n_bypass4)
				break;
			if (saddr == bypass4[i]) {
				nw_shield_stat(NW_SHIELD_STAT_BYPASSED);
				return XDP_PASS;
			}
		}
		return nw_shield_verdict4(saddr, len);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		__u32 src[4];

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(src, &ip6->saddr, sizeof(src));
		for (i = 0; i < NW_SHIELD_MAX_BYPASS6; i++) {
			if (i >= n_bypass6)
				break;
			if (src[0] == bypass6[i][0] && src[1] == bypass6[i][1] &&
			    src[2] == bypass6[i][2] && src[3] == bypass6[i][3]) {
				nw_shield_stat(NW_SHIELD_STAT_BYPASSED);
				return XDP_PASS;
			}
		}
		id = nw_shield_lookup6(src);
	} else {
		return XDP_PASS;
	}
	if (id)
		return nw_shield_matched(id, len);
	return XDP_PASS;
}

#endif /* NW_SHIELD_H */
