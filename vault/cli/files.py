"""The command's inputs and outputs: files, stdin and stdout, JSON, base64."""

from __future__ import annotations

import base64
import sys
from typing import Any

from secretvault.vault.cli.errors import PROG, CliError


def read_input(path: str | None, what: str) -> bytes:
    """A file's bytes, or stdin's for None or '-'."""
    if path is None or path == "-":
        if sys.stdin.isatty():
            print(f"{PROG}: reading the {what} from the terminal; end it with Ctrl-D",
                  file=sys.stderr)
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(
            f"cannot read the {what} from {path}: {e.strerror or e}",
            "check the path and its permissions",
        ) from None


def write_output(data: bytes, path: str | None, *, binary: bool, what: str) -> None:
    """Write to a file (created 0644, replaced) or to stdout for None or '-'."""
    if path is None or path == "-":
        if binary and sys.stdout.isatty():
            raise CliError(
                f"refusing to write the binary {what} to the terminal",
                "add --out FILE, or --json, or pipe it (e.g. '| base64')",
            )
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise CliError(
            f"cannot write the {what} to {path}: {e.strerror or e}",
            "check the directory exists and is writable",
        ) from None


def print_json(value: Any, path: str | None = None) -> None:
    import json  # only --json needs it

    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    write_output(text.encode(), path, binary=False, what="JSON")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
