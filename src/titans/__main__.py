"""``python -m titans``: the :mod:`titans.cli` command line."""

import sys

from titans.cli import main

sys.exit(main())
