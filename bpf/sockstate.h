/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Records of the socket-state program, shared with userspace (checked against BTF). */
#ifndef NETWEAVE_SOCKSTATE_H
#define NETWEAVE_SOCKSTATE_H

enum nw_sock_kind {
	NW_SOCK_STATE = 1, /* inet_sock_set_state: a TCP socket changed state */
	NW_SOCK_OWNER = 2, /* sock_recv_length: the task that reads an accepted socket */
};

struct nw_sock_event {
	__u64 cookie;   /* bpf_get_socket_cookie: stable for the socket's life */
	__u64 ts_ns;    /* bpf_ktime_get_ns */
	__u32 pid;      /* tgid of the task running when the event fired */
	__u32 netns;    /* network-namespace inode */
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;    /* host order; 0 at CLOSE->SYN_SENT and at the final CLOSE */
	__u16 dport;
	__u16 family;
	__u8 kind;
	__u8 old_state;
	__u8 new_state;
	__u8 _pad[7];
	char comm[16];
};

#endif /* NETWEAVE_SOCKSTATE_H */
