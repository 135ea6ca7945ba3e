"""``python -m pachyderm_typed inspect ...``: see ``pachyderm_typed.cli``."""

from __future__ import annotations

import sys

from pachyderm_typed.cli import main

if __name__ == "__main__":
    sys.exit(main())
