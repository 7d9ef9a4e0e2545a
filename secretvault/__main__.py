"""``python -m secretvault ARGS`` is the ``secretvault`` command: ``secretvault ARGS``."""

import sys

from secretvault.vault.cli import main

if __name__ == "__main__":
    sys.exit(main())
