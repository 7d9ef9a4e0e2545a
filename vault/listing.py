"""The keyring's names in sorted order, for listings in pages.

A listing by prefix, or a page after a given name, starts by bisection
instead of sorting every name per call: a listing in pages costs O(N) in
all, not O(N^2).  The order is built on the first listing and then kept
by the keyring's mutations (under the write side of its lock).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping


class NameIndex:
    """The sorted names of ``keys`` (the keyring's own dict, read when first needed)."""

    def __init__(self, keys: Mapping[str, object]) -> None:
        self._keys = keys
        self._names: list[str] | None = None

    def scan(self, prefix: str, after: str | None) -> Iterator[str]:
        """Names starting with ``prefix`` and sorting after ``after``, in order
        (call it with the read side of the keyring's lock held)."""
        names = self._names
        if names is None:
            # readers may build it side by side: each builds the same list
            names = self._names = sorted(self._keys)
        start = bisect.bisect_left(names, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(names, after))
        # the names starting with prefix are contiguous in sorted order
        return itertools.takewhile(lambda n: n.startswith(prefix),
                                   itertools.islice(names, start, None))

    def page(self, limit: int, prefix: str, after: str | None,
             visible: Callable[[str], bool] | None) -> tuple[list[str], bool]:
        """Up to ``limit`` names of keys present that start with ``prefix``,
        sort after ``after`` and are ``visible`` (None: all), and whether
        more follow.  Filtering comes before the page is cut, so a page is
        full whenever more visible names exist."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        out: list[str] = []
        for name in self.scan(prefix, after):
            if (visible is not None and not visible(name)) or name not in self._keys:
                continue  # not visible, or the keyring closed meanwhile
            if len(out) == limit:
                return out, True
            out.append(name)
        return out, False

    def add(self, name: str) -> None:
        """Keep the order (write side of the keyring's lock held)."""
        if self._names is not None:
            bisect.insort(self._names, name)

    def remove(self, name: str) -> None:
        names = self._names
        if names is not None:
            i = bisect.bisect_left(names, name)
            if i < len(names) and names[i] == name:
                del names[i]
