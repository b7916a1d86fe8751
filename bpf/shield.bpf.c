// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The shield: an XDP program dropping packets whose source address is in the blocklist.
 * Everything (maps, verdict) lives in shield.h, shared with the benchmark object. */
#include "shield.h"

SEC("xdp")
int xdp_shield(struct xdp_md *ctx)
{
	return nw_shield_verdict(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
