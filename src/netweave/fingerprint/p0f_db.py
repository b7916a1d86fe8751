"""Reader of p0f v3's signature database (``p0f.fp``), TCP sections only.

The database is LGPL-2.1 and never shipped with netweave: it is read where Debian's
``p0f`` package installs it (``/etc/p0f/p0f.fp``) or from a path the user gives. The
grammar follows p0f 3.09b's ``readfp.c`` and ``tcp_register_sig()``; HTTP and MTU sections
are skipped. A malformed line raises :class:`P0fDatabaseError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DEFAULT_P0F_DB: Final = Path("/etc/p0f/p0f.fp")

# Quirk bits (p0f's QUIRK_* values; the order is p0f's rendering order).
QUIRK_DF: Final = 0x00000001
QUIRK_NZ_ID: Final = 0x00000002
QUIRK_ZERO_ID: Final = 0x00000004
QUIRK_ECN: Final = 0x00000008
QUIRK_NZ_MBZ: Final = 0x00000010
QUIRK_FLOW: Final = 0x00000020
QUIRK_ZERO_SEQ: Final = 0x00001000
QUIRK_NZ_ACK: Final = 0x00002000
QUIRK_ZERO_ACK: Final = 0x00004000
QUIRK_NZ_URG: Final = 0x00008000
QUIRK_URG: Final = 0x00010000
QUIRK_PUSH: Final = 0x00020000
QUIRK_OPT_ZERO_TS1: Final = 0x01000000
QUIRK_OPT_NZ_TS2: Final = 0x02000000
QUIRK_OPT_EOL_NZ: Final = 0x04000000
QUIRK_OPT_EXWS: Final = 0x08000000
QUIRK_OPT_BAD: Final = 0x10000000

QUIRK_NAMES: Final = (
    (QUIRK_DF, "df"),
    (QUIRK_NZ_ID, "id+"),
    (QUIRK_ZERO_ID, "id-"),
    (QUIRK_ECN, "ecn"),
    (QUIRK_NZ_MBZ, "0+"),
    (QUIRK_FLOW, "flow"),
    (QUIRK_ZERO_SEQ, "seq-"),
    (QUIRK_NZ_ACK, "ack+"),
    (QUIRK_ZERO_ACK, "ack-"),
    (QUIRK_NZ_URG, "uptr+"),
    (QUIRK_URG, "urgf+"),
    (QUIRK_PUSH, "pushf+"),
    (QUIRK_OPT_ZERO_TS1, "ts1-"),
    (QUIRK_OPT_NZ_TS2, "ts2+"),
    (QUIRK_OPT_EOL_NZ, "opt+"),
    (QUIRK_OPT_EXWS, "exws"),
    (QUIRK_OPT_BAD, "bad"),
)
_QUIRK_BY_NAME: Final = {name: bit for bit, name in QUIRK_NAMES}
_IPV4_ONLY: Final = QUIRK_DF | QUIRK_NZ_ID | QUIRK_ZERO_ID | QUIRK_NZ_MBZ

# TCP option kinds as p0f names them.
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WS: Final = 3
OPT_SOK: Final = 4
OPT_SACK: Final = 5
OPT_TS: Final = 8
OPTION_NAMES: Final = {
    OPT_NOP: "nop",
    OPT_MSS: "mss",
    OPT_WS: "ws",
    OPT_SOK: "sok",
    OPT_SACK: "sack",
    OPT_TS: "ts",
}
_OPTION_BY_NAME: Final = {"nop": OPT_NOP, "mss": OPT_MSS, "ws": OPT_WS, "sok": OPT_SOK,
                          "sack": OPT_SACK, "ts": OPT_TS}  # fmt: skip
MAX_TCP_OPT: Final = 24

WIN_ANY: Final = 0
WIN_NORMAL: Final = 1
WIN_MOD: Final = 2
WIN_MSS: Final = 3
WIN_MTU: Final = 4


class P0fDatabaseError(Exception):
    """``p0f.fp`` could not be read or has a malformed line (names file and line)."""


@dataclass(frozen=True, slots=True)
class P0fLabel:
    """A ``label =`` line: generic or specific, class (None for userland ``!``), name, flavour."""

    generic: bool
    os_class: str | None
    name: str
    flavor: str

    @property
    def text(self) -> str:
        """The label as p0f prints it: name, then flavour when there is one."""
        return f"{self.name} {self.flavor}" if self.flavor else self.name


@dataclass(frozen=True, slots=True)
class P0fSignature:
    """One ``sig =`` line of a ``[tcp:request]`` or ``[tcp:response]`` section."""

    line: int
    label: P0fLabel
    label_id: int
    ip_version: int  # 4, 6 or -1 for '*'
    ttl: int
    bad_ttl: bool
    ip_options_length: int
    mss: int  # -1 for '*'
    win_type: int
    win: int
    wscale: int  # -1 for '*'
    layout: tuple[int, ...]
    eol_pad: int
    quirks: int
    pay_class: int  # -1 for '*', 0 or 1


@dataclass(frozen=True, slots=True)
class P0fDatabase:
    """The TCP signatures of a p0f.fp file, in file order, per direction.

    ``syn_by_layout``/``synack_by_layout`` hold the same signatures grouped by TCP option
    layout (file order kept within a group): p0f only ever compares a packet with the
    signatures of its own layout (its ``opt_hash`` buckets).
    """

    path: str
    syn: tuple[P0fSignature, ...]
    synack: tuple[P0fSignature, ...]
    syn_by_layout: Mapping[tuple[int, ...], tuple[P0fSignature, ...]] = field(default_factory=dict)
    synack_by_layout: Mapping[tuple[int, ...], tuple[P0fSignature, ...]] = field(
        default_factory=dict
    )


def _by_layout(
    signatures: tuple[P0fSignature, ...],
) -> dict[tuple[int, ...], tuple[P0fSignature, ...]]:
    groups: dict[tuple[int, ...], list[P0fSignature]] = {}
    for sig in signatures:
        groups.setdefault(sig.layout, []).append(sig)
    return {layout: tuple(sigs) for layout, sigs in groups.items()}


def load_p0f_database(path: str | Path = DEFAULT_P0F_DB) -> P0fDatabase:
    """Read the TCP signatures of the p0f.fp file at ``path``."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="latin-1")
    except OSError as exc:
        raise P0fDatabaseError(
            f"{name}: cannot read the p0f database ({exc.strerror}); install Debian's p0f "
            "package or pass --p0f-db PATH"
        ) from exc
    return parse_p0f_database(text, name)


