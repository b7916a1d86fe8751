// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test program: a tc observer that sends one record per IPv4 UDP packet to a ring buffer. */
#include "netweave.h"

struct nw_test_rec {
	__u32 ifindex;
	__u32 len;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 _pad[3];
	__u64 ts_ns;
};

NW_BTF_RECORD(nw_test_rec);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} records SEC(".maps");

NW_RINGBUF_DROPS(record_drops);

SEC("tc")
int tc_udp_records(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct nw_test_rec *rec;

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	rec = bpf_ringbuf_reserve(&records, sizeof(*rec), 0);
	if (!rec) {
		nw_count_drop(&record_drops);
		return TC_ACT_UNSPEC;
	}
	rec->ifindex = skb->ifindex;
	rec->len = skb->len;
	rec->saddr = ip->saddr;
	rec->daddr = ip->daddr;
	rec->sport = udp->source;
	rec->dport = udp->dest;
	rec->proto = ip->protocol;
	rec->ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(rec, 0);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
