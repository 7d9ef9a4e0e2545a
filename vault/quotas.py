"""Quotas on secret memory: versions per key, and bytes per identity.

Every version of every key holds a slot of secret memory, charged to
RLIMIT_MEMLOCK with everything else the vault holds.  Without bounds, one
identity allowed only ``rotate_key`` on one key could spend all of it (1,788
rotations filled a 64 KiB limit) and lock the owner out of creating keys.  So:

* a key has at most ``max_versions`` versions (``ServerConfig.max_versions_per_key``):
  one more is refused with :class:`TooManyVersions` (FAILED_PRECONDITION:
  retrying cannot help until someone deletes old versions);
* an identity may hold at most its ``secret_memory`` quota (the policy) in the
  slots of the versions it created, whichever key they belong to: one more is
  refused with :class:`QuotaExceeded` (RESOURCE_EXHAUSTED, naming the quota).

A version is charged to the identity that created it (by a create, an import
or a rotation), at its slot's size class, for as long as it lives: deleting
it, whoever does, gives the bytes back.  The creator is stored with the
version (``created_by``), so the use is recounted from the store at each
start.  Versions with no creator (stored before quotas, or made in-process)
are charged to nobody.  The owner has no quota; its use is shown all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from secretvault.api.errors import QuotaExceeded, TooManyVersions
from secretvault.backends import size_class
from secretvault.vault.keys import Key, Version

#: an identity's quota in bytes (None: unlimited)
Budget = Callable[[str], "int | None"]


@dataclass(frozen=True, slots=True)
class IdentityUse:
    """What one identity holds of secret memory, and may hold."""

    identity: str
    #: bytes of slots held by the versions it created
    secret_bytes: int
    #: its quota in bytes; None: unlimited
    budget_bytes: int | None


def cost(v: Version) -> int:
    """The secret memory a version holds: its slot's size class (0: no slot)."""
    return size_class(v.length) if v.slot is not None and v.length else 0


def _unlimited(identity: str) -> int | None:
    return None


class Quotas:
    """The use of each identity, and the limits; the keyring calls it under its
    mutation lock, so a check and its charge cannot interleave with another's."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.max_versions: int | None = None
        self._budget: Budget = _unlimited
        self._listed: tuple[str, ...] = ()
        self._used: dict[str, int] = {}
        for key in keys:
            for v in key.versions.values():
                self.charge(v.created_by, cost(v))

    def configure(self, *, max_versions: int | None, budget: Budget,
                  identities: Iterable[str] = ()) -> None:
        """Set the limits; ``identities`` are shown in :meth:`snapshot` even
        while they hold nothing (the policy's)."""
        self.max_versions = max_versions
        self._budget = budget
        self._listed = tuple(identities)

    def admit(self, key: Key | None, by: str | None, size: int) -> int:
        """The cost of one more version of ``size`` bytes made by ``by`` (for
        ``key``; None: a new key), or the error that says why it may not be made."""
        if key is not None and self.max_versions is not None and (
                len(key.versions) >= self.max_versions):
            raise TooManyVersions(
                f"key {key.name!r} has {len(key.versions)} versions, the most a key may "
                f"have (max_versions_per_key {self.max_versions}): delete old versions "
                "before rotating it again")
        charge = size_class(size)
        if by is not None:
            budget = self._budget(by)
            used = self._used.get(by, 0)
            if budget is not None and used + charge > budget:
                raise QuotaExceeded(
                    f"identity {by!r} holds {used} bytes of secret memory and its quota "
                    f"(secret_memory in the policy) is {budget} bytes: a new key version "
                    f"needs {charge} more. Delete keys or versions it created, or ask the "
                    "operator to raise the quota")
        return charge

    def charge(self, by: str | None, charge: int) -> None:
        if by is not None and charge:
            self._used[by] = self._used.get(by, 0) + charge

    def release(self, versions: Iterable[Version]) -> None:
        """Give back what deleted versions held to whoever created them."""
        for v in versions:
            charge = cost(v)
            if v.created_by is not None and charge:
                left = self._used.get(v.created_by, 0) - charge
                if left > 0:
                    self._used[v.created_by] = left
                else:
                    self._used.pop(v.created_by, None)

    def snapshot(self) -> tuple[IdentityUse, ...]:
        """Each identity's use and quota, by name: the listed ones and any holding memory."""
        used = dict(self._used)  # one C-level copy: a mutation may be charging
        names = sorted(set(self._listed) | set(used))
        return tuple(IdentityUse(n, used.get(n, 0), self._budget(n)) for n in names)
