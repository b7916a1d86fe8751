"""Active service prober: nmap's version-detection algorithm over asyncio.

Per port (TCP; UDP is the same without the NULL probe and TLS), the probe order is nmap's:
the NULL probe (banner), the probes whose ``ports`` (``sslports`` inside TLS) list the
port, then every other probe of rarity up to the intensity, in file order, skipping probes
that cannot confirm a softmatched service. A response is matched against the probe's
fallbacks; a hard match ends the port, ``ssl`` restarts the sequence inside a TLS tunnel,
``ssl/<svc>`` is <svc> over TLS.

nmap runs these probes one after another and waits out each silent probe (6 s for the NULL
probe, 5 s for most). Here the next probes of a port run speculatively on their own
connections (a small window per port) and the outcome is decided in nmap's order, so the
answer is the one nmap would give. The one shortcut (off with ``exact=True``): once a probe
later in nmap's order has answered, an earlier probe that stays silent (or stops sending)
much longer than the port's observed answer time is taken as timed out instead of waiting
nmap's full 5-6 s.

Every probe sent is counted in :class:`ProbeLog` and logged; every address is checked
against the :class:`Scope` before a socket is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from netweave.services.matcher import Matcher
from netweave.services.records import Probe, ServiceMatch
from netweave.services.records import Protocol as ProbeProtocol
from netweave.services.scope import Scope

__all__ = ["ProbeLog", "ProbeResult", "Prober", "ProberConfig", "Target"]

log = logging.getLogger("netweave.services.prober")

_READ_LIMIT: Final = 4096
_CONNECT_TIMEOUT_S: Final = 5.0
_SSL_CONNECT_TIMEOUT_S: Final = 8.0
_DEFAULT_TCPWRAPPED_MS: Final = 2000


@dataclass(frozen=True, slots=True)
class Target:
    """One port to identify."""

    host: str
    port: int
    proto: str = "tcp"


@dataclass(frozen=True, slots=True)
class ProberConfig:
    """Knobs of the active prober.

    ``intensity``: highest probe rarity tried on a port not in the probe's port list (nmap's
    --version-intensity, 0-9). ``concurrency``: connections open at once, all ports together.
    ``window``: probes of one port in flight at once (1 = nmap's strictly serial order).
    ``rate``: probes sent per second at most. ``exact``: never cut a silent probe short.
    ``all_ports``: probe ports the ``Exclude`` directive lists too (nmap's --allports).
    ``early_probes``: probes started with the first window whatever their place, so a port
    silent to plain text (a TLS-only server) answers early and the silent waits are cut.
    ``grace_ms``, ``grace_latency_factor``, ``grace_max_ms``: once a probe later in nmap's
    order has answered, a probe still waiting after max(grace_ms, factor x the port's
    fastest answer), at most grace_max_ms, is deemed timed out (nmap would wait
    totalwaitms, 5-6 s).
    """

    intensity: int = 7
    concurrency: int = 32
    window: int = 6
    rate: float = 200.0
    exact: bool = False
    grace_ms: int = 500
    grace_latency_factor: float = 4.0
    grace_max_ms: int = 1500
    all_ports: bool = False
    early_probes: tuple[str, ...] = ("SSLSessionReq", "TLSSessionReq")


class _End(enum.Enum):
    HARD = "hard"
    DONE = "done"  # read until timeout / limit / EOF without a hard match
    EOF_EMPTY = "eof-empty"
    RESET = "reset"
    CONNECT_FAILED = "connect-failed"
    TLS_FAILED = "tls-failed"


@dataclass(slots=True)
class _Outcome:
    probe: Probe
    end: _End
    response: bytes = b""
    match: ServiceMatch | None = None
    elapsed_ms: float = 0.0
    error: str | None = None
    chunk_ends: tuple[int, ...] = ()  # where each read ended (nmap matches after each)
    matched: bool = True  # False: ``match`` not computed yet (a speculative probe)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The identification of one port by the active prober."""

    target: Target
    match: ServiceMatch | None
    tunnel: str | None
    tcpwrapped: bool = False
    error: str | None = None
    probes_sent: int = 0
    sent_probe: str | None = None


@dataclass(slots=True)
class ProbeLog:
    """Every probe the prober sent: a count per probe name and the running total."""

    total: int = 0
    per_probe: Counter[str] = field(default_factory=Counter)
    per_target: Counter[Target] = field(default_factory=Counter)

    def record(self, target: Target, probe: Probe, tunnel: bool) -> None:
        """Count one probe sent to ``target`` and log it."""
        self.total += 1
        self.per_probe[probe.name] += 1
        self.per_target[target] += 1
        log.info(
            "probe %s -> %s:%d/%s%s (#%d)",
            probe.name,
            target.host,
            target.port,
            target.proto,
            " over TLS" if tunnel else "",
            self.total,
        )


class _RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._interval == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)


def _tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ssl.SSLError, ValueError):
        context.set_ciphers("ALL:@SECLEVEL=0")
    with contextlib.suppress(ValueError, AttributeError):
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    return context


class Prober:
    """Identifies services on TCP and UDP ports with the probes of one :class:`Matcher`."""

    def __init__(self, matcher: Matcher, scope: Scope, config: ProberConfig | None = None):
        self.matcher = matcher
        self.db = matcher.db
        self.scope = scope
        self.config = config or ProberConfig()
        self.log = ProbeLog()
        self._tls = _tls_context()
        self._connections: asyncio.Semaphore | None = None
        self._limiter: _RateLimiter | None = None

    async def probe_many(self, targets: Sequence[Target]) -> list[ProbeResult]:
        """Identify every target (in parallel); results in the order of ``targets``.

        Raises :class:`~netweave.services.scope.OutOfScopeError` before anything is sent if any
        target resolves outside the scope, and ValueError for a target that is neither TCP
        nor UDP or does not resolve.
        """
        resolved = [await self._resolve(target) for target in targets]
        self._connections = asyncio.Semaphore(max(1, self.config.concurrency))
        self._limiter = _RateLimiter(self.config.rate)
        return list(
            await asyncio.gather(
                *(self._probe_port(t, a) for t, a in zip(targets, resolved, strict=True))
            )
        )

    async def _resolve(self, target: Target) -> str:
        if target.proto not in ("tcp", "udp"):
            raise ValueError(f"{target.host}:{target.port}/{target.proto}: TCP or UDP only")
        kind = socket.SOCK_STREAM if target.proto == "tcp" else socket.SOCK_DGRAM
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=kind)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {target.host}: {exc.strerror}") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            self.scope.check(target.host, address)
        return addresses[0]

    def _sequence(self, port: int, proto: str, tunnel: bool) -> list[Probe]:
        null = self.db.null_probe if proto == "tcp" else None
        mine = [p for p in self.db.probes if p.protocol == proto and not p.is_null]
        first = [p for p in mine if p.port_is_probable(port, tunnel)]
        rest = [
            p
            for p in mine
            if not p.port_is_probable(port, tunnel) and p.rarity <= self.config.intensity
        ]
        return ([null] if null is not None else []) + first + rest

    async def _probe_port(self, target: Target, address: str) -> ProbeResult:
        protocol: ProbeProtocol = "udp" if target.proto == "udp" else "tcp"
        if self.db.is_excluded(target.port, protocol) and not self.config.all_ports:
            reason = "port excluded from version detection by the probes file's Exclude line"
            return ProbeResult(target, None, None, error=reason)
        tunnel = False
        while True:
            result = await self._run_sequence(target, address, tunnel)
            match = result.match
            if match is not None and not match.soft and not result.tcpwrapped:
                if match.service.startswith("ssl/"):
                    bare = _replace_service(match, match.service[4:])
                    found = ProbeResult(target, bare, "ssl", sent_probe=result.sent_probe)
                    return _with_count(found, self.log)
                if match.service == "ssl" and not tunnel and target.proto == "tcp":
                    tunnel = True
                    continue
            return _with_count(result, self.log)

    async def _run_sequence(self, target: Target, address: str, tunnel: bool) -> ProbeResult:
        order = self._sequence(target.port, target.proto, tunnel)
        runs: dict[int, _ProbeRun] = {}
        port_state = _PortState(self.config)
        soft: ServiceMatch | None = None
        soft_probe: str | None = None
        tunnel_name = "ssl" if tunnel else None
        position = 0
        window = max(1, self.config.window)

        def launch(indexes: list[int]) -> None:
            """Start the probes at ``indexes`` of ``order`` not started yet."""
            for i in indexes:
                if i not in runs:
                    runs[i] = _ProbeRun(
                        self, port_state, target=target, address=address, probe=order[i],
                        tunnel=tunnel, position=i,
                    )  # fmt: skip

        try:
            while True:
                candidates = [
                    i
                    for i in range(position, len(order))
                    if soft is None or soft.service in order[i].services
                ]
                if not candidates:
                    return ProbeResult(target, soft, tunnel_name, sent_probe=soft_probe)
                current = candidates[0]
                early = [i for i in candidates if order[i].name in self.config.early_probes]
                launch(candidates[:window] + early)
                runs[current].make_current()
                outcome = _settle(self.matcher, await runs[current].task)
                log.debug(
                    "%s:%d %s: %s after %.0f ms, %d bytes%s",
                    target.host, target.port, outcome.probe.name, outcome.end.value,
                    outcome.elapsed_ms, len(outcome.response),
                    f", matched {outcome.match.service}" if outcome.match else "",
                )  # fmt: skip
                if outcome.end is _End.CONNECT_FAILED:
                    # nmap gives up on a port whose connect fails mid-scan (INCOMPLETE).
                    return ProbeResult(target, soft, tunnel_name, error=outcome.error)
                if outcome.end is _End.HARD and outcome.match is not None:
                    return ProbeResult(
                        target, outcome.match, tunnel_name, sent_probe=order[current].name
                    )
                if order[current].is_null and outcome.end in (_End.EOF_EMPTY, _End.RESET):
                    wrapped_ms = order[current].tcpwrapped_ms or _DEFAULT_TCPWRAPPED_MS
                    if outcome.elapsed_ms <= wrapped_ms:
                        return ProbeResult(target, None, tunnel_name, tcpwrapped=True)
                if outcome.match is not None and outcome.match.soft and soft is None:
                    soft = outcome.match
                    soft_probe = order[current].name
                position = current + 1
        finally:
            for run in runs.values():
                run.cancel()


