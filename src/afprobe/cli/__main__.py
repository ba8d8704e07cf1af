"""``python -m afprobe.cli ...`` is the ``afprobe`` command."""

import sys

from afprobe.cli import main

sys.exit(main())
