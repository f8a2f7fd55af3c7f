"""``python -m shmlaunch.nodes '<json spec>'``: how the launcher starts a Python node."""

import sys

from ._runner import main

sys.exit(main())
