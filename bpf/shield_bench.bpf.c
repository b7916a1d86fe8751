// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Benchmark programs for `netweave bench shield`, run only with BPF_PROG_TEST_RUN:
 * an empty program, the shield's verdict, and the kernel LPM trie as the reference,
 * each on the packet's own source (hot) or on a source taken from `addrs` in turn
 * (random: the same address generator in front of both lookups). */
#include "shield.h"

struct nw_lpm4_key {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct nw_lpm4_key);
	__type(value, __u32);
} lpm4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 20);
	__type(key, __u32);
	__type(value, __u32);
} addrs SEC(".maps");

__u32 bench_next = 0;

static __always_inline int nw_lpm_verdict(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct nw_lpm4_key key = { .prefixlen = 32 };
	__u32 *id;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	key.addr = ip->saddr;
	id = bpf_map_lookup_elem(&lpm4, &key);
	if (id)
		return nw_shield_matched(*id, (__u64)(end - data));
	return XDP_PASS;
}

/* Write the next address of `addrs` into the packet's IPv4 source; 0 when it cannot. */
static __always_inline int nw_next_source(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 key = bench_next++ & ((1u << 20) - 1);
	__u32 *a = bpf_map_lookup_elem(&addrs, &key);

	if (!a || (void *)(ip + 1) > end)
		return 0;
	ip->saddr = *a;
	return 1;
}

SEC("xdp")
int bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int bench_shield_hot(struct xdp_md *ctx)
{
	return nw_shield_verdict(ctx);
}

SEC("xdp")
int bench_lpm_hot(struct xdp_md *ctx)
{
	return nw_lpm_verdict(ctx);
}

SEC("xdp")
int bench_next_only(struct xdp_md *ctx)
{
	return nw_next_source(ctx) ? XDP_PASS : XDP_ABORTED;
}

SEC("xdp")
int bench_shield_random(struct xdp_md *ctx)
{
	if (!nw_next_source(ctx))
		return XDP_ABORTED;
	return nw_shield_verdict(ctx);
}

SEC("xdp")
int bench_lpm_random(struct xdp_md *ctx)
{
	if (!nw_next_source(ctx))
		return XDP_ABORTED;
	return nw_lpm_verdict(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
