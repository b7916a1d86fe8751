// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* One fentry program alone, for bpftool to load as an independent witness. */
#include "netweave.h"

SEC("fentry/tcp_v4_connect")
int BPF_PROG(witness_fentry, struct sock *sk)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
