/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The sentinel's records shared with Python (netweave/sentinel/events.py, checked against
 * this object's BTF at load) and the CO-RE subset of VFS structs its LSM programs read. */
#ifndef NETWEAVE_SENTINEL_H
#define NETWEAVE_SENTINEL_H

#include "netweave.h"

/* Operations, as in netweave.sentinel.events.Operation. */
enum nw_fim_op {
	NW_OP_OPEN_WRITE = 1,
	NW_OP_SETATTR = 2,
	NW_OP_TRUNCATE = 3,
	NW_OP_UNLINK = 4,
	NW_OP_RMDIR = 5,
	NW_OP_RENAME = 6,
	NW_OP_LINK = 7,
	NW_OP_CREATE = 8,
	NW_OP_MAP_WRITE = 9,
	NW_OP_HANDSHAKE = 10,
	NW_OP_LINK_OPEN = 11, /* a link fd by id (to detach it); ino holds the link id */
	NW_OP_PTRACE = 12,    /* ptrace attach or /proc/PID/mem of the agent; ino holds its tid */
	NW_OP_PIN_WRITE = 13,  /* write access to a protected pin or pin dir */
};

enum nw_fim_mode {
	NW_MODE_ENFORCE = 1,
	NW_MODE_MONITOR = 2,
};

enum nw_fim_verdict {
	NW_VERDICT_ALLOW = 0,
	NW_VERDICT_DENY = 1,
};

/* Key of a protected inode: device as the kernel's s_dev ((major << 20) | minor). */
struct nw_inode_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct nw_rule {
	__u32 mode; /* enum nw_fim_mode */
	__u32 rule_id;
};

/* One decision. 168 bytes; every field naturally aligned, no implicit padding. */
struct nw_fim_event {
	__u64 ts_ns;
	__u64 ino;      /* inode acted on (0 for a name being created) */
	__u64 rule_ino; /* inode whose rule matched (the target itself or its directory) */
	__u32 dev;
	__u32 rule_dev;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 rule_id;
	__u16 op;
	__u8 verdict;
	__u8 mode;
	__u32 pad;
	char comm[16];
	char exe[32];
	char name[64];  /* the entry's name (or the map's name for NW_OP_MAP_WRITE) */
};

/* ---- CO-RE views of kernel structs: only the fields read here ---- */
struct super_block {
	__u32 s_dev;
	unsigned long s_magic;
} NW_CORE;

struct inode {
	__u16 i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
} NW_CORE;

struct qstr {
	const unsigned char *name;
} NW_CORE;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
} NW_CORE;

struct path {
	struct dentry *dentry;
} NW_CORE;

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_mode;
} NW_CORE;

struct iattr {
	unsigned int ia_valid;
} NW_CORE;

struct bpf_map {
	__u32 id;
	char name[16];
} NW_CORE;

struct mm_struct {
	struct file *exe_file;
} NW_CORE;

struct task_struct {
	int pid;
	int tgid;
	struct mm_struct *mm;
} NW_CORE;

struct linux_binprm;

#endif /* NETWEAVE_SENTINEL_H */
