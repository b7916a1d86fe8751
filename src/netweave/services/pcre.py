"""Translate nmap's PCRE patterns into Python ``re`` patterns over bytes.

nmap compiles its match lines with PCRE; Python's ``re`` is close but not equal. This module
rewrites the constructs ``re`` spells differently or lacks, and raises
:class:`UnsupportedPatternError` for those it cannot express (recursion, ``\\G``, ``\\K``, Unicode
properties, branch reset). Patterns are text where one character is one byte (latin-1).
"""

from __future__ import annotations

import re
import warnings
from typing import Final

__all__ = ["UnsupportedPatternError", "compile_pcre", "translate_pcre"]

_POSIX_CLASSES: Final[dict[str, str]] = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\x0b",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "print": r" -~",
    "graph": r"!-~",
    "cntrl": r"\x00-\x1f\x7f",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "ascii": r"\x00-\x7f",
}
_HEXDIGITS: Final = frozenset("0123456789abcdefABCDEF")
_UNSUPPORTED_ESCAPES: Final = frozenset("GKpPXCgkRu")
_KEEP_ESCAPES: Final = frozenset("dDsSwWbBAnrtfa0123456789")
_FLAG_GROUP = re.compile(r"\(\?([imsx]*)(?:-([imsx]*))?\)")
_GROUP_OPENER = re.compile(
    r"\(\?(?:[:=!>]|<[=!]|P?<[A-Za-z_]\w*>|P=[A-Za-z_]\w*\)|\(\w+\)|[imsx]*-?[imsx]*:)"
)


class UnsupportedPatternError(ValueError):
    """A PCRE construct Python's ``re`` cannot express; the message names it."""


def compile_pcre(pattern: str, *, ignorecase: bool, dotall: bool) -> re.Pattern[bytes]:
    """Compile an nmap (PCRE) pattern as a Python bytes pattern.

    Raises :class:`UnsupportedPatternError` if the pattern uses something ``re`` lacks, and
    ``re.error`` if the translated pattern still does not compile.
    """
    flags = 0
    if ignorecase:
        flags |= re.IGNORECASE
    if dotall:
        flags |= re.DOTALL
    translated = translate_pcre(pattern)
    with warnings.catch_warnings():
        # "possible nested set" FutureWarnings: PCRE has no nested sets, so literal is right.
        warnings.simplefilter("ignore")
        return re.compile(translated.encode("latin-1"), flags)


def _hex_escape(value: int) -> str:
    return f"\\x{value & 0xFF:02x}"


def _read_escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape starting at ``pattern[i] == '\\\\'``; return (text, next index)."""
    if i + 1 >= len(pattern):
        raise UnsupportedPatternError("pattern ends with a lone backslash")
    esc = pattern[i + 1]
    j = i + 2
    if esc == "x":
        if j < len(pattern) and pattern[j] == "{":
            end = pattern.find("}", j)
            if end < 0:
                raise UnsupportedPatternError("unterminated \\x{...}")
            digits = pattern[j + 1 : end]
            if not digits or not all(d in _HEXDIGITS for d in digits) or int(digits, 16) > 0xFF:
                raise UnsupportedPatternError(f"\\x{{{digits}}} is not a byte")
            return _hex_escape(int(digits, 16)), end + 1
        k = j
        while k < len(pattern) and k < j + 2 and pattern[k] in _HEXDIGITS:
            k += 1
        return _hex_escape(int(pattern[j:k], 16) if k > j else 0), k
    if esc == "z":
        return (r"\Z", j) if not in_class else ("z", j)
    if esc == "Z":
        return (r"(?=\n?\Z)", j) if not in_class else ("Z", j)
    if esc == "h":
        return (r"[ \t\xa0]" if not in_class else r" \t\xa0"), j
    if esc == "H":
        if in_class:
            raise UnsupportedPatternError("\\H inside a character class")
        return r"[^ \t\xa0]", j
    if esc == "v":
        return (r"[\n\x0b\f\r\x85]" if not in_class else r"\n\x0b\f\r\x85"), j
    if esc == "V":
        if in_class:
            raise UnsupportedPatternError("\\V inside a character class")
        return r"[^\n\x0b\f\r\x85]", j
    if esc == "e":
        return r"\x1b", j
    if esc == "c":
        if j >= len(pattern):
            raise UnsupportedPatternError("\\c at end of pattern")
        return _hex_escape(ord(pattern[j].upper()) ^ 0x40), j + 1
    if esc == "N" and not in_class:
        return r"[^\n]", j
    if esc == "E":
        return "", j  # a stray \E is ignored by PCRE
    if esc == "Q":
        end = pattern.find("\\E", j)
        literal = pattern[j:] if end < 0 else pattern[j:end]
        nxt = len(pattern) if end < 0 else end + 2
        return "".join(_literal(c, in_class) for c in literal), nxt
    if esc in "AbB" and in_class:
        if esc == "b":
            return r"\x08", j
        raise UnsupportedPatternError(f"\\{esc} inside a character class")
    if esc == "0":
        k = j
        while k < len(pattern) and k < j + 2 and pattern[k] in "01234567":
            k += 1
        return _hex_escape(int("0" + pattern[j:k], 8)), k
    if esc in _KEEP_ESCAPES:
        if esc.isdigit() and in_class:
            k = i + 1
            while k < len(pattern) and k < i + 4 and pattern[k] in "01234567":
                k += 1
            if k == i + 1:
                raise UnsupportedPatternError(f"\\{esc} inside a character class")
            return _hex_escape(int(pattern[i + 1 : k], 8)), k
        return "\\" + esc, j
    if esc in _UNSUPPORTED_ESCAPES:
        raise UnsupportedPatternError(f"\\{esc} has no Python re equivalent")
    if esc.isascii() and esc.isalpha():
        # PCRE1 (nmap 7.93's) reads an unknown letter escape as the letter itself.
        return _literal(esc, in_class), j
    return _literal(esc, in_class), j


def _literal(ch: str, in_class: bool) -> str:
    if ch.isascii() and ch.isalnum():
        return ch
    if ord(ch) < 0x20 or ord(ch) >= 0x7F:
        return _hex_escape(ord(ch))
    special = "\\]^-[&~|" if in_class else "\\.^$*+?{}[]|()"
    return "\\" + ch if ch in special else ch


def _read_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the class starting at ``pattern[i] == '['``; return (text, next index)."""
    out = ["["]
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < len(pattern):
        ch = pattern[j]
        if ch == "]" and not first:
            out.append("]")
            return "".join(out), j + 1
        first = False
        if ch == "\\":
            text, j = _read_escape(pattern, j, in_class=True)
            out.append(text)
            continue
        if ch == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            name = pattern[j + 2 : end] if end > 0 else ""
            negate = name.startswith("^")
            if negate:
                raise UnsupportedPatternError(f"negated POSIX class [:{name}:]")
            if name in _POSIX_CLASSES:
                out.append(_POSIX_CLASSES[name])
                j = end + 2
                continue
        if ch == "]":
            out.append(r"\]")
        elif ch == "-":
            out.append("-")
        else:
            out.append(_literal(ch, in_class=True))
        j += 1
    raise UnsupportedPatternError("unterminated character class")


