"""Chooses the backend (C core or pure Python) once, at import.

``SEGMENTLOG_BACKEND=auto`` (default) takes the C core when it was built and falls back to
pure Python, saying so once on the ``segmentlog`` logger; ``native`` insists on the C core
(ImportError if it is missing, so a broken build is never silently slow); ``pure`` forces
the fallback. Both backends expose the same functions and write byte-identical segments:
the typed contract of segmentlog/_backend_protocol.py, which mypy checks both modules
against here (each ``return`` below, and the two assignments under TYPE_CHECKING).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from segmentlog._backend_protocol import Backend
from segmentlog.errors import ConfigError

if TYPE_CHECKING:
    from segmentlog import _nativebackend, _pure

    # Each backend against the contract with its own Framer (_backend_protocol Rule 2).
    _pure_checked: Backend[_pure.Framer] = _pure
    _native_checked: Backend[_nativebackend.Framer] = _nativebackend

_ENV = "SEGMENTLOG_BACKEND"


def _select() -> Backend[Any]:
    choice = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "native", "pure"):
        raise ConfigError(f"{_ENV}={choice!r} is not valid: use auto, native or pure")
    if choice == "pure":
        from segmentlog import _pure

        return _pure
    try:
        from segmentlog import _nativebackend
    except ImportError as exc:
        if choice == "native":
            raise ImportError(
                f"{_ENV}=native but the C core is not built ({exc}); "
                "reinstall with a C compiler present (pip install .) or use "
                f"{_ENV}=pure"
            ) from exc
        from segmentlog import _pure

        logging.getLogger("segmentlog").warning(
            "segmentlog: C core not available (%s); using the pure-Python backend "
            "(same format, slower)",
            exc,
        )
        return _pure
    return _nativebackend


impl: Backend[Any] = _select()
NAME: str = impl.NAME
