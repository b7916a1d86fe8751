// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The sentinel: BPF LSM programs that keep protected files and netweave's own maps and pins
 * from being changed by anyone but the agent, and report every decision to a ring buffer.
 *
 * Protected inodes are keyed by (s_dev, ino); a rule on a directory also covers the entries
 * directly inside it (userspace adds every inode of a protected tree). The agent is the set
 * of tasks carrying a task-local-storage mark, set by an explicit prctl handshake from the
 * loading process (tgid fixed in .rodata before load, accepted once), passed on only to new
 * threads of a marked task and dropped when a marked task execs. */
#include "sentinel.h"

#define EPERM 1
#define ENOMEM 12
#define ENOSYS 38
#define NW_HANDSHAKE_OK 1 /* prctl's return value once the agent is marked */
#define FMODE_WRITE 0x2
#define ATTR_SIZE (1 << 3)
#define CLONE_THREAD 0x00010000
#define MAY_WRITE 0x2
#define PTRACE_MODE_ATTACH 0x02
#define BPF_FS_MAGIC 0xcafe4a11
#define NW_PRCTL_HANDSHAKE 0x4e574147 /* "NWAG" */

const volatile __u32 agent_tgid = 0;

/* Set once the handshake has been accepted; .bss is among the maps only the agent may write. */
__u64 handshake_done = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nw_inode_key);
	__type(value, struct nw_rule);
} protected_inodes SEC(".maps");

/* Map ids (the agent's maps, shield's too) that only the agent may open for writing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} protected_maps SEC(".maps");

/* Link ids (the sentinel's own) that only the agent may open by id, i.e. detach. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} protected_links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} agent_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} fim_events SEC(".maps");

NW_RINGBUF_DROPS(fim_drops);

/* Keeps struct nw_fim_event in the object's BTF, where Python checks its layout at load. */
struct nw_fim_event *nw_fim_event_btf __attribute__((unused));

static __always_inline int is_agent(void)
{
	__u32 *mark = bpf_task_storage_get(&agent_tasks, bpf_get_current_task_btf(), 0, 0);

	return mark && *mark == 1;
}

static __always_inline void key_of(struct inode *inode, struct nw_inode_key *key)
{
	key->ino = BPF_CORE_READ(inode, i_ino);
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key->pad = 0;
}

