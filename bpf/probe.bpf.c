// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Tiny programs `netweave doctor` loads one at a time to learn what this kernel supports. */
#include "netweave.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
	return 0;
}

SEC("xdp")
int probe_ringbuf(struct xdp_md *ctx)
{
	__u32 *rec = bpf_ringbuf_reserve(&probe_ring, sizeof(*rec), 0);

	if (rec) {
		*rec = 1;
		bpf_ringbuf_submit(rec, 0);
	}
	return XDP_PASS;
}

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file)
{
	return 0;
}

SEC("fentry/tcp_v4_connect")
int BPF_PROG(probe_fentry, struct sock *sk)
{
	return 0;
}

SEC("kprobe/tcp_v4_connect")
int probe_kprobe(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
