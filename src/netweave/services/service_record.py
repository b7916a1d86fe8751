"""The service record netweave emits per port (schema: schemas/service-record.schema.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netweave.services.records import ServiceMatch

__all__ = ["SCHEMA_VERSION", "ServiceRecord", "record_from_match"]

SCHEMA_VERSION = 1
Method = Literal["active", "passive"]


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What runs on one server port, and how we learned it."""

    host: str
    port: int
    proto: str
    service: str | None
    product: str | None
    version: str | None
    info: str | None
    hostname: str | None
    ostype: str | None
    devicetype: str | None
    cpe: tuple[str, ...]
    method: Method
    probe: str | None
    tunnel: str | None
    soft: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        """The record as a JSON object (the schema's shape)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "host": self.host,
            "port": self.port,
            "proto": self.proto,
            "service": self.service,
            "product": self.product,
            "version": self.version,
            "info": self.info,
            "hostname": self.hostname,
            "ostype": self.ostype,
            "devicetype": self.devicetype,
            "cpe": list(self.cpe),
            "method": self.method,
            "probe": self.probe,
            "tunnel": self.tunnel,
            "soft": self.soft,
            "error": self.error,
        }


def record_from_match(
    host: str,
    port: int,
    proto: str,
    match: ServiceMatch | None,
    *,
    method: Method,
    tunnel: str | None = None,
    error: str | None = None,
) -> ServiceRecord:
    """Build a record; an ``ssl/<svc>`` match becomes <svc> with tunnel ``ssl`` as in nmap."""
    if match is None:
        return ServiceRecord(
            host,
            port,
            proto,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            (),
            method,
            None,
            tunnel,
            False,
            error,
        )
    service = match.service
    if service.startswith("ssl/"):
        service, tunnel = service[4:], "ssl"
    return ServiceRecord(
        host=host,
        port=port,
        proto=proto,
        service=service,
        product=match.product,
        version=match.version,
        info=match.info,
        hostname=match.hostname,
        ostype=match.ostype,
        devicetype=match.devicetype,
        cpe=match.cpe,
        method=method,
        probe=match.probe,
        tunnel=tunnel,
        soft=match.soft,
        error=error,
    )
