"""JA4: the TLS client fingerprint of a ClientHello (FoxIO, BSD 3-Clause licence).

``t13d1516h2_8daaf6152771_e5627efa2ab1``: transport (``t`` for TCP), the highest TLS
version offered (supported_versions if present, else the hello's version), ``d`` when an
SNI is present else ``i``, cipher and extension counts (GREASE excluded, at most 99), the
first and last character of the first ALPN value (``00`` without ALPN; a non-ASCII
character counts as ``9``); then the truncated SHA-256 of the sorted cipher list, and of
the sorted extension list without SNI and ALPN followed by ``_`` and the signature
algorithms in wire order. Follows FoxIO's reference implementation (``rust/ja4``).
"""

from __future__ import annotations

import functools
import hashlib

from netweave.fingerprint.tls_hello import (
    EXT_ALPN,
    EXT_SERVER_NAME,
    EXT_SUPPORTED_VERSIONS,
    ClientHello,
    is_grease,
)

TLS_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


def hash12(text: str) -> str:
    """First 12 hex digits of SHA-256 of ``text``; twelve zeros for an empty list."""
    if not text:
        return "000000000000"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def version_code(version: int) -> str:
    """Two-character JA4 version code (``00`` when unknown)."""
    return TLS_VERSIONS.get(version, "00")


def alpn_chars(alpn: tuple[bytes, ...]) -> str:
    """First and last character of the first ALPN value, as JA4 renders them."""
    if not alpn or not alpn[0]:
        return "00"
    text = alpn[0].decode("utf-8", "replace")
    chars = [c if c.isascii() else "9" for c in text]
    return chars[0] + (chars[-1] if len(chars) > 1 else "0")


def ja4(hello: ClientHello, *, transport: str = "t") -> str:
    """The JA4 fingerprint of ``hello``."""
    return ja4_parts(hello, transport=transport, hashed=True)


def ja4_raw(hello: ClientHello, *, transport: str = "t") -> str:
    """JA4_r: JA4 with the sorted lists in clear instead of hashed."""
    return ja4_parts(hello, transport=transport, hashed=False)


def ja4_parts(hello: ClientHello, *, transport: str, hashed: bool) -> str:
    """JA4 (``hashed``) or JA4_r of ``hello``."""
    return _ja4_parts(
        hello.version, hello.ciphers, hello.extensions, hello.supported_versions, hello.alpn,
        hello.signature_algorithms, transport, hashed,
    )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _ja4_parts(
    version: int, ciphers: tuple[int, ...], extensions: tuple[int, ...],
    supported_versions: tuple[int, ...], alpn: tuple[bytes, ...],
    signature_algorithms: tuple[int, ...], transport: str, hashed: bool,
) -> str:  # fmt: skip
    hello = ClientHello(version, ciphers, extensions, supported_versions, alpn,
                        signature_algorithms, None)  # fmt: skip
    kept_ciphers = [c for c in hello.ciphers if not is_grease(c)]
    kept = [e for e in hello.extensions if not is_grease(e)]
    if EXT_SUPPORTED_VERSIONS in kept and hello.supported_versions:
        offered = [v for v in hello.supported_versions if not is_grease(v)]
        version = max(offered) if offered else hello.version
    else:
        version = hello.version
    sni = "d" if EXT_SERVER_NAME in kept else "i"
    head = (
        f"{transport}{version_code(version)}{sni}{min(len(kept_ciphers), 99):02d}"
        f"{min(len(kept), 99):02d}{alpn_chars(hello.alpn)}"
    )
    cipher_text = ",".join(f"{c:04x}" for c in sorted(kept_ciphers))
    ext_text = ",".join(
        f"{e:04x}" for e in sorted(e for e in kept if e not in (EXT_SERVER_NAME, EXT_ALPN))
    )
    sigs = ",".join(f"{s:04x}" for s in hello.signature_algorithms)
    ext_sigs = f"{ext_text}_{sigs}" if sigs else ext_text
    if hashed:
        return f"{head}_{hash12(cipher_text)}_{hash12(ext_sigs)}"
    return f"{head}_{cipher_text}_{ext_sigs}"
