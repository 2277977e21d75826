"""``python -m titans``: the :mod:`titans.experiments.cli` command line."""

import sys

from titans.experiments.cli import main

sys.exit(main())
