"""Merging active and passive service records per port."""

from __future__ import annotations

from netweave.services.inventory import ServiceInventory
from netweave.services.records import ServiceMatch
from netweave.services.service_record import record_from_match

SOFT = ServiceMatch(service="http", soft=True, probe="GetRequest", line=1)
HARD = ServiceMatch(service="http", soft=False, probe="GetRequest", line=2, product="nginx")
VERSIONED = ServiceMatch(
    service="http", soft=False, probe="GetRequest", line=3, product="nginx", version="1.22.1"
)
SSH = ServiceMatch(service="ssh", soft=False, probe="NULL", line=4, product="OpenSSH")


def test_more_specific_record_wins_and_hosts_serve_many_ports() -> None:
    inventory = ServiceInventory()
    assert inventory.observe(record_from_match("10.0.0.1", 80, "tcp", SOFT, method="passive"))
    assert inventory.observe(record_from_match("10.0.0.1", 80, "tcp", VERSIONED, method="active"))
    # a later, less specific passive sighting does not erase the version
    assert not inventory.observe(record_from_match("10.0.0.1", 80, "tcp", HARD, method="passive"))
    assert not inventory.observe(record_from_match("10.0.0.1", 80, "tcp", None, method="passive"))
    inventory.observe(record_from_match("10.0.0.1", 22, "tcp", SSH, method="passive"))
    inventory.observe(record_from_match("10.0.0.2", 22, "tcp", SSH, method="passive"))
    got = inventory.get("10.0.0.1", 80)
    assert got is not None and got.version == "1.22.1" and got.method == "active"
    assert [r.port for r in inventory.for_host("10.0.0.1")] == [22, 80]
    assert len(inventory) == 3


def test_equal_records_newest_wins() -> None:
    inventory = ServiceInventory([record_from_match("h", 80, "tcp", HARD, method="active")])
    assert inventory.observe(record_from_match("h", 80, "tcp", HARD, method="passive"))
    got = inventory.get("h", 80)
    assert got is not None and got.method == "passive"
