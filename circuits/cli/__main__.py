"""``python -m circuits.cli``: the same as ``circuits`` and ``python -m circuits``."""

import sys

from . import main

sys.exit(main())
