"""``secretvault stats``: what secret memory costs now, once or live (``--watch``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from secretvault.vault.cli.connect import connect
from secretvault.vault.cli.errors import EXIT_OK, CliError
from secretvault.vault.cli.files import print_json
from secretvault.vault.cli.render import console, render_stats, show_stats, stats_json

if TYPE_CHECKING:
    from secretvault.clients import Stats


def show_last(updates: Iterator[Stats]) -> None:
    """Piped ``--watch``: the last view when the watch ends (Ctrl-C, or the vault
    stopping), as rich's live display leaves a file, and without padding."""
    last = None
    try:
        for last in updates:  # noqa: B007 (the loop keeps the last one)
            pass
    finally:
        if last is not None:
            show_stats(last)


def cmd_stats(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        if not args.watch:
            s = vault.stats()
            if args.json:
                print_json(stats_json(s))
            else:
                show_stats(s)
            return EXIT_OK
        updates = vault.watch_stats(args.interval)
        try:
            if args.json:
                # one JSON object per line, for tools that follow the stream
                for s in updates:
                    print(json.dumps(stats_json(s), sort_keys=True), flush=True)
            elif not console().is_terminal:
                show_last(updates)
            else:
                from rich.live import Live

                out = console()
                wide = out.is_terminal
                first = next(updates, None)
                if first is not None:
                    with Live(render_stats(first, side_by_side=wide), console=out,
                              auto_refresh=False, screen=False) as live:
                        for s in updates:
                            live.update(render_stats(s, side_by_side=wide), refresh=True)
        except KeyboardInterrupt:
            return EXIT_OK  # Ctrl-C: how a watch is meant to end
        finally:
            updates.close()
    # the server ends watches when it begins to drain
    raise CliError("the vault ended the stats stream: it is shutting down",
                   "run 'secretvault stats --watch' again once it is back")
