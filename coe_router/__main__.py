"""``python -m coe_router`` is the ``coe-router`` command."""

import sys

from coe_router.cli import main

sys.exit(main())