def _settle(matcher: Matcher, outcome: _Outcome) -> _Outcome:
    """Match a speculative probe's response now, read by read, as nmap would have."""
    if outcome.matched:
        return outcome
    best: ServiceMatch | None = None
    for end in outcome.chunk_ends:
        found = matcher.match(outcome.probe, outcome.response[:end])
        if found is not None and not found.soft:
            return _Outcome(
                outcome.probe, _End.HARD, outcome.response[:end], found, outcome.elapsed_ms
            )
        if found is not None and best is None:
            best = found
    outcome.match = best
    outcome.matched = True
    return outcome


def _replace_service(match: ServiceMatch, service: str) -> ServiceMatch:
    return ServiceMatch(
        service=service,
        soft=match.soft,
        probe=match.probe,
        line=match.line,
        product=match.product,
        version=match.version,
        info=match.info,
        hostname=match.hostname,
        ostype=match.ostype,
        devicetype=match.devicetype,
        cpe=match.cpe,
    )


def _with_count(result: ProbeResult, probe_log: ProbeLog) -> ProbeResult:
    return ProbeResult(
        result.target,
        result.match,
        result.tunnel,
        result.tcpwrapped,
        result.error,
        probes_sent=probe_log.per_target[result.target],
        sent_probe=result.sent_probe,
    )


