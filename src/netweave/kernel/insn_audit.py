"""Pre-load instruction audit: refuse a program that calls a helper or kfunc it may not.

Run on every program before every load. The audit reads the instructions libbpf holds for
each program (``bpf_program__insns``) and, because static subprograms live in ``.text``
and are only appended to their callers while libbpf loads, also the executable sections of
the ELF image itself, checking those against every program type in the object.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from netweave.kernel.errors import AuditRefused
from netweave.kernel.helpers import HELPER_ID, ProgType, helper_name

BPF_CALL = 0x85
PSEUDO_HELPER = 0
PSEUDO_KFUNC = 2

ALWAYS_REFUSED: frozenset[int] = frozenset(
    HELPER_ID[n]
    for n in (
        "probe_write_user",
        "override_return",
        "send_signal",
        "send_signal_thread",
        "sys_bpf",
        "sys_close",
        "kallsyms_lookup_name",
        "probe_read",
        "probe_read_str",
    )
)
DEBUG_ONLY: frozenset[int] = frozenset(HELPER_ID[n] for n in ("trace_printk", "trace_vprintk"))


def _ids(names: str) -> frozenset[int]:
    return frozenset(HELPER_ID[n] for n in names.split())


_BASE = _ids(
    """map_lookup_elem map_update_elem map_delete_elem ktime_get_ns ktime_get_boot_ns
    ktime_get_coarse_ns get_prandom_u32 get_smp_processor_id get_numa_node_id tail_call
    spin_lock spin_unlock jiffies64 ringbuf_output ringbuf_reserve ringbuf_submit
    ringbuf_discard ringbuf_query for_each_map_elem loop map_lookup_percpu_elem
    perf_event_output trace_printk trace_vprintk snprintf"""
)
_PACKET_READ = _ids(
    """skb_load_bytes skb_load_bytes_relative get_socket_cookie get_hash_recalc csum_diff
    csum_level skb_cgroup_id get_netns_cookie sk_fullsock tcp_sock get_listener_sock
    skc_to_tcp_sock skc_to_tcp6_sock check_mtu fib_lookup get_socket_uid"""
)
_XDP = _ids("xdp_adjust_head xdp_adjust_meta xdp_adjust_tail xdp_get_buff_len xdp_load_bytes")
_TRACE = _ids(
    """get_current_pid_tgid get_current_uid_gid get_current_comm get_current_task
    get_current_task_btf probe_read_kernel probe_read_kernel_str probe_read_user
    probe_read_user_str get_current_cgroup_id get_current_ancestor_cgroup_id
    get_socket_cookie get_ns_current_pid_tgid sk_storage_get sk_storage_delete
    task_storage_get task_storage_delete skc_to_tcp_sock skc_to_tcp6_sock
    skc_to_udp6_sock skc_to_unix_sock get_func_ip get_attach_cookie get_netns_cookie
    d_path"""
)
_LSM = _TRACE | _ids("inode_storage_get inode_storage_delete get_retval set_retval bprm_opts_set")

ALLOWED: dict[int, frozenset[int]] = {
    ProgType.XDP: _BASE | _PACKET_READ | _XDP,
    ProgType.SCHED_CLS: _BASE | _PACKET_READ,
    ProgType.SOCKET_FILTER: _BASE | _PACKET_READ,
    ProgType.TRACING: _BASE | _TRACE,
    ProgType.RAW_TRACEPOINT: _BASE | _TRACE,
    ProgType.TRACEPOINT: _BASE | _TRACE,
    ProgType.KPROBE: _BASE | _TRACE,
    ProgType.LSM: _BASE | _LSM,
}
# kfuncs allowed by name; none are needed today, so every kfunc call is refused.
ALLOWED_KFUNCS: dict[int, frozenset[str]] = {}


@dataclass(frozen=True, slots=True)
class Call:
    """One call instruction: its index, kind (helper or kfunc) and helper id."""

    index: int
    kind: int
    imm: int


def calls(insns: bytes) -> Iterator[Call]:
    """Every helper or kfunc call in a run of raw 8-byte eBPF instructions."""
    for i, (code, regs, _off, imm) in enumerate(struct.iter_unpack("<BBhi", insns)):
        if code == BPF_CALL and (regs >> 4) in (PSEUDO_HELPER, PSEUDO_KFUNC):
            yield Call(i, regs >> 4, imm)


def check_program(
    name: str,
    prog_type: int,
    insns: bytes,
    *,
    allow_debug: bool = False,
    kfunc_names: dict[int, str] | None = None,
) -> None:
    """Raise :class:`AuditRefused` at the first call ``name`` (of ``prog_type``) may not make.

    ``kfunc_names`` maps instruction indexes to kfunc names where they are known (from the
    ELF relocations); an unnamed kfunc call is refused.
    """
    allowed = ALLOWED.get(prog_type)
    for call in calls(insns):
        if call.kind == PSEUDO_KFUNC:
            kname = (kfunc_names or {}).get(call.index, "an unnamed kfunc")
            if kname not in ALLOWED_KFUNCS.get(prog_type, frozenset()):
                raise AuditRefused(name, call.index, f"kfunc {kname}", "kfunc not allowed")
            continue
        helper = helper_name(call.imm)
        if call.imm in ALWAYS_REFUSED:
            raise AuditRefused(name, call.index, helper, "always refused")
        if call.imm in DEBUG_ONLY and not allow_debug:
            raise AuditRefused(name, call.index, helper, "debug output refused in release builds")
        if allowed is None:
            raise AuditRefused(name, call.index, helper, f"program type {prog_type} not audited")
        if call.imm not in allowed:
            raise AuditRefused(
                name, call.index, helper, f"not allowed for program type {prog_type}"
            )


def check_subprograms(
    sections: Iterable[tuple[str, bytes]], prog_types: Iterable[int], *, allow_debug: bool = False
) -> None:
    """Audit code that no program owns yet (``.text`` subprograms) against every type present."""
    types = sorted(set(prog_types))
    for section, insns in sections:
        for prog_type in types:
            check_program(section, prog_type, insns, allow_debug=allow_debug)
