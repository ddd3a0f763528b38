"""The C core's test hooks (csrc/segmentlog.h, ``#ifdef SL_TESTING``) for the tests that
need them: they exist only in the test build (SEGMENTLOG_STRICT_BUILD=1, as CI builds).
The shipped extension has none (tests/test_format.py checks)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def need_test_hooks(native: ModuleType) -> ModuleType:
    """``native`` (segmentlog._nativebackend) if its C core has the test hooks; else a skip
    that says how to build them, or a failure in the test build, which must have them."""
    if not native.TEST_HOOKS:
        problem = "the C core was built without its test hooks (SL_TESTING)"
        if os.environ.get("SEGMENTLOG_STRICT_BUILD", "") not in ("", "0"):
            pytest.fail(f"SEGMENTLOG_STRICT_BUILD=1 but {problem}: rebuild the extension")
        pytest.skip(f"{problem}; build them with SEGMENTLOG_STRICT_BUILD=1 "
                    "python setup.py build_ext --inplace")
    return native