class _Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _DatagramInbox(asyncio.DatagramProtocol):
    """Datagrams from a connected UDP socket, read like a stream (never at EOF)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self._queue.put_nowait(exc if isinstance(exc, OSError) else OSError(str(exc)))

    async def read(self, n: int = -1) -> bytes:
        """The next non-empty datagram; raises the socket error (ICMP unreachable) instead."""
        while True:
            item = await self._queue.get()
            if isinstance(item, OSError):
                raise item
            if item:
                return item


class _PortState:
    """What the probes of one port learn together: which answered, how fast.

    A probe is only cut short when a probe *later in nmap's order* has answered (the port
    is alive and answers that one, while this one stays silent), after max(grace_ms,
    factor x the port's fastest answer), capped at grace_max_ms.
    """

    def __init__(self, config: ProberConfig) -> None:
        self._config = config
        self._runs: list[_ProbeRun] = []
        self._grace_s: float | None = None
        self._latest_answered = -1  # highest position in nmap's order that answered

    def join(self, run: _ProbeRun) -> None:
        """Track ``run``; hurry it at once if a later probe already answered."""
        self._runs.append(run)
        if self._grace_s is not None and run.position < self._latest_answered:
            run.hurry(self._grace_s)

    def answered(self, position: int, latency_s: float) -> None:
        """The probe at ``position`` got its first answer (data or close) after ``latency_s``."""
        config = self._config
        if config.exact:
            return
        grace = min(
            max(config.grace_ms / 1000.0, latency_s * config.grace_latency_factor),
            max(config.grace_ms, config.grace_max_ms) / 1000.0,
        )
        # The fastest answer is the port's latency; slower ones include our own stalls.
        if self._grace_s is None or grace < self._grace_s:
            self._grace_s = grace
        self._latest_answered = max(self._latest_answered, position)
        for run in self._runs:
            if run.position < self._latest_answered:
                run.hurry(self._grace_s)


class _ProbeRun:
    """One probe on its own connection: connect, send, read until nmap would stop."""

    def __init__(
        self,
        prober: Prober,
        port_state: _PortState,
        *,
        target: Target,
        address: str,
        probe: Probe,
        tunnel: bool,
        position: int,
    ) -> None:
        self._prober = prober
        self.position = position
        self._port_state = port_state
        self._target = target
        self._address = address
        self._probe = probe
        self._tunnel = tunnel
        self._hurry_grace: float | None = None
        self._limit_changed = asyncio.Event()
        self._current = False
        self._cancelled = False
        self.task: asyncio.Task[_Outcome] = asyncio.ensure_future(self._run())
        port_state.join(self)

    def hurry(self, grace_s: float) -> None:
        """Shorten this probe's wait to ``grace_s`` after it started (if not yet past)."""
        if self._hurry_grace is None or grace_s < self._hurry_grace:
            self._hurry_grace = grace_s
            self._limit_changed.set()

    def make_current(self) -> None:
        """nmap's order reached this probe: match its answers as they come (stop at a hit).

        Until then a probe only collects its answer; matching it costs CPU that is wasted
        whenever an earlier probe decides the port.
        """
        if not self._current:
            self._current = True
            self._limit_changed.set()

    def cancel(self) -> None:
        """Stop the probe (its result is no longer needed)."""
        self._cancelled = True
        if not self.task.done():
            self.task.cancel()

    async def _run(self) -> _Outcome:
        prober = self._prober
        assert prober._connections is not None and prober._limiter is not None
        async with prober._connections:
            await prober._limiter.acquire()
            return await self._exchange()

    async def _exchange(self) -> _Outcome:
        if self._target.proto == "udp":
            return await self._exchange_udp()
        probe = self._probe
        context = self._prober._tls if self._tunnel else None
        timeout = _SSL_CONNECT_TIMEOUT_S if self._tunnel else _CONNECT_TIMEOUT_S
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._address, self._target.port, ssl=context),
                timeout,
            )
        except ssl.SSLError as exc:
            return _Outcome(probe, _End.TLS_FAILED, error=f"TLS handshake failed: {exc}")
        except (OSError, TimeoutError) as exc:
            return _Outcome(probe, _End.CONNECT_FAILED, error=f"connect failed: {exc}")
        if self._cancelled:
            # Python 3.11's wait_for can hand back a connection that completed as the probe
            # was cancelled: nothing is sent on it, so it is not counted either.
            writer.close()
            raise asyncio.CancelledError
        started = time.monotonic()
        self._prober.log.record(self._target, probe, self._tunnel)
        try:
            if probe.payload and not probe.is_null:
                writer.write(probe.payload)
                await writer.drain()
            return await self._read(reader, started)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as exc:
            return _Outcome(
                probe, _End.RESET, elapsed_ms=(time.monotonic() - started) * 1000, error=str(exc)
            )
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _exchange_udp(self) -> _Outcome:
        probe = self._probe
        loop = asyncio.get_running_loop()
        try:
            transport, inbox = await loop.create_datagram_endpoint(
                _DatagramInbox, remote_addr=(self._address, self._target.port)
            )
        except OSError as exc:
            return _Outcome(probe, _End.CONNECT_FAILED, error=f"connect failed: {exc}")
        started = time.monotonic()
        self._prober.log.record(self._target, probe, False)
        try:
            transport.sendto(probe.payload)
            return await self._read(inbox, started)
        except OSError as exc:  # ICMP port unreachable arrives as ConnectionRefusedError
            return _Outcome(
                probe, _End.RESET, elapsed_ms=(time.monotonic() - started) * 1000, error=str(exc)
            )
        finally:
            transport.close()

    async def _read(self, reader: _Readable, started: float) -> _Outcome:
        probe = self._probe
        deadline = started + probe.totalwait_ms / 1000.0
        response = bytearray()
        ends: list[int] = []
        evaluated = 0
        best: ServiceMatch | None = None
        while True:
            if self._current and evaluated < len(ends):
                for end in ends[evaluated:]:
                    found = self._prober.matcher.match(probe, bytes(response[:end]))
                    if found is not None and not found.soft:
                        elapsed = (time.monotonic() - started) * 1000
                        return _Outcome(probe, _End.HARD, bytes(response[:end]), found, elapsed)
                    if found is not None and best is None:
                        best = found
                evaluated = len(ends)
            if len(response) >= _READ_LIMIT:
                break
            limit = deadline
            if self._hurry_grace is not None:
                limit = min(deadline, started + self._hurry_grace)
            remaining = limit - time.monotonic()
            if remaining <= 0:
                break
            self._limit_changed.clear()
            changed = asyncio.ensure_future(self._limit_changed.wait())
            read = asyncio.ensure_future(reader.read(65536))
            try:
                done, _ = await asyncio.wait(
                    {read, changed}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
                if not read.done():
                    read.cancel()
                elif not read.cancelled():
                    read.exception()  # mark it retrieved; a reset is handled below
            if read not in done:
                with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                    await read
                if changed in done:
                    continue  # the limit shrank or the probe became current: look again
                break
            chunk = read.result()
            elapsed = (time.monotonic() - started) * 1000
            if not response:
                self._port_state.answered(self.position, elapsed / 1000.0)
            if not chunk:
                end_kind = _End.EOF_EMPTY if not response else _End.DONE
                return self._finish(
                    end_kind,
                    response=response,
                    ends=ends,
                    evaluated=evaluated,
                    best=best,
                    elapsed=elapsed,
                )
            response += chunk
            ends.append(len(response))
        elapsed = (time.monotonic() - started) * 1000
        return self._finish(
            _End.DONE,
            response=response,
            ends=ends,
            evaluated=evaluated,
            best=best,
            elapsed=elapsed,
        )

    def _finish(
        self,
        end: _End,
        *,
        response: bytearray,
        ends: list[int],
        evaluated: int,
        best: ServiceMatch | None,
        elapsed: float,
    ) -> _Outcome:
        if evaluated == len(ends):
            return _Outcome(self._probe, end, bytes(response), best, elapsed)
        # Not matched yet (speculative, or reads since): the decision loop settles it.
        return _Outcome(
            self._probe, end, bytes(response), None, elapsed, chunk_ends=tuple(ends), matched=False
        )