def parse_p0f_database(text: str, name: str = "p0f.fp") -> P0fDatabase:
    """Parse the text of a p0f.fp file (``name`` is used in error messages)."""
    parser = _Parser(name)
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.lstrip(" \t")
        if not line or line.startswith(";"):
            continue
        parser.line(number, line)
    syn, synack = tuple(parser.syn), tuple(parser.synack)
    return P0fDatabase(
        path=name,
        syn=syn,
        synack=synack,
        syn_by_layout=_by_layout(syn),
        synack_by_layout=_by_layout(synack),
    )


class _Parser:
    def __init__(self, name: str) -> None:
        self.name = name
        self.classes: list[str] = []
        self.section = ""
        self.to_server = True
        self.label: P0fLabel | None = None
        self.label_id = 0
        self.syn: list[P0fSignature] = []
        self.synack: list[P0fSignature] = []

    def fail(self, number: int, message: str) -> P0fDatabaseError:
        return P0fDatabaseError(f"{self.name}: line {number}: {message}")

    def line(self, number: int, line: str) -> None:
        if line.startswith("["):
            self.section_line(number, line)
            return
        key, sep, value = line.partition("=")
        key = key.strip(" \t")
        if not sep or not key.replace("_", "").isalpha():
            raise self.fail(number, f"expected 'name = value', got {line!r}")
        value = value.lstrip(" \t")
        if key == "classes":
            self.classes = [c.strip(" \t") for c in value.split(",") if c.strip(" \t")]
        elif self.section != "tcp":
            return  # [mtu] and [http:*] are not used here
        elif key == "label":
            self.label = self.parse_label(number, value)
            self.label_id += 1
        elif key == "sys":
            return
        elif key == "sig":
            if self.label is None:
                raise self.fail(number, "'sig' before any 'label'")
            sig = self.parse_sig(number, value)
            (self.syn if self.to_server else self.synack).append(sig)
        else:
            raise self.fail(number, f"unrecognized field {key!r}")

    def section_line(self, number: int, line: str) -> None:
        body = line.rstrip(" \t\r")
        if body == "[mtu]":
            self.section = "mtu"
            return
        if not body.endswith("]") or ":" not in body:
            raise self.fail(number, f"malformed section identifier {body!r}")
        module, direction = body[1:-1].split(":", 1)
        if module not in ("tcp", "http"):
            raise self.fail(number, f"unrecognized fingerprinting module {module!r}")
        if direction not in ("request", "response"):
            raise self.fail(number, f"unrecognized traffic direction {direction!r}")
        self.section = module
        self.to_server = direction == "request"
        self.label = None

    def parse_label(self, number: int, value: str) -> P0fLabel:
        parts = value.split(":", 3)
        if len(parts) < 3 or parts[0] not in ("s", "g"):
            raise self.fail(number, f"malformed label {value!r}")
        cls = parts[1]
        if cls == "!":
            os_class = None
        else:
            match = [c for c in self.classes if c.lower() == cls.lower()]
            if not match:
                raise self.fail(number, f"unknown class {cls!r}")
            os_class = match[0]
        name = parts[2]
        if not name:
            raise self.fail(number, "empty name in label")
        flavor = parts[3] if len(parts) == 4 else ""
        return P0fLabel(parts[0] == "g", os_class, name, flavor.rstrip("\r"))

    def parse_sig(self, number: int, value: str) -> P0fSignature:
        assert self.label is not None
        fields = value.rstrip("\r").split(":")
        if len(fields) != 8:
            raise self.fail(number, f"a TCP signature has 8 ':'-separated fields: {value!r}")
        ver_s, ttl_s, olen_s, mss_s, win_s, opts_s, quirks_s, pclass_s = fields
        try:
            ver = {"4": 4, "6": 6, "*": -1}[ver_s]
        except KeyError:
            raise self.fail(number, f"unrecognized IP version {ver_s!r}") from None
        ttl, bad_ttl = self.parse_ttl(number, ttl_s)
        olen = self.number(number, olen_s, 0, 255, "IP option length")
        mss = -1 if mss_s == "*" else self.number(number, mss_s, 0, 65535, "MSS")
        win_part, _, scale_s = win_s.partition(",")
        if not _:
            raise self.fail(number, f"window field needs 'size,scale': {win_s!r}")
        win_type, win = self.parse_window(number, win_part)
        scale = -1 if scale_s == "*" else self.number(number, scale_s, 0, 255, "window scale")
        layout, eol_pad = self.parse_options(number, opts_s)
        quirks = self.parse_quirks(number, quirks_s, ver)
        try:
            pay_class = {"*": -1, "0": 0, "+": 1}[pclass_s]
        except KeyError:
            raise self.fail(number, f"malformed payload class {pclass_s!r}") from None
        return P0fSignature(
            line=number,
            label=self.label,
            label_id=self.label_id,
            ip_version=ver,
            ttl=ttl,
            bad_ttl=bad_ttl,
            ip_options_length=olen,
            mss=mss,
            win_type=win_type,
            win=win,
            wscale=scale,
            layout=layout,
            eol_pad=eol_pad,
            quirks=quirks,
            pay_class=pay_class,
        )

    def number(self, number: int, text: str, low: int, high: int, what: str) -> int:
        if not text.isdigit():
            raise self.fail(number, f"bogus {what} {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise self.fail(number, f"{what} {value} out of range {low}..{high}")
        return value

    def parse_ttl(self, number: int, text: str) -> tuple[int, bool]:
        if text.endswith("-"):
            return self.number(number, text[:-1], 1, 255, "initial TTL"), True
        base, plus, extra = text.partition("+")
        ttl = self.number(number, base, 1, 255, "initial TTL")
        if plus:
            ttl += self.number(number, extra, 0, 255 - ttl, "TTL distance")
        return ttl, False

    def parse_window(self, number: int, text: str) -> tuple[int, int]:
        if text == "*":
            return WIN_ANY, 0
        if text.startswith("%"):
            return WIN_MOD, self.number(number, text[1:], 2, 65535, "'%' window value")
        if text.startswith(("mss*", "mtu*")):
            kind = WIN_MSS if text[1] == "s" else WIN_MTU
            return kind, self.number(number, text[4:], 1, 1000, "MSS/MTU multiplier")
        return WIN_NORMAL, self.number(number, text, 0, 65535, "window size")

    def parse_options(self, number: int, text: str) -> tuple[tuple[int, ...], int]:
        layout: list[int] = []
        eol_pad = 0
        items = text.split(",") if text else []
        for pos, item in enumerate(items):
            if len(layout) >= MAX_TCP_OPT:
                raise self.fail(number, "too many TCP options")
            if item.startswith("eol+"):
                if pos != len(items) - 1:
                    raise self.fail(number, "EOL must be the last option")
                layout.append(OPT_EOL)
                eol_pad = self.number(number, item[4:], 0, 255, "EOL padding")
            elif item in _OPTION_BY_NAME:
                layout.append(_OPTION_BY_NAME[item])
            elif item.startswith("?"):
                layout.append(self.number(number, item[1:], 0, 255, "'?' option"))
            else:
                raise self.fail(number, f"unrecognized TCP option {item!r}")
        return tuple(layout), eol_pad

    def parse_quirks(self, number: int, text: str, ver: int) -> int:
        quirks = 0
        for item in text.split(",") if text else []:
            bit = _QUIRK_BY_NAME.get(item)
            if bit is None:
                raise self.fail(number, f"unrecognized quirk {item!r}")
            if ver == 6 and bit & _IPV4_ONLY:
                raise self.fail(number, f"{item!r} is not valid for IPv6")
            if ver == 4 and bit == QUIRK_FLOW:
                raise self.fail(number, "'flow' is not valid for IPv4")
            quirks |= bit
        return quirks
