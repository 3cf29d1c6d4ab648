"""``python -m flowvi``: the ``flowvi`` command."""

import sys

from flowvi.app.cli import main

sys.exit(main())