def translate_pcre(pattern: str) -> str:
    """Return the Python ``re`` spelling of a PCRE ``pattern`` (text, one char per byte).

    Raises :class:`UnsupportedPatternError` for constructs ``re`` cannot express.
    """
    out: list[str] = []
    # One entry per open group: how many scoped-flag groups we opened inside it, and the
    # flag text to reopen after a ``|`` at that level.
    open_flags: list[list[str]] = [[]]
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            text, i = _read_escape(pattern, i, in_class=False)
            out.append(text)
            continue
        if ch == "[":
            text, i = _read_class(pattern, i)
            out.append(text)
            continue
        if ch == "(":
            if pattern.startswith("(?", i):
                flag_match = _FLAG_GROUP.match(pattern, i)
                if flag_match is not None:
                    on, off = flag_match.group(1), flag_match.group(2) or ""
                    if not out and len(open_flags) == 1 and not off:
                        out.append(f"(?{on})")
                    else:
                        spec = on + (f"-{off}" if off else "")
                        if spec:
                            out.append(f"(?{spec}:")
                            open_flags[-1].append(spec)
                    i = flag_match.end()
                    continue
                nxt = pattern[i + 2 : i + 3]
                opener = _GROUP_OPENER.match(pattern, i)
                if opener is not None:
                    text = opener.group(0)
                    if text.startswith("(?<") and text[3] not in "=!":
                        text = "(?P" + text[2:]
                    out.append(text)
                    if not text.startswith("(?P="):
                        open_flags.append([])
                    i = opener.end()
                    continue
                if nxt == "#":
                    end = pattern.find(")", i)
                    if end < 0:
                        raise UnsupportedPatternError("unterminated (?# comment")
                    i = end + 1
                    continue
                if nxt == "'":
                    end = pattern.find("'", i + 3)
                    if end < 0:
                        raise UnsupportedPatternError("unterminated (?'name'")
                    out.append(f"(?P<{pattern[i + 3 : end]}>")
                    open_flags.append([])
                    i = end + 1
                    continue
                if nxt == "|":
                    raise UnsupportedPatternError("branch reset (?| has no Python re equivalent")
                if nxt in ("R", "+", "&") or nxt.isdigit() or pattern.startswith("(?-", i):
                    raise UnsupportedPatternError(
                        "recursion / subroutine calls are not in Python re"
                    )
                if pattern.startswith("(?P>", i) or pattern.startswith("(?C", i):
                    raise UnsupportedPatternError(
                        "subroutine calls / callouts are not in Python re"
                    )
            if pattern.startswith("(*", i):
                raise UnsupportedPatternError("PCRE verbs (*...) are not in Python re")
            out.append("(")
            open_flags.append([])
            i += 1
            continue
        if ch == ")":
            out.append(")" * len(open_flags[-1]))
            if len(open_flags) > 1:
                open_flags.pop()
            out.append(")")
            i += 1
            continue
        if ch == "|":
            scoped = open_flags[-1]
            out.append(")" * len(scoped))
            out.append("|")
            out.extend(f"(?{spec}:" for spec in scoped)
            i += 1
            continue
        if ch == "{":
            quant = re.match(r"\{(\d*)(,?)(\d*)\}", pattern[i:])
            if quant is None or not quant.group(1):
                out.append(r"\{")
                i += 1
                continue
            out.append(quant.group(0))
            i += quant.end()
            continue
        if ch == "}":
            out.append(r"\}")
            i += 1
            continue
        if ch in ".^$*+?":
            out.append(ch)
        else:
            out.append(_literal(ch, in_class=False))
        i += 1
    out.append(")" * len(open_flags[0]))
    return "".join(out)
