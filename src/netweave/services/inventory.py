"""Services per server port, kept for the graph's server nodes (a node may serve many ports).

Active and passive records of the same (host, port, proto) are merged: the more specific
identification wins (a hard match over a softmatch over nothing; then one naming a product,
then a version); among equals the newest record wins.
"""

from __future__ import annotations

from collections.abc import Iterable

from netweave.services.service_record import ServiceRecord

__all__ = ["ServiceInventory"]

Key = tuple[str, int, str]


def _rank(record: ServiceRecord) -> tuple[bool, bool, bool, bool]:
    return (
        record.service is not None,
        not record.soft,
        record.product is not None,
        record.version is not None,
    )


class ServiceInventory:
    """The best-known service record per (host, port, proto)."""

    def __init__(self, records: Iterable[ServiceRecord] = ()) -> None:
        self._records: dict[Key, ServiceRecord] = {}
        for record in records:
            self.observe(record)

    def observe(self, record: ServiceRecord) -> bool:
        """Keep ``record`` if it is at least as specific as what is known; True if kept."""
        key = (record.host, record.port, record.proto)
        known = self._records.get(key)
        if known is not None and _rank(record) < _rank(known):
            return False
        self._records[key] = record
        return True

    def get(self, host: str, port: int, proto: str = "tcp") -> ServiceRecord | None:
        """The record for one port, or None."""
        return self._records.get((host, port, proto))

    def for_host(self, host: str) -> tuple[ServiceRecord, ...]:
        """Every port ``host`` serves, sorted by (proto, port)."""
        found = [r for (h, _, _), r in self._records.items() if h == host]
        return tuple(sorted(found, key=lambda r: (r.proto, r.port)))

    def __len__(self) -> int:
        return len(self._records)
