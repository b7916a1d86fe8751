// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* One LSM program alone, for bpftool to load as an independent witness. */
#include "netweave.h"

SEC("lsm/file_open")
int BPF_PROG(witness_lsm, struct file *file)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
