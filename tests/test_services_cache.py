"""The parse/prefilter cache: same engine as a fresh parse, and never trusted blindly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netweave.services.engine_cache import cache_dir, load_matcher
from netweave.services.matcher import prefilter
from netweave.services.probes_file import DEFAULT_PROBES_PATH, load_probes

pytestmark = pytest.mark.skipif(
    not DEFAULT_PROBES_PATH.exists(), reason=f"{DEFAULT_PROBES_PATH} missing: install nmap-common"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cached_engine_equals_a_fresh_parse(cache: Path) -> None:
    built = load_matcher(DEFAULT_PROBES_PATH)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o022 == 0
    cached = load_matcher(DEFAULT_PROBES_PATH)
    fresh = load_probes(DEFAULT_PROBES_PATH)
    assert cached.db.probes == fresh.probes == built.db.probes
    assert cached.db.excluded_tcp == fresh.excluded_tcp
    assert [p.name for p in cached.db.fallbacks(cached.db.probes[3])] == [
        p.name for p in fresh.fallbacks(fresh.probes[3])
    ]
    rules = [r for p in fresh.probes for r in p.matches]
    assert all(cached._prefilters[r.line] == prefilter(r) for r in rules[::50])
    null = cached.db.null_probe
    assert null is not None
    found = cached.match(null, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    assert found is not None and found.version == "9.2p1 Debian 2+deb12u3"


def test_corrupt_or_foreign_cache_is_rebuilt(cache: Path) -> None:
    load_matcher(DEFAULT_PROBES_PATH)
    (store,) = cache.iterdir()
    store.write_bytes(b"\x00garbage")
    assert load_matcher(DEFAULT_PROBES_PATH).db.match_count > 10000
    (store,) = cache.iterdir()
    store.chmod(0o666)  # writable by others: must not be trusted
    assert load_matcher(DEFAULT_PROBES_PATH).db.match_count > 10000
    assert store.stat().st_mode & 0o022 == 0  # replaced by a private copy


def test_edited_probes_file_gets_its_own_cache(cache: Path, tmp_path: Path) -> None:
    edited = tmp_path / "probes"
    edited.write_text("Probe TCP NULL q||\nmatch x m|^x| p/X/\n")
    assert load_matcher(edited).db.match_count == 1
    edited.write_text("Probe TCP NULL q||\nmatch x m|^x| p/X/\nmatch y m|^y|\n")
    assert load_matcher(edited).db.match_count == 2
    assert len(list(cache.iterdir())) == 2


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NETWEAVE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "netweave"
    assert os.fspath(cache_dir()).endswith("netweave")
