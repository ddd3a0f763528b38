"""``python -m segmentlog``: see segmentlog.cli."""

import sys

from segmentlog.cli import main

sys.exit(main())