static __always_inline void emit(__u16 op, __u8 verdict, __u8 mode, __u32 rule_id,
				 struct nw_inode_key *target, struct nw_inode_key *rule_key,
				 const unsigned char *name)
{
	struct nw_fim_event *ev = bpf_ringbuf_reserve(&fim_events, sizeof(*ev), 0);
	struct task_struct *task;
	const unsigned char *exe;
	__u64 id;

	if (!ev) {
		nw_count_drop(&fim_drops);
		return;
	}
	id = bpf_get_current_pid_tgid();
	ev->ts_ns = bpf_ktime_get_boot_ns();
	ev->ino = target ? target->ino : 0;
	ev->dev = target ? target->dev : 0;
	ev->rule_ino = rule_key ? rule_key->ino : 0;
	ev->rule_dev = rule_key ? rule_key->dev : 0;
	ev->pid = (__u32)id;
	ev->tgid = id >> 32;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->rule_id = rule_id;
	ev->op = op;
	ev->verdict = verdict;
	ev->mode = mode;
	ev->pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	task = bpf_get_current_task_btf();
	exe = BPF_CORE_READ(task, mm, exe_file, f_path.dentry, d_name.name);
	if (!exe || bpf_probe_read_kernel_str(ev->exe, sizeof(ev->exe), exe) < 0)
		ev->exe[0] = 0;
	if (!name || bpf_probe_read_kernel_str(ev->name, sizeof(ev->name), name) < 0)
		ev->name[0] = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* The decision for an operation on `target` (may be NULL) inside directory `dir`. */
static __always_inline int decide(__u16 op, struct inode *target, struct inode *dir,
				  const unsigned char *name)
{
	struct nw_inode_key tkey = {}, dkey = {};
	struct nw_inode_key *rule_key = 0;
	struct nw_rule *rule = 0;

	if (target) {
		key_of(target, &tkey);
		rule = bpf_map_lookup_elem(&protected_inodes, &tkey);
		if (rule)
			rule_key = &tkey;
	}
	if (!rule && dir) {
		key_of(dir, &dkey);
		rule = bpf_map_lookup_elem(&protected_inodes, &dkey);
		if (rule)
			rule_key = &dkey;
	}
	if (!rule || is_agent())
		return 0;
	if (rule->mode == NW_MODE_MONITOR) {
		emit(op, NW_VERDICT_ALLOW, NW_MODE_MONITOR, rule->rule_id, target ? &tkey : 0,
		     rule_key, name);
		return 0;
	}
	emit(op, NW_VERDICT_DENY, NW_MODE_ENFORCE, rule->rule_id, target ? &tkey : 0, rule_key,
	     name);
	return -EPERM;
}

SEC("lsm/file_open")
int BPF_PROG(nw_file_open, struct file *file, int ret)
{
	struct dentry *dentry;

	if (ret)
		return ret;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	dentry = BPF_CORE_READ(file, f_path.dentry);
	return decide(NW_OP_OPEN_WRITE, BPF_CORE_READ(file, f_inode),
		      BPF_CORE_READ(dentry, d_parent, d_inode), BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_setattr")
int BPF_PROG(nw_inode_setattr, struct dentry *dentry, struct iattr *attr, int ret)
{
	__u16 op = (BPF_CORE_READ(attr, ia_valid) & ATTR_SIZE) ? NW_OP_TRUNCATE : NW_OP_SETATTR;

	if (ret)
		return ret;
	return decide(op, BPF_CORE_READ(dentry, d_inode), BPF_CORE_READ(dentry, d_parent, d_inode),
		      BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_unlink")
int BPF_PROG(nw_inode_unlink, struct inode *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return decide(NW_OP_UNLINK, BPF_CORE_READ(dentry, d_inode), dir,
		      BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_rmdir")
int BPF_PROG(nw_inode_rmdir, struct inode *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return decide(NW_OP_RMDIR, BPF_CORE_READ(dentry, d_inode), dir,
		      BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_rename")
int BPF_PROG(nw_inode_rename, struct inode *old_dir, struct dentry *old_dentry,
	     struct inode *new_dir, struct dentry *new_dentry, int ret)
{
	int err;

	if (ret)
		return ret;
	err = decide(NW_OP_RENAME, BPF_CORE_READ(old_dentry, d_inode), old_dir,
		     BPF_CORE_READ(old_dentry, d_name.name));
	if (err)
		return err;
	/* Into a protected directory, or over a protected file. */
	return decide(NW_OP_RENAME, BPF_CORE_READ(new_dentry, d_inode), new_dir,
		      BPF_CORE_READ(new_dentry, d_name.name));
}

SEC("lsm/inode_link")
int BPF_PROG(nw_inode_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry, int ret)
{
	int err;

	if (ret)
		return ret;
	err = decide(NW_OP_LINK, BPF_CORE_READ(old_dentry, d_inode), 0,
		     BPF_CORE_READ(old_dentry, d_name.name));
	if (err)
		return err;
	return decide(NW_OP_LINK, 0, dir, BPF_CORE_READ(new_dentry, d_name.name));
}

SEC("lsm/inode_create")
int BPF_PROG(nw_inode_create, struct inode *dir, struct dentry *dentry, unsigned short mode,
	     int ret)
{
	if (ret)
		return ret;
	return decide(NW_OP_CREATE, 0, dir, BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_mkdir")
int BPF_PROG(nw_inode_mkdir, struct inode *dir, struct dentry *dentry, unsigned short mode,
	     int ret)
{
	if (ret)
		return ret;
	return decide(NW_OP_CREATE, 0, dir, BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/inode_symlink")
int BPF_PROG(nw_inode_symlink, struct inode *dir, struct dentry *dentry, const char *old_name,
	     int ret)
{
	if (ret)
		return ret;
	return decide(NW_OP_CREATE, 0, dir, BPF_CORE_READ(dentry, d_name.name));
}

SEC("lsm/bpf_map")
int BPF_PROG(nw_bpf_map, struct bpf_map *map, unsigned int fmode, int ret)
{
	__u32 map_id;
	__u32 *rule_id;

	if (ret)
		return ret;
	if (!(fmode & FMODE_WRITE))
		return 0;
	map_id = BPF_CORE_READ(map, id);
	rule_id = bpf_map_lookup_elem(&protected_maps, &map_id);
	if (!rule_id || is_agent())
		return 0;
	{
		struct nw_inode_key key = {.ino = map_id};

		emit(NW_OP_MAP_WRITE, NW_VERDICT_DENY, NW_MODE_ENFORCE, *rule_id, &key, 0,
		     (const unsigned char *)map->name);
	}
	return -EPERM;
}

/* Getting a link fd by id is the way to detach a link without its pin. */
SEC("lsm/bpf")
int BPF_PROG(nw_bpf, int cmd, union bpf_attr *attr, unsigned int size, int ret)
{
	__u32 link_id;

	if (ret || cmd != BPF_LINK_GET_FD_BY_ID)
		return ret;
	link_id = BPF_CORE_READ(attr, link_id);
	if (!bpf_map_lookup_elem(&protected_links, &link_id) || is_agent())
		return 0;
	{
		struct nw_inode_key key = {.ino = link_id};

		emit(NW_OP_LINK_OPEN, NW_VERDICT_DENY, NW_MODE_ENFORCE, 0, &key, 0, 0);
	}
	return -EPERM;
}

/* Opening a pin for writing (links need it to be detached) goes through inode_permission;
 * only bpffs inodes are looked at, so other path walks pay one comparison. */
SEC("lsm/inode_permission")
int BPF_PROG(nw_inode_permission, struct inode *inode, int mask, int ret)
{
	struct nw_inode_key key = {};
	struct nw_rule *rule;

	if (ret || !(mask & MAY_WRITE) || BPF_CORE_READ(inode, i_sb, s_magic) != BPF_FS_MAGIC)
		return ret;
	key_of(inode, &key);
	rule = bpf_map_lookup_elem(&protected_inodes, &key);
	if (!rule || rule->mode != NW_MODE_ENFORCE || is_agent())
		return 0;
	emit(NW_OP_PIN_WRITE, NW_VERDICT_DENY, NW_MODE_ENFORCE, rule->rule_id, &key, &key, 0);
	return -EPERM;
}

/* Nobody attaches to the agent with ptrace or writes its memory through /proc/PID/mem. */
SEC("lsm/ptrace_access_check")
int BPF_PROG(nw_ptrace_access_check, struct task_struct *child, unsigned int mode, int ret)
{
	__u32 *mark;

	if (ret || !(mode & PTRACE_MODE_ATTACH))
		return ret;
	mark = bpf_task_storage_get(&agent_tasks, child, 0, 0);
	if (!mark || *mark != 1 || is_agent())
		return 0;
	{
		struct nw_inode_key key = {.ino = BPF_CORE_READ(child, pid)};

		emit(NW_OP_PTRACE, NW_VERDICT_DENY, NW_MODE_ENFORCE, 0, &key, 0, 0);
	}
	return -EPERM;
}

/* prctl(NW_PRCTL_HANDSHAKE): the loading process marks itself as the agent, once. A non-zero
 * return skips the default hook, so success is NW_HANDSHAKE_OK (0 would fall through to
 * prctl's EINVAL). Every other option returns 0: the default hook's -ENOSYS then means "no LSM
 * opinion" and prctl carries on as usual. */
SEC("lsm/task_prctl")
int BPF_PROG(nw_task_prctl, int option, unsigned long arg2, unsigned long arg3,
	     unsigned long arg4, unsigned long arg5, int ret)
{
	struct task_struct *task;
	__u32 *mark;
	__u32 tgid;

	if (option != NW_PRCTL_HANDSHAKE)
		return ret;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid != agent_tgid || !agent_tgid ||
	    __sync_val_compare_and_swap(&handshake_done, 0, 1) != 0) {
		emit(NW_OP_HANDSHAKE, NW_VERDICT_DENY, NW_MODE_ENFORCE, 0, 0, 0, 0);
		return -EPERM;
	}
	task = bpf_get_current_task_btf();
	mark = bpf_task_storage_get(&agent_tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!mark)
		return -ENOMEM;
	*mark = 1;
	emit(NW_OP_HANDSHAKE, NW_VERDICT_ALLOW, NW_MODE_ENFORCE, 0, 0, 0, 0);
	return NW_HANDSHAKE_OK;
}

/* New threads of the agent are the agent; new processes (fork, vfork) are not. */
SEC("lsm/task_alloc")
int BPF_PROG(nw_task_alloc, struct task_struct *task, unsigned long clone_flags, int ret)
{
	__u32 *mark;

	if (ret || !(clone_flags & CLONE_THREAD) || !is_agent())
		return ret;
	mark = bpf_task_storage_get(&agent_tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (mark)
		*mark = 1;
	return 0;
}

/* An agent task that execs another program stops being the agent. */
SEC("lsm/bprm_committing_creds")
int BPF_PROG(nw_bprm_committing_creds, struct linux_binprm *bprm)
{
	bpf_task_storage_delete(&agent_tasks, bpf_get_current_task_btf());
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
