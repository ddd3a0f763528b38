"""Build script: the C core is compiled at install time with cffi (out-of-line API mode).

If no C compiler is present the build of the extension is skipped with a warning and the
package still installs: segmentlog then runs on its pure-Python backend and says so.
"""

from __future__ import annotations

from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile of the C core into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc: BaseException) -> None:
        self.warn(
            f"segmentlog: the C core was not built ({exc}); "
            "the pure-Python backend will be used (same format, slower)"
        )


setup(
    cffi_modules=["segmentlog/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
