"""Fill a match line's versioninfo templates from a regex match, as nmap's ``dotmplsubst``.

``$1``-``$9`` copy a group, ``$P(n)`` keeps its printable bytes, ``$SUBST(n,"a","b")``
replaces, ``$I(n,">")`` reads the group as an unsigned big- (``>``) or little- (``<``) endian
integer. A template that names a group the match did not set, or an unknown command, fails:
the field is dropped (nmap leaves it empty). Trailing spaces and commas are trimmed. CPE
templates transform each substitution (lower case, spaces to ``_``, reserved characters
%-escaped); nmap keeps one CPE per part (a, h, o), the last one filled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from netweave.services.escapes import UnescapeError, cstring_unescape
from netweave.services.records import VersionTemplates

__all__ = ["FIELD_LIMITS", "FilledFields", "fill_template", "fill_templates", "transform_cpe"]

# nmap's buffer sizes: a filled field must fit in (limit - 2) bytes or it is dropped.
FIELD_LIMITS: Final[dict[str, int]] = {
    "product": 80,
    "version": 80,
    "info": 256,
    "hostname": 80,
    "ostype": 32,
    "devicetype": 32,
    "cpe": 80,
}
_CPE_RESERVED: Final = frozenset(b":/?#[]@!$&'()*+,;=%<>\"")
_COMMAND: Final = re.compile(r"\$([A-Za-z]+)\(")
_C_INT: Final = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_MAX_ARGS: Final = 5
_MAX_STRING_ARG: Final = 127

FilledFields = tuple[
    str | None, str | None, str | None, str | None, str | None, str | None, tuple[str, ...]
]


def transform_cpe(value: bytes) -> bytes:
    """Make ``value`` safe inside a CPE URL, as nmap's ``transform_cpe``."""
    out = bytearray()
    for byte in value:
        if byte in _CPE_RESERVED:
            out += b"%%%02X" % byte
        elif byte == 0x20:
            out.append(0x5F)
        elif 0x41 <= byte <= 0x5A:
            out.append(byte + 0x20)
        else:
            out.append(byte)
    return bytes(out)


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def fill_templates(templates: VersionTemplates, match: re.Match[bytes]) -> FilledFields:
    """Return (product, version, info, hostname, ostype, devicetype, cpes) for ``match``."""
    fields: list[str | None] = []
    for name in ("product", "version", "info", "hostname", "ostype", "devicetype"):
        template = getattr(templates, name)
        if template is None:
            fields.append(None)
            continue
        filled = fill_template(template, match, FIELD_LIMITS[name])
        fields.append(_decode(filled) if filled else None)
    by_part: dict[str, str] = {}
    for template in templates.cpe:
        part = template[5:6]
        if part not in ("a", "h", "o"):
            continue
        filled = fill_template(template, match, FIELD_LIMITS["cpe"], transform_cpe)
        if filled:
            by_part[part] = _decode(filled)
    cpes = tuple(by_part[p] for p in ("a", "h", "o") if p in by_part)
    return fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], cpes


def fill_template(
    template: str,
    match: re.Match[bytes],
    limit: int = 1 << 16,
    transform: Callable[[bytes], bytes] | None = None,
) -> bytes | None:
    """Fill one template from ``match``; None if it cannot be filled (nmap drops the field).

    ``limit`` is nmap's buffer size for the field; ``transform`` is applied to every
    substitution (used for CPEs).
    """
    out = bytearray()
    i = 0
    n = len(template)
    while i < n:
        dollar = template.find("$", i)
        if dollar < 0:
            out += template[i:].encode("latin-1")
            if len(out) > limit - 1:
                return None
            break
        out += template[i:dollar].encode("latin-1")
        value, i = _substitute(template, dollar, match)
        if value is None:
            return None
        if transform is not None:
            value = transform(value)
        if len(out) + len(value) >= limit - 1:
            return None
        out += value
    return bytes(out).rstrip(b" \t\n\r\f\v,")


def _group(match: re.Match[bytes], number: int) -> bytes | None:
    if not 1 <= number <= 9 or number > (match.re.groups or 0):
        return None
    return match.group(number)


def _substitute(template: str, dollar: int, match: re.Match[bytes]) -> tuple[bytes | None, int]:
    """Substitute the variable at ``template[dollar] == '$'``; return (bytes or None, end)."""
    nxt = template[dollar + 1 : dollar + 2]
    if nxt.isdigit():
        return _group(match, int(nxt)), dollar + 2
    command = _COMMAND.match(template, dollar)
    if command is None:
        return None, len(template)
    args, end = _parse_args(template, command.end())
    if args is None:
        return None, end
    name = command.group(1)
    if not args or not isinstance(args[0], int):
        return None, end
    value = _group(match, args[0])
    if value is None:
        return None, end
    if name == "P" and len(args) == 1:
        return bytes(b for b in value if 0x20 <= b <= 0x7E), end
    if name == "SUBST" and len(args) == 3 and isinstance(args[1], bytes):
        find, repl = args[1], args[2]
        if not isinstance(repl, bytes):
            return None, end
        return (value.replace(find, repl) if find else value), end
    if name == "I" and len(args) == 2 and isinstance(args[1], bytes) and len(args[1]) == 1:
        if len(value) > 8 or args[1] not in (b">", b"<"):
            return None, end
        number = int.from_bytes(value, "big" if args[1] == b">" else "little")
        return str(number).encode(), end
    return None, end


def _c_int(text: str) -> int:
    """An integer as C's ``strtol(..., 0)`` reads it: 0x hex, leading-0 octal, decimal."""
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits[:2].lower() == "0x":
        return sign * int(digits[2:], 16)
    if digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits, 10)


def _parse_args(template: str, start: int) -> tuple[list[int | bytes] | None, int]:
    """Parse ``n, "str", ...)`` as nmap's ``getsubstcommandargs``; return (args, end)."""
    args: list[int | bytes] = []
    i = start
    n = len(template)
    while i < n and template[i] != ")":
        while i < n and template[i].isspace():
            i += 1
        if i >= n:
            return None, n
        if template[i] == ")":
            break
        if len(args) == _MAX_ARGS:
            return None, n
        if template[i] == '"':
            j = i + 1
            while j < n and not (
                template[j] == '"' and (template[j - 1] != "\\" or template[j - 2 : j] == "\\\\")
            ):
                j += 1
            if j >= n or j - i - 1 > _MAX_STRING_ARG:
                return None, n
            try:
                args.append(cstring_unescape(template[i + 1 : j]))
            except UnescapeError:
                return None, n
            i = j + 1
        else:
            number = _C_INT.match(template, i)
            if number is None:
                return None, n
            args.append(_c_int(number.group(0)))
            i = number.end()
        while i < n and template[i] not in ",)":
            i += 1
        if i < n and template[i] == ",":
            i += 1
    if i >= n:
        return None, n
    return (args or None), i + 1
