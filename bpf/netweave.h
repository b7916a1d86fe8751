/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared by every netweave kernel program: UAPI types, libbpf helpers, and a hand-written
 * CO-RE subset of kernel structs holding only the fields netweave reads. libbpf relocates
 * each access against the running kernel's BTF, so no vmlinux.h is needed. */
#ifndef NETWEAVE_H
#define NETWEAVE_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define NW_CORE __attribute__((preserve_access_index))

struct ns_common {
	unsigned int inum;
} NW_CORE;

struct net {
	struct ns_common ns;
} NW_CORE;

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} NW_CORE;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} NW_CORE;

struct file;
struct inode;
struct dentry;

/* Keep a record type in the object's BTF, so userspace can check its decoder against it
 * (clang emits BTF only for types that globals and function signatures reach). */
#define NW_BTF_RECORD(type) const struct type *__nw_btf_##type __attribute__((unused))

/* Per-CPU counter of ring-buffer records the kernel could not reserve room for. */
#define NW_RINGBUF_DROPS(name)                                                                 \
	struct {                                                                               \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                       \
		__uint(max_entries, 1);                                                        \
		__type(key, __u32);                                                            \
		__type(value, __u64);                                                          \
	} name SEC(".maps")

static __always_inline void nw_count_drop(void *drops)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(drops, &zero);

	if (n)
		*n += 1;
}

#endif /* NETWEAVE_H */
