// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Live TCP socket events: every state change (so connections shorter than one snapshot
 * interval are still seen, with the connecting process), and the first reader of each
 * accepted socket (inet_sock_set_state runs in softirq for server-side transitions, so its
 * task is whoever happened to run; sock_recv_length runs in the reading process). */
#include "netweave.h"
#include "sockstate.h"

#define AF_INET_ 2
#define AF_INET6_ 10
#define TCP_ESTABLISHED_ 1

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 21);
} sock_events SEC(".maps");

NW_RINGBUF_DROPS(sock_event_drops);

/* Sockets whose owner was already reported: one event per accepted socket, not per read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} owners_seen SEC(".maps");

NW_BTF_RECORD(nw_sock_event);

static __always_inline struct nw_sock_event *start(const struct sock *sk, __u8 kind)
{
	struct nw_sock_event *ev;
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET_ && family != AF_INET6_)
		return 0;
	ev = bpf_ringbuf_reserve(&sock_events, sizeof(*ev), 0);
	if (!ev) {
		nw_count_drop(&sock_event_drops);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->cookie = bpf_get_socket_cookie((void *)sk);
	ev->ts_ns = bpf_ktime_get_ns();
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	ev->family = family;
	ev->kind = kind;
	if (family == AF_INET_) {
		__builtin_memcpy(ev->saddr, (const void *)&sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(ev->daddr, (const void *)&sk->__sk_common.skc_daddr, 4);
	} else {
		BPF_CORE_READ_INTO(&ev->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&ev->daddr, sk, __sk_common.skc_v6_daddr);
	}
	ev->sport = sk->__sk_common.skc_num;
	ev->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return ev;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
	struct nw_sock_event *ev;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	ev = start(sk, NW_SOCK_STATE);
	if (!ev)
		return 0;
	ev->old_state = oldstate;
	ev->new_state = newstate;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	struct nw_sock_event *ev;
	__u64 cookie;
	__u8 one = 1;

	if (sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_state != TCP_ESTABLISHED_)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	if (bpf_map_lookup_elem(&owners_seen, &cookie))
		return 0;
	bpf_map_update_elem(&owners_seen, &cookie, &one, BPF_ANY);
	ev = start(sk, NW_SOCK_OWNER);
	if (!ev)
		return 0;
	ev->old_state = TCP_ESTABLISHED_;
	ev->new_state = TCP_ESTABLISHED_;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
