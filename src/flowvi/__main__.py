"""``python -m flowvi``: the ``flowvi`` command."""

import sys

from flowvi.cli import main

sys.exit(main())
