"""``python -m circuits``: the command-line interface (same as the ``circuits`` command)."""

import sys

from .cli import main

sys.exit(main())
