"""Records shared by the socket table's layers (all frozen and slotted)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class TcpState(IntEnum):
    """Kernel socket states (``include/net/tcp_states.h``); UDP uses ESTABLISHED and CLOSE."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12


def state_name(state: int) -> str:
    """Name of a kernel socket state number, or ``UNKNOWN(n)``."""
    try:
        return TcpState(state).name
    except ValueError:
        return f"UNKNOWN({state})"


class Direction(StrEnum):
    """Who opened a socket, seen from the namespace it lives in."""

    LISTEN = "LISTEN"
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"
    LOCAL_INBOUND = "LOCAL_INBOUND"
    LOCAL_OUTBOUND = "LOCAL_OUTBOUND"
    UNCONNECTED = "UNCONNECTED"


@dataclass(frozen=True, slots=True)
class RawSocket:
    """One TCP or UDP socket as the kernel reported it (sock_diag or /proc/net).

    Addresses are text as ``inet_ntop`` writes them; IPv4 seen through a dual-stack IPv6
    socket stays ``::ffff:a.b.c.d`` here. ``cookie`` is 0 when the source has none (procfs);
    ``inode`` is 0 for sockets no file refers to (TIME_WAIT, SYN_RECV).
    """

    proto: str
    family: int
    state: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    inode: int
    uid: int
    cookie: int
    v6only: bool


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The process that holds a socket open (the lowest PID when several share it)."""

    pid: int
    comm: str
    cmdline: str
    uid: int
    netns: int
    cgroup: str


@dataclass(frozen=True, slots=True)
class Socket:
    """A classified socket: what the kernel said, where it lives, its direction and owner."""

    netns: int
    raw: RawSocket
    direction: Direction
    process: ProcessInfo | None


@dataclass(frozen=True, slots=True)
class NamespaceView:
    """What one network namespace contributed to a snapshot."""

    netns: int
    source: str
    local_ips: frozenset[str]
    ephemeral_ports: tuple[int, int]
    socket_count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One classified socket table of the host (or of the caller's namespace only)."""

    taken_at: float
    monotonic_ns: int
    namespaces: tuple[NamespaceView, ...]
    sockets: tuple[Socket, ...]


@dataclass(frozen=True, slots=True)
class StateChange:
    """One TCP state change, as the kernel's ``inet_sock_set_state`` tracepoint reports it.

    ``ktime_ns`` is CLOCK_MONOTONIC (``bpf_ktime_get_ns``). ``netns`` is the namespace inode
    or 0 when unknown. ``pid`` and ``comm`` are only trustworthy on CLOSE -> SYN_SENT (the
    connecting task); other transitions may run in softirq context.
    """

    cookie: int
    old_state: int
    new_state: int
    family: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    pid: int
    comm: str
    ktime_ns: int
    netns: int = 0
    proto: str = "tcp"


@dataclass(frozen=True, slots=True)
class Outbound:
    """A destination this host opened connections to."""

    proto: str
    ip: str
    port: int
    first_seen: float
    last_seen: float
    pid: int
    comm: str
    connections: int


@dataclass(frozen=True, slots=True)
class LocalIP:
    """An address this host owns (in any of its namespaces)."""

    ip: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket or a UDP socket bound outside the ephemeral range."""

    proto: str
    address: str
    port: int
    netns: int
    pid: int | None
    comm: str | None


@dataclass(frozen=True, slots=True)
class HostReport:
    """The per-host lists the multi-host map is built from."""

    taken_at: float
    outbound: tuple[Outbound, ...]
    local_ips: tuple[LocalIP, ...]
    listeners: tuple[Listener, ...]
