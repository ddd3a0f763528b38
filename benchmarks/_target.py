"""Which segmentlog the benchmark scripts measure; each imports this before segmentlog.

Rule 1: an installed segmentlog (``pip install .``, ``pip install -e .``, or a tree on
PYTHONPATH) is the one measured. Only when none is importable does the checkout this
script sits in go on ``sys.path``: after a regular install, putting it first imported the
tree without its C core, and the run quietly measured the pure-Python backend.
Rule 2: a run that did not ask for the pure backend (``SEGMENTLOG_BACKEND=pure``) and gets
it anyway stops at once, saying why, instead of measuring the wrong thing for minutes.
"""

from __future__ import annotations

import importlib.util
import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _choose() -> None:
    if importlib.util.find_spec("segmentlog") is None:
        sys.path.insert(0, CHECKOUT)
    import segmentlog

    wanted = os.environ.get("SEGMENTLOG_BACKEND", "").strip().lower()
    if segmentlog.backend != "native" and wanted != "pure":
        sys.exit(
            f"{os.path.basename(sys.argv[0])}: the segmentlog at "
            f"{os.path.dirname(segmentlog.__file__)} has no C core (its backend is "
            f"{segmentlog.backend}): build it (pip install . or pip install -e .), or set "
            "SEGMENTLOG_BACKEND=pure to measure the pure-Python backend on purpose"
        )


_choose()
