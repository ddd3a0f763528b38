"""Fork the test process and run a function in the child."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


def fork(child: Callable[[], object]) -> int:
    """Fork; run ``child()`` in the child and leave with its status (0: it returned).
    Returns the child's pid (the parent waits for it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid
