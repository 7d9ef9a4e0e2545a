"""``python -m secretvault ARGS`` is the ``secretvault`` command: ``secretvault ARGS``."""

from secretvault.vault.cli import run

if __name__ == "__main__":
    run()
