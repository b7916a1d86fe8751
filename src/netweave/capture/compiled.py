"""The compiler for the capture backend's per-packet loops: numba, or plain Python without it.

Functions decorated with :func:`jit` are written in the subset of Python numba compiles
(ints, numpy arrays, loops). With numba installed they run as machine code, compiled on
first use and cached on disk; without it they run unchanged as Python, correct but slow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

_F = TypeVar("_F", bound=Callable[..., Any])

# numba caches machine code beside the source; a user who cannot write there (an installed
# package run by non-root) gets a cache of their own instead of a failing import.
if "NUMBA_CACHE_DIR" not in os.environ and not os.access(Path(__file__).parent, os.W_OK):
    os.environ["NUMBA_CACHE_DIR"] = str(Path.home() / ".cache" / "netweave" / "numba")

try:
    import numba

    jit = cast(Callable[[_F], _F], numba.njit(cache=True, nogil=True))
    COMPILED = True
except ImportError:  # pragma: no cover - numba is a dependency; plain Python is the fallback

    def jit(function: _F) -> _F:
        """Identity: run ``function`` as plain Python."""
        return function

    COMPILED = False
