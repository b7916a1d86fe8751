// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test program hiding a refused helper in a static subprogram (.text), which libbpf
 * only appends to its caller while loading: the audit must still find it. */
#include "netweave.h"

static __noinline int tell(__u64 pid)
{
	bpf_send_signal(9);
	return (int)pid;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(hidden, const struct sock *sk, int oldstate, int newstate)
{
	return tell(bpf_get_current_pid_tgid());
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
