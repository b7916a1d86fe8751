"""Fingerprint records: what ``netweave fingerprint`` prints and the graph labels nodes with.

One record per SYN, SYN-ACK, ClientHello and ServerHello. The JSON form (``as_json``) is
versioned and described by ``schemas/fingerprint-record.schema.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from netweave.fingerprint.p0f_observer import P0fResult

SCHEMA_VERSION: Final = 1

KIND_SYN: Final = "syn"
KIND_SYNACK: Final = "synack"
KIND_CLIENT_HELLO: Final = "client_hello"
KIND_SERVER_HELLO: Final = "server_hello"


@dataclass(frozen=True, slots=True)
class FingerprintRecord:
    """Fingerprints of one packet (or reassembled hello) of a flow."""

    frame: int
    timestamp_ns: int
    kind: str
    src: str
    src_port: int
    dst: str
    dst_port: int
    ja4t: str | None = None
    ja4ts: str | None = None
    ja4: str | None = None
    ja4s: str | None = None
    p0f: P0fResult | None = None
    tunnel: str = ""

    def as_json(self) -> dict[str, Any]:
        """The record as the JSON object of ``fingerprint-record.schema.json``."""
        out: dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "frame": self.frame,
            "timestamp_ns": self.timestamp_ns,
            "kind": self.kind,
            "src": self.src,
            "src_port": self.src_port,
            "dst": self.dst,
            "dst_port": self.dst_port,
        }
        for name in ("ja4t", "ja4ts", "ja4", "ja4s"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.p0f is not None:
            p = self.p0f
            out["p0f"] = {
                "module": p.module,
                "raw_sig": p.raw_sig,
                "label": p.label,
                "kind": p.kind,
                "os_class": p.os_class,
                "name": p.name,
                "flavor": p.flavor,
                "dist": p.dist,
                "params": p.params,
                "generic": p.generic,
                "fuzzy": p.fuzzy,
            }
        if self.tunnel:
            out["tunnel"] = self.tunnel
        return out
