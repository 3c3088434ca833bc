"""``python -m mergetune.cli ...``: the ``mergetune`` command."""

import sys

from mergetune.cli import main

sys.exit(main())
