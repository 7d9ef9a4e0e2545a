"""A key and its versions as the keyring holds them, and the rules for names and labels.

:class:`Key` and :class:`Version` are the keyring's own mutable records (a
version's key material is in its slot, never here); :class:`KeyInfo` and
:class:`VersionInfo` are their frozen public view.  Both the unsealing of a
store (:mod:`secretvault.vault.unsealing`) and the serving keyring
(:mod:`secretvault.vault.keyring`) build and read them.

A version that cannot be used keeps its number and public data, has no
slot, and says why in ``damaged``: :meth:`Version.damage` is the one way it
gets there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from secretvault.api.errors import (
    IntegrityError,
    InvalidArgument,
    InvalidKeyName,
    VersionBelowMinimum,
    VersionNotFound,
)
from secretvault.backends import Slot
from secretvault.vault.crypto import KeyType
from secretvault.vault.records import MAX_NAME_LEN
from secretvault.vault.sealing import version_digest
from secretvault.vault.store import VersionRecord

#: Key names: 1 to MAX_NAME_LEN (128) characters from ``A-Z a-z 0-9 . _ - /``,
#: starting with a letter or digit, with no empty, ``.`` or ``..`` path
#: segment.  Slashes let policies grant ``team/*`` patterns.
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._/-]{{0,{MAX_NAME_LEN - 1}}}")
MAX_LABELS = 32
MAX_LABEL_LEN = 256


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or any(
        seg in ("", ".", "..") for seg in name.split("/")
    ):
        raise InvalidKeyName(
            f"invalid key name {name[:140]!r}: use 1-128 characters from A-Z a-z 0-9 . _ - /, "
            "starting with a letter or digit, with no empty, '.' or '..' segment"
        )
    return name


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels per key")
    for k, v in labels.items():
        if not k or len(k) > MAX_LABEL_LEN or len(v) > MAX_LABEL_LEN:
            raise InvalidArgument(
                f"label keys must be 1-{MAX_LABEL_LEN} characters and values at most "
                f"{MAX_LABEL_LEN}"
            )
    return dict(labels)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    created: float
    public_key: bytes | None
    damaged: str | None = None  # why the sealed record could not be opened


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    type: KeyType
    created: float
    primary_version: int
    min_decryption_version: int
    labels: Mapping[str, str]
    versions: tuple[VersionInfo, ...]
    damaged: str | None = None  # why the key's own stored row could not be read


@dataclass(eq=False, slots=True)
class Version:
    version: int
    created: float
    public: bytes | None
    #: ``sealing.version_digest`` of the stored record, for the key's row MAC
    digest: bytes
    slot: Slot | None = None
    length: int = 0
    damaged: str | None = None
    #: the identity that made it, charged for its slot (``vault.quotas``)
    created_by: str | None = None

    @classmethod
    def of(cls, rec: VersionRecord, slot: Slot | None = None, length: int = 0) -> Version:
        """The version a stored record describes, its key in ``slot`` (None: not yet)."""
        digest = version_digest(rec.version, rec.created, rec.public_key, rec.nonce, rec.sealed)
        return cls(rec.version, rec.created, rec.public_key, digest, slot, length,
                   created_by=rec.created_by)

    def damage(self, why: str) -> None:
        """Unusable from now on, saying why: the slot (if any) is zeroed and
        dropped; the number, public key and digest stay."""
        self.free()
        self.slot = None
        self.length = 0
        self.damaged = why

    def free(self) -> None:
        """Zero and free the slot (deletion, close); the handle stays, freed."""
        if self.slot is not None:
            self.slot.free()

    def info(self) -> VersionInfo:
        return VersionInfo(self.version, self.created, self.public, self.damaged)


@dataclass(eq=False, slots=True)
class Key:
    name: str
    type: KeyType
    created: float
    primary: int
    min_decryption: int
    labels: dict[str, str]
    versions: dict[int, Version] = field(default_factory=dict)
    # the stored key row does not parse, or fails its row MAC: no version is usable
    damaged: str | None = None

    def digests(self) -> list[tuple[int, bytes]]:
        return [(n, v.digest) for n, v in self.versions.items()]

    def damage(self, why: str) -> None:
        """The key's row cannot be trusted: every version not already damaged
        for a reason of its own is zeroed and marked with ``why``."""
        self.damaged = why
        for v in self.versions.values():
            if v.damaged is None:
                v.damage(why)

    def free(self) -> None:
        for v in self.versions.values():
            v.free()

    def usable(self, version: int | None, *, decrypting: bool) -> Version:
        """Version ``version`` (None: the primary) if an operation may use it;
        otherwise the error that says why not."""
        n = self.primary if version is None else version
        v = self.versions.get(n)
        if v is None:
            if self.damaged is not None:
                raise IntegrityError(f"key {self.name!r}: {self.damaged}")
            raise VersionNotFound(f"key {self.name!r} has no version {n}")
        if decrypting and n < self.min_decryption:
            raise VersionBelowMinimum(
                f"key {self.name!r} version {n} is below the minimum decryption version "
                f"{self.min_decryption}"
            )
        if v.slot is None:
            raise IntegrityError(f"key {self.name!r} version {n}: {v.damaged}")
        return v

    def exported(self, version: int | None) -> Version:
        """Version ``version`` (None: the primary) if its public key may be
        exported; otherwise the error that says why not."""
        n = self.primary if version is None else version
        v = self.versions.get(n)
        if (v is not None and v.damaged is not None and v.damaged != self.damaged
                and self.type.asymmetric):
            # the version's own damage says more than the key's
            raise IntegrityError(f"key {self.name!r} version {n}: {v.damaged}")
        if self.damaged is not None:
            raise IntegrityError(f"key {self.name!r}: {self.damaged}")
        if v is None:
            raise VersionNotFound(f"key {self.name!r} has no version {n}")
        if v.damaged is not None and self.type.asymmetric:
            # the stored public key is not authenticated on its own: a
            # version that failed to unseal must not vouch for it
            raise IntegrityError(f"key {self.name!r} version {n}: {v.damaged}")
        return v

    def first_damage(self) -> str | None:
        """Why the key cannot be used in full (its own damage, else its
        lowest damaged version's), or None."""
        return self.damaged or next(
            (f"version {n}: {v.damaged}" for n, v in sorted(self.versions.items())
             if v.damaged is not None), None)

    def raise_if_damaged(self, version: int | None) -> None:
        """The version's own damage, else the key's, as an :class:`IntegrityError`."""
        n = self.primary if version is None else version
        v = self.versions.get(n)
        if v is not None and v.damaged is not None:
            raise IntegrityError(f"key {self.name!r} version {n}: {v.damaged}")
        if self.damaged is not None:
            raise IntegrityError(f"key {self.name!r}: {self.damaged}")

    def info(self) -> KeyInfo:
        return KeyInfo(
            self.name,
            self.type,
            self.created,
            self.primary,
            self.min_decryption,
            dict(self.labels),
            tuple(v.info() for _, v in sorted(self.versions.items())),
            self.damaged,
        )
