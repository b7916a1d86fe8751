"""nmap's C-string unescaping, as ``cstring_unescape`` in nmap's utils.cc does it.

Used for probe strings (``q|...|``) and for the string arguments of ``$SUBST()``.
"""

from __future__ import annotations

__all__ = ["UnescapeError", "cstring_unescape"]

_SIMPLE = {
    "0": 0x00,
    "a": 0x07,
    "b": 0x08,
    "f": 0x0C,
    "n": 0x0A,
    "r": 0x0D,
    "t": 0x09,
    "v": 0x0B,
    "\\": 0x5C,
}
_HEX = frozenset("0123456789abcdefABCDEF")


class UnescapeError(ValueError):
    """A C-style escape nmap would refuse (``\\x`` without two hex digits, ``\\`` + alnum)."""


def cstring_unescape(text: str) -> bytes:
    """Return the bytes of ``text`` (one char = one byte, latin-1) with nmap's escapes applied.

    Supported: ``\\0 \\a \\b \\f \\n \\r \\t \\v \\\\`` and ``\\xHH``; any other escaped
    punctuation stands for itself. Raises :class:`UnescapeError` where nmap fails: a
    ``\\x`` not followed by two hex digits, an escaped letter or digit nmap does not know
    (nmap has no octal beyond ``\\0``), or a trailing lone backslash.
    """
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "\\":
            out.append(ord(ch) & 0xFF)
            i += 1
            continue
        if i + 1 >= n:
            raise UnescapeError(f"lone backslash at offset {i}")
        esc = text[i + 1]
        simple = _SIMPLE.get(esc)
        if simple is not None:
            out.append(simple)
            i += 2
        elif esc == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or not all(d in _HEX for d in digits):
                raise UnescapeError(f"\\x at offset {i} needs two hex digits")
            out.append(int(digits, 16))
            i += 4
        elif esc.isascii() and esc.isalnum():
            raise UnescapeError(f"unknown escape \\{esc} at offset {i}")
        else:
            out.append(ord(esc) & 0xFF)
            i += 2
    return bytes(out)
