"""``python -m router_training``."""

import sys

from router_training.cli import main

sys.exit(main())
