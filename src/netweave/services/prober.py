"""Active service prober: nmap's version-detection algorithm over asyncio.

Per TCP port, the probe order is nmap's: the NULL probe (banner), the probes whose
``ports`` (``sslports`` inside TLS) list the port, then every other probe of rarity up to
the intensity, in file order, skipping probes that cannot confirm a softmatched service. A
response is matched against the probe's fallbacks; a hard match ends the port, ``ssl``
restarts the sequence inside a TLS tunnel, ``ssl/<svc>`` is <svc> over TLS.

nmap runs these probes one after another and waits out each silent probe (6 s for the NULL
probe, 5 s for most). Here the next probes of a port run speculatively on their own
connections (a small window per port) and the outcome is decided in nmap's order, so the
answer is the one nmap would give. The one shortcut (off with ``exact=True``): once the port
has answered one probe, a probe that stays silent (or stops sending) for much longer than the
port's observed answer time is taken as timed out instead of waiting nmap's full 5-6 s.

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
from typing import Final

from netweave.services.matcher import Matcher
from netweave.services.records import Probe, ServiceMatch
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
    ``grace_ms``, ``grace_latency_factor``, ``grace_max_ms``: once the port has answered any
    probe, a probe still waiting after max(grace_ms, factor x the port's fastest answer),
    at most grace_max_ms, is deemed timed out (nmap would wait totalwaitms, 5-6 s).
    """

    intensity: int = 7
    concurrency: int = 32
    window: int = 6
    rate: float = 200.0
    exact: bool = False
    grace_ms: int = 250
    grace_latency_factor: float = 4.0
    grace_max_ms: int = 1000


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
    """Identifies services on TCP ports with the probes of one :class:`Matcher`."""

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
        target resolves outside the scope, and ValueError for a non-TCP target.
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
        if target.proto != "tcp":
            raise ValueError(f"{target.host}:{target.port}/{target.proto}: only TCP is probed")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {target.host}: {exc.strerror}") from None
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            self.scope.check(target.host, address)
        return addresses[0]

    def _sequence(self, port: int, tunnel: bool) -> list[Probe]:
        null = self.db.null_probe
        tcp = [p for p in self.db.probes if p.protocol == "tcp" and not p.is_null]
        first = [p for p in tcp if p.port_is_probable(port, tunnel)]
        rest = [
            p
            for p in tcp
            if not p.port_is_probable(port, tunnel) and p.rarity <= self.config.intensity
        ]
        return ([null] if null is not None else []) + first + rest

    async def _probe_port(self, target: Target, address: str) -> ProbeResult:
        tunnel = False
        while True:
            result = await self._run_sequence(target, address, tunnel)
            match = result.match
            if match is not None and not match.soft and not result.tcpwrapped:
                if match.service.startswith("ssl/"):
                    bare = _replace_service(match, match.service[4:])
                    found = ProbeResult(target, bare, "ssl", sent_probe=result.sent_probe)
                    return _with_count(found, self.log)
                if match.service == "ssl" and not tunnel:
                    tunnel = True
                    continue
            return _with_count(result, self.log)

    async def _run_sequence(self, target: Target, address: str, tunnel: bool) -> ProbeResult:
        order = self._sequence(target.port, tunnel)
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
                        tunnel=tunnel,
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
                launch(candidates[:window])
                outcome = await runs[current].task
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


class _PortState:
    """What the probes of one port learn together: has the port answered, how fast."""

    def __init__(self, config: ProberConfig) -> None:
        self._config = config
        self._runs: list[_ProbeRun] = []
        self.grace_s: float | None = None
        self._fastest_s: float | None = None

    def join(self, run: _ProbeRun) -> None:
        """Track ``run``; hurry it at once if the port already answered."""
        self._runs.append(run)
        if self.grace_s is not None:
            run.hurry(self.grace_s)

    def answered(self, latency_s: float) -> None:
        """A probe got its first answer (data or close) after ``latency_s``: hurry the rest."""
        if self._config.exact:
            return
        # The fastest answer is the port's latency; slower ones include our own stalls.
        if self._fastest_s is not None and latency_s >= self._fastest_s:
            return
        self._fastest_s = latency_s
        config = self._config
        grace = min(
            max(config.grace_ms / 1000.0, latency_s * config.grace_latency_factor),
            max(config.grace_ms, config.grace_max_ms) / 1000.0,
        )
        self.grace_s = grace
        for run in self._runs:
            run.hurry(grace)


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
    ) -> None:
        self._prober = prober
        self._port_state = port_state
        self._target = target
        self._address = address
        self._probe = probe
        self._tunnel = tunnel
        self._hurry_grace = 0.0
        self._hurry = asyncio.Event()
        self.task: asyncio.Task[_Outcome] = asyncio.ensure_future(self._run())
        port_state.join(self)

    def hurry(self, grace_s: float) -> None:
        """Shorten this probe's wait to ``grace_s`` after it started (if not yet past)."""
        self._hurry_grace = grace_s
        self._hurry.set()

    def cancel(self) -> None:
        """Stop the probe (its result is no longer needed)."""
        if not self.task.done():
            self.task.cancel()

    async def _run(self) -> _Outcome:
        prober = self._prober
        assert prober._connections is not None and prober._limiter is not None
        async with prober._connections:
            await prober._limiter.acquire()
            return await self._exchange()

    async def _exchange(self) -> _Outcome:
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

    async def _read(self, reader: asyncio.StreamReader, started: float) -> _Outcome:
        probe = self._probe
        matcher = self._prober.matcher
        deadline = started + probe.totalwait_ms / 1000.0
        response = bytearray()
        best: ServiceMatch | None = None
        hurry_wait = asyncio.ensure_future(self._hurry.wait())
        try:
            while True:
                limit = deadline
                if self._hurry.is_set():
                    limit = min(deadline, started + self._hurry_grace)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                read = asyncio.ensure_future(reader.read(65536))
                waiters: set[asyncio.Future[object]] = {read}  # type: ignore[arg-type]
                if not self._hurry.is_set():
                    waiters.add(hurry_wait)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(
                    waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                        await read
                    if hurry_wait in done:
                        continue  # the limit shrank: wait again with the new one
                    break
                chunk = read.result()
                elapsed = (time.monotonic() - started) * 1000
                if not response:
                    self._port_state.answered(elapsed / 1000.0)
                if not chunk:
                    if not response:
                        self._port_state.answered(elapsed / 1000.0)
                    end = _End.EOF_EMPTY if not response else _End.DONE
                    return _Outcome(probe, end, bytes(response), best, elapsed)
                response += chunk
                found = matcher.match(probe, bytes(response))
                if found is not None and not found.soft:
                    return _Outcome(probe, _End.HARD, bytes(response), found, elapsed)
                if found is not None and best is None:
                    best = found
                if len(response) >= _READ_LIMIT:
                    break
        finally:
            hurry_wait.cancel()
        elapsed = (time.monotonic() - started) * 1000
        return _Outcome(probe, _End.DONE, bytes(response), best, elapsed)
