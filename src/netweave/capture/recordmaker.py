"""Bulk construction of frozen slotted records (the event and fingerprint records).

A frozen dataclass's ``__init__`` must store every field through ``object.__setattr__`` to
get past its own ``__setattr__`` guard; that costs about 0.2 us a field, so a 23-field
:class:`~netweave.capture.events.TcpHandshake` takes about 5 us to build, more than all
the compiled decoding of the packet behind it. Capture replay builds tens of thousands of
records, so the builders here fill an instance of a plain slotted twin class (same slots,
same order, so the same memory layout) with ordinary attribute stores and then give it the
record's class by ``__class__`` assignment, which Python allows between classes of
identical layout. The result is an ordinary instance of the record class: equal to and
hashing like one built by ``__init__``, and just as immutable. A class whose layout does
not allow this (a ``__dict__``, a base class with slots, ``__post_init__``) is built
through its ``__init__`` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["bulk_builder", "record_builder", "rows_builder"]

_T = TypeVar("_T")


def bulk_builder(cls: type[_T]) -> Callable[..., list[_T]]:
    """``build(*columns)``: one record per row of the field columns, in field order.

    Every field of ``cls`` takes one column (an iterable, all of the same length).
    """
    names = _field_names(cls)
    if not _twin_ok(cls):

        def slow(*columns: Iterable[Any]) -> list[_T]:
            return [cls(*row) for row in zip(*columns, strict=True)]

        return slow
    args = ", ".join(f"c{k}" for k in range(len(names)))
    row = ", ".join(f"v{k}" for k in range(len(names)))
    stores = "".join(f"        o.{name} = v{k}\n" for k, name in enumerate(names))
    source = (
        f"def build({args}):\n"
        "    out = []\n"
        "    add = out.append\n"
        f"    for {row}{',' if len(names) == 1 else ''} in zip({args}, strict=True):\n"
        "        o = Twin()\n"
        f"{stores}"
        "        o.__class__ = Record\n"
        "        add(o)\n"
        "    return out\n"
    )
    build: Callable[..., list[_T]] = _compile(cls, names, source, "build")
    return build


def rows_builder(cls: type[_T]) -> Callable[[Iterable[tuple[Any, ...]]], list[_T]]:
    """``build(rows)``: one record per row (a tuple of the field values, in field order)."""
    names = _field_names(cls)
    if not _twin_ok(cls):

        def slow(rows: Iterable[tuple[Any, ...]]) -> list[_T]:
            return [cls(*row) for row in rows]

        return slow
    targets = ", ".join(f"o.{name}" for name in names)
    source = (
        "def build(rows):\n"
        "    out = []\n"
        "    add = out.append\n"
        "    for row in rows:\n"
        "        o = Twin()\n"
        f"        {targets}{',' if len(names) == 1 else ''} = row\n"
        "        o.__class__ = Record\n"
        "        add(o)\n"
        "    return out\n"
    )
    build: Callable[[Iterable[tuple[Any, ...]]], list[_T]] = _compile(cls, names, source, "build")
    return build


def record_builder(cls: type[_T]) -> Callable[..., _T]:
    """``make(*fields)``: one record from its field values, in field order."""
    names = _field_names(cls)
    if not _twin_ok(cls):
        return cls
    args = ", ".join(names)
    stores = "".join(f"    o.{name} = {name}\n" for name in names)
    source = f"def make({args}):\n    o = Twin()\n{stores}    o.__class__ = Record\n    return o\n"
    make: Callable[..., _T] = _compile(cls, names, source, "make")
    return make


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _twin_ok(cls: type[Any]) -> bool:
    """Whether ``cls`` is a plain slotted dataclass a twin class can stand in for."""
    return (
        cls.__bases__ == (object,)
        and tuple(getattr(cls, "__slots__", ())) == _field_names(cls)
        and "__dict__" not in vars(cls)
        and "__weakref__" not in vars(cls)
        and not hasattr(cls, "__post_init__")
    )


def _compile(cls: type[Any], names: tuple[str, ...], source: str, name: str) -> Any:
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": names})
    scope: dict[str, Any] = {"Twin": twin, "Record": cls}
    exec(compile(source, f"<{name} {cls.__name__}>", "exec"), scope)
    return scope[name]
