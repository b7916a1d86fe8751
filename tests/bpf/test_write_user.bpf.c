// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test program the pre-load audit must refuse: it writes into user memory. */
#include "netweave.h"

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(scribble, const struct sock *sk, int oldstate, int newstate)
{
	__u64 zero = 0;

	bpf_probe_write_user((void *)0x1000, &zero, sizeof(zero));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
