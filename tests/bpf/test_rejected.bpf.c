// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Test program the verifier must reject: it reads the packet without a bounds check. */
#include "netweave.h"

SEC("xdp")
int unchecked_read(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;

	return data[20] == 6 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
