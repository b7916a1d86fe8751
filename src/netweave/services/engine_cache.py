"""A cache of the parsed probes file and of every match line's prefilter.

Parsing nmap-service-probes and computing the prefilters costs about a second of CPU; a
command that probes a few ports pays it every run. The result is stored with ``marshal``
(plain data only: loading it runs no code) under ``$NETWEAVE_CACHE_DIR``, else
``$XDG_CACHE_HOME/netweave`` or ``~/.cache/netweave``, named by the SHA-256 of the probes
file and this format's version, so an edited file is parsed again. Any problem with the
cache (unwritable, corrupt, foreign owner) falls back to parsing; it never fails a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import tempfile
from pathlib import Path
from typing import Any, Final

from netweave.services.matcher import Matcher, Prefilter, prefilter
from netweave.services.probes_file import (
    DEFAULT_PROBES_PATH,
    ProbeDatabase,
    ProbesFileError,
    assemble_database,
    parse_probes_text,
)
from netweave.services.records import MatchRule, ParseIssue, Probe, VersionTemplates

__all__ = ["cache_dir", "load_matcher"]

_FORMAT: Final = b"netweave-services-cache-8"


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    explicit = os.environ.get("NETWEAVE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netweave"


def load_matcher(path: str | Path = DEFAULT_PROBES_PATH, *, use_cache: bool = True) -> Matcher:
    """A :class:`Matcher` over the probes file at ``path``, from the cache when valid.

    Raises :class:`ProbesFileError` if the file cannot be read or holds no probe.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ProbesFileError(
            f"cannot read nmap service probes file {path}: {exc.strerror or exc}; "
            "install nmap (Debian package nmap-common) or pass --probes-file"
        ) from exc
    digest = hashlib.sha256(_FORMAT + raw).hexdigest()[:32]
    store = cache_dir() / f"probes-{digest}.marshal"
    if use_cache:
        cached = _read(store, str(path))
        if cached is not None:
            return cached
    db = parse_probes_text(raw.decode("latin-1"), source=str(path))
    if not db.probes:
        raise ProbesFileError(f"{path}: no Probe directive found; is this nmap-service-probes?")
    prefilters = {rule.line: prefilter(rule) for probe in db.probes for rule in probe.matches}
    if use_cache:
        _write(store, db, prefilters)
    return Matcher(db, prefilters=prefilters)


def _read(store: Path, source: str) -> Matcher | None:
    try:
        info = store.stat()
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return None  # only trust a cache this user alone can write
        data = marshal.loads(store.read_bytes())
        db, prefilters = _decode(data, source)
    except Exception:  # any broken cache means "parse again"
        return None
    return Matcher(db, prefilters=prefilters)


def _write(store: Path, db: ProbeDatabase, prefilters: dict[int, Prefilter]) -> None:
    with contextlib.suppress(OSError, ValueError):
        store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = marshal.dumps(_encode(db, prefilters))
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".probes-")
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        Path(tmp).replace(store)


def _encode(db: ProbeDatabase, prefilters: dict[int, Prefilter]) -> tuple[Any, ...]:
    probes = tuple(
        (
            p.protocol, p.name, p.payload, p.line, tuple(sorted(p.ports)),
            tuple(sorted(p.sslports)), p.rarity, p.totalwait_ms, p.tcpwrapped_ms,
            p.fallback_names, p.no_payload,
            tuple(
                (m.line, m.service, m.pattern, m.ignorecase, m.dotall, m.soft,
                 (m.templates.product, m.templates.version, m.templates.info,
                  m.templates.hostname, m.templates.ostype, m.templates.devicetype,
                  m.templates.cpe))
                for m in p.matches
            ),
        )
        for p in db.probes
    )  # fmt: skip
    issues = tuple((i.line, i.message, i.text) for i in db.issues)
    pre = dict(prefilters)
    excluded = (tuple(sorted(db.excluded_tcp)), tuple(sorted(db.excluded_udp)))
    return (_FORMAT, probes, *excluded, issues, pre)


def _decode(data: Any, source: str) -> tuple[ProbeDatabase, dict[int, Prefilter]]:
    form, probes_data, excluded_tcp, excluded_udp, issues_data, pre = data
    if form != _FORMAT:
        raise ValueError("cache format differs")
    probes = []
    for (protocol, name, payload, line, ports, sslports, rarity, totalwait, wrapped,
         fallbacks, no_payload, matches_data) in probes_data:  # fmt: skip
        matches = tuple(
            MatchRule(m_line, service, pattern, icase, dotall, soft, VersionTemplates(*tmpl))
            for m_line, service, pattern, icase, dotall, soft, tmpl in matches_data
        )
        probes.append(
            Probe(
                protocol=protocol, name=name, payload=payload, line=line,
                ports=frozenset(ports), sslports=frozenset(sslports), rarity=rarity,
                totalwait_ms=totalwait, tcpwrapped_ms=wrapped, fallback_names=fallbacks,
                matches=matches, services=frozenset(m.service for m in matches),
                no_payload=no_payload,
            )
        )  # fmt: skip
    issues = tuple(ParseIssue(*item) for item in issues_data)
    # fallback issues are recomputed by assemble_database: keep only the line issues
    fallback_free = tuple(i for i in issues if not i.message.startswith("unknown fallback"))
    db = assemble_database(
        source, tuple(probes), frozenset(excluded_tcp), frozenset(excluded_udp), fallback_free
    )
    return db, pre
