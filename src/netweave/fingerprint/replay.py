"""From capture event records to fingerprint records (sans-IO, stateful over one replay).

:class:`Fingerprinter` takes the shared event records (whatever backend produced them)
one at a time and returns the fingerprint records they give rise to. The FoxIO-licensed
fingerprints (JA4T, JA4TS, JA4S) are computed only when ``FingerprintOptions.foxio`` is
true, and are imported only then.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netweave.capture.events import (
    PROTO_TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    FirstPayload,
    TcpHandshake,
)
from netweave.fingerprint.ja4 import ja4
from netweave.fingerprint.p0f import AckRule
from netweave.fingerprint.p0f_db import P0fDatabase
from netweave.fingerprint.p0f_observer import P0fObserver
from netweave.fingerprint.records import (
    KIND_CLIENT_HELLO,
    KIND_SERVER_HELLO,
    KIND_SYN,
    KIND_SYNACK,
    FingerprintRecord,
)
from netweave.fingerprint.tls_hello import ClientHello, stream_hellos

if TYPE_CHECKING:
    from netweave.fingerprint.foxio import Ja4tsTracker


@dataclass(frozen=True, slots=True)
class FingerprintOptions:
    """What to compute: p0f (when a database is given), FoxIO JA4+ (``foxio``), JA4."""

    p0f_db: P0fDatabase | None = None
    foxio: bool = True
    ack_rule: AckRule = AckRule.P0F_X86


class Fingerprinter:
    """Stateful over one stream of events: p0f flow state, JA4TS retransmission gaps."""

    def __init__(self, options: FingerprintOptions) -> None:
        self._options = options
        self._p0f = (
            P0fObserver(options.p0f_db, ack_rule=options.ack_rule)
            if options.p0f_db is not None
            else None
        )
        self._ja4ts: Ja4tsTracker | None = None
        if options.foxio:
            from netweave.fingerprint.foxio import Ja4tsTracker

            self._ja4ts = Ja4tsTracker()

    def feed(self, event: object) -> list[FingerprintRecord]:
        """The fingerprint records ``event`` gives rise to (often none)."""
        if isinstance(event, TcpHandshake):
            record = self._handshake(event)
            return [record] if record is not None else []
        if isinstance(event, FirstPayload) and event.protocol == PROTO_TCP:
            return self._hellos(event)
        return []

    def run(self, events: Iterable[object]) -> Iterator[FingerprintRecord]:
        """Fingerprint records of ``events``, in frame order."""
        for event in events:
            yield from sorted(self.feed(event), key=lambda r: r.frame)

    def _handshake(self, h: TcpHandshake) -> FingerprintRecord | None:
        kind_bits = h.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)
        if kind_bits == TCP_SYN:
            kind = KIND_SYN
        elif kind_bits == TCP_SYN | TCP_ACK:
            kind = KIND_SYNACK
        else:
            return None
        t4 = t4s = None
        if self._ja4ts is not None:
            from netweave.fingerprint.foxio import ja4t

            t4 = ja4t(h)
            t4s = self._ja4ts.observe(h)
        p0f = self._p0f.observe(h) if self._p0f is not None else None
        return FingerprintRecord(
            frame=h.frame,
            timestamp_ns=h.timestamp_ns,
            kind=kind,
            src=h.src,
            src_port=h.src_port,
            dst=h.dst,
            dst_port=h.dst_port,
            ja4t=t4,
            ja4ts=t4s,
            p0f=p0f,
            tunnel=h.tunnel,
        )

    def _hellos(self, p: FirstPayload) -> list[FingerprintRecord]:
        out: list[FingerprintRecord] = []
        for end, hello in stream_hellos(p.data):
            frame = p.frame_at(end)
            if isinstance(hello, ClientHello):
                out.append(_hello_record(p, frame, KIND_CLIENT_HELLO, ja4_value=ja4(hello)))
            else:
                value = None
                if self._options.foxio:
                    from netweave.fingerprint.foxio import ja4s

                    value = ja4s(hello)
                out.append(_hello_record(p, frame, KIND_SERVER_HELLO, ja4s_value=value))
        return out


def _hello_record(
    p: FirstPayload,
    frame: int,
    kind: str,
    *,
    ja4_value: str | None = None,
    ja4s_value: str | None = None,
) -> FingerprintRecord:
    # A hello spread over several segments is reported on the frame that completed it,
    # as tshark does.
    return FingerprintRecord(
        frame=frame,
        timestamp_ns=p.timestamp_ns,
        kind=kind,
        src=p.src,
        src_port=p.src_port,
        dst=p.dst,
        dst_port=p.dst_port,
        ja4=ja4_value,
        ja4s=ja4s_value,
        tunnel=p.tunnel,
    )
