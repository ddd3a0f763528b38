"""Child Python processes of the tests import the segmentlog the tests imported.

In a checkout that is the tree (an editable install, or the tree on PYTHONPATH). When the
suite runs from an unpacked sdist beside an installed package (.ci/run does), it is the
installed one: the unpacked tree has no C core, and a child that put the tree first on
sys.path (as PYTHONPATH or as the working directory of ``python -m``) would run on the
pure-Python backend, or fail under SEGMENTLOG_BACKEND=native.
"""

from __future__ import annotations

import os

import segmentlog

# The directory segmentlog was imported from: a working directory for ``python -m
# segmentlog`` that finds this package and no other.
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(segmentlog.__file__)))


def pythonpath(*extra: str) -> str:
    """PYTHONPATH for a child: PKG_ROOT, then ``extra``, then the inherited one."""
    return os.pathsep.join(p for p in (PKG_ROOT, *extra, os.environ.get("PYTHONPATH", ""))
                           if p)
