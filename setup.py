"""Build script: the C core is compiled at install time with cffi (out-of-line API mode).

Rule 1: every build compiles the C core or fails, saying why and what to do. ``pip
install`` from an sdist builds a wheel and caches it, so a build that quietly left the
C core out would be reused by every later install, compiler or not.
Rule 2: ``SEGMENTLOG_ALLOW_PURE=1`` is the explicit way out: a failed compile becomes a
warning and the package runs on the pure-Python backend (same format, much slower; it
says so when imported). pip caches that wheel too: ``pip cache remove segmentlog`` once
a compiler is there.
Rule 3: wheels are tagged for the limited API (``cp310-abi3``): cffi builds the extension
for it (``_native.abi3.so``), so one wheel serves CPython 3.10 and every later version.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ALLOW_PURE = "SEGMENTLOG_ALLOW_PURE"
LIMITED_API = "cp310"  # the oldest Python requires-python allows


class CoreNotBuilt(CompileError):
    """The C core did not compile and SEGMENTLOG_ALLOW_PURE is not set (Rule 1)."""


class BuildExt(build_ext):
    """build_ext that fails with the fix in its message, or warns under Rule 2."""

    def run(self) -> None:
        try:
            super().run()
        except CoreNotBuilt:
            raise
        except Exception as exc:
            self._failed(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if os.environ.get(ALLOW_PURE, "") in ("", "0"):
            raise CoreNotBuilt(
                f"segmentlog: the C core did not compile ({exc}). Install a C compiler "
                "and the Python headers (Debian/Ubuntu: apt-get install gcc python3-dev) "
                "and retry, or install a wheel; or set "
                f"{ALLOW_PURE}=1 to install the pure-Python backend (same format, much slower)"
            ) from exc
        self.warn(
            f"segmentlog: the C core was not built ({exc}); {ALLOW_PURE} is set, so the "
            "pure-Python backend will be used (same format, much slower)"
        )


setup(
    cffi_modules=["segmentlog/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": LIMITED_API}},
)
