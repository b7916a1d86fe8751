"""Records built in bulk are the same records ``__init__`` builds: equal, hashing alike,
immutable, of the record class."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass

import pytest

from netweave.capture.events import FirstPayload, FlowCounters, FlowSeen, TcpHandshake
from netweave.capture.recordmaker import bulk_builder, record_builder
from netweave.fingerprint.records import FingerprintRecord

ROWS = {
    TcpHandshake: [
        (
            1,
            2,
            4,
            "10.0.0.1",
            "10.0.0.2",
            40000,
            443,
            64,
            0,
            2,
            0,
            0,
            0,
            60,
            1000,
            0,
            64240,
            2,
            0,
            b"\x02\x04\x05\xb4",
            0,
            "",
            "",
        ),
        (
            3,
            4,
            6,
            "fd00::1",
            "fd00::2",
            443,
            40000,
            64,
            0,
            0,
            0,
            5,
            0,
            60,
            5,
            1001,
            65535,
            0x12,
            0,
            b"",
            0,
            "eth0",
            "vxlan",
        ),
    ],
    FirstPayload: [
        (
            1,
            5,
            6,
            4,
            6,
            "10.0.0.1",
            "10.0.0.2",
            40000,
            443,
            b"\x16\x03\x01",
            False,
            "",
            "",
            ((3, 5),),
        ),
    ],
    FlowSeen: [(1, 1, 4, 17, "10.0.0.1", "10.0.0.53", 5353, 53, 0, "", "")],
    FlowCounters: [
        (4, 6, "10.0.0.1", "10.0.0.2", 1, 2, 3, 400, 5, 600, 7, 8, 0x1B, True, ""),
    ],
    FingerprintRecord: [
        (
            9,
            10,
            "syn",
            "10.0.0.1",
            40000,
            "10.0.0.2",
            443,
            "64240_2_1460_00",
            None,
            None,
            None,
            None,
            "",
        ),
    ],
}


@pytest.mark.parametrize("cls", list(ROWS), ids=lambda c: c.__name__)
def test_bulk_built_records_equal_init_built_ones(cls: type) -> None:
    rows = ROWS[cls]
    built = bulk_builder(cls)(*zip(*rows, strict=True))
    made = [record_builder(cls)(*row) for row in rows]
    expected = [cls(*row) for row in rows]
    assert built == expected
    assert made == expected
    for record, reference in zip(built, expected, strict=True):
        assert type(record) is cls
        assert hash(record) == hash(reference)
        assert repr(record) == repr(reference)
        assert pickle.loads(pickle.dumps(record)) == reference
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, dataclasses.fields(cls)[1].name, 99)


def test_a_class_that_is_no_plain_slotted_record_is_built_by_its_init() -> None:
    @dataclass(frozen=True)
    class Loose:  # a __dict__, no slots
        a: int
        b: str

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    assert bulk_builder(Loose)([1, 2], ["x", "y"]) == [Loose(1, "x"), Loose(2, "y")]
    assert record_builder(Checked)(3) == Checked(3)
    with pytest.raises(ValueError, match="negative"):
        bulk_builder(Checked)([-1])


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        bulk_builder(FlowSeen)([1], [1], [4], [17], ["a"], ["b"], [1], [2], [0], [""], [])
