"""The keyring in the caller's own process: :class:`Keyring` and :func:`open_keyring`.

The same parts the server is made of, composed the same way
(:func:`secretvault.vault.app.open_vault`): the backend (memfd_secret
unless a model is asked for, and a refusal to start without it), the slot
allocator, the sealed store and the serving keyring with its locks.  There
is no socket, no thread and no gRPC: each method is a call into the
keyring on the caller's thread, and every result is one of the client
library's own records, so code moves between :class:`VaultClient` and an
embedded keyring by changing how it is opened.

What opening does to the process, exactly as the server does to its own:

* ``RLIMIT_CORE`` 0 and ``PR_SET_DUMPABLE`` 0 (no core dumps, no ptrace
  attach by the same user), for the whole process and for good;
* every secret region is ``MADV_DONTFORK``: a forked child has no mapping
  there at all, and a keyring it inherited refuses every call
  (:class:`KeyringClosed`) instead of touching memory that is not there;
* the store is held (:class:`StoreLock`) until :meth:`Keyring.close`: a
  server or another program opening it meanwhile is refused with the
  holder's pid.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeVar, cast

from secretvault.api.errors import KeyringClosed, VaultError
from secretvault.backends import _sodium
from secretvault.clients import Key, KeyVersion, PublicKey, Stats, local
from secretvault.clients._stats import stats_from_wire
from secretvault.vault.app import Vault, VaultConfig, open_vault
from secretvault.vault.keyring import Keyring as ServingKeyring
from secretvault.vault.keys import KeyInfo
from secretvault.vault.stats import OperationCounters, StatsSource, to_proto

Backend = Literal["memfd_secret", "page-model", "pooled-pmd-model"]
T = TypeVar("T")


class _Gone:
    """Stands in for the vault's keyring once this one cannot be used: every
    method the wrapper calls raises :class:`KeyringClosed` saying why."""

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        def refuse(*args: object, **kwargs: object) -> NoReturn:
            raise KeyringClosed(self._why)
        return refuse


_CLOSED = "this keyring is closed: its secret memory was zeroed and unmapped"
#: a forked child's inherited vaults: kept alive, never closed (see Keyring._forked)
_INHERITED: list[Vault] = []
_FORKED = ("this process is a fork of the one that opened the keyring: its secret "
           "memory is not mapped here (MADV_DONTFORK); open a keyring of its own")

#: every open keyring of this process, for the fork hook
_OPEN: weakref.WeakSet[Keyring] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for ring in list(_OPEN):
        ring._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _key(info: KeyInfo) -> Key:
    """The client's record for a key, from the keyring's."""
    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, tz=UTC)
    return Key(
        name=info.name, type=info.type.value, created=when(info.created),
        primary_version=info.primary_version,
        min_decryption_version=info.min_decryption_version, labels=dict(info.labels),
        versions=tuple(KeyVersion(version=v.version, created=when(v.created),
                                  public_key=v.public_key, damaged=v.damaged)
                       for v in info.versions),
    )


class Keyring:
    """Named keys with versions in this process's secret memory.

    Open it with :func:`open_keyring`; use it from any number of threads;
    :meth:`close` it (or leave its ``with`` block) to zero every key.  The
    methods and their results are the client's (:class:`VaultClient`), and
    so are the errors (:mod:`secretvault.api.errors`, the same names): a
    key is addressed by name, new tokens use its primary version, and
    verify/decrypt take the version from the token.
    """

    def __init__(self, vault: Vault) -> None:
        self._vault: Vault | None = vault
        self._ring: ServingKeyring = vault.keyring
        self._why_gone = ""
        self._counters = OperationCounters()
        self._stats = StatsSource(vault.allocator.statistics, vault.keyring.counts_by_type,
                                  self._counters)
        self._close_lock = threading.Lock()
        _OPEN.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._vault is None else self._vault.config.data_dir
        return f"<secretvault.embedded.Keyring {state}>"

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, operation: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, counted under ``operation`` by its result, as the server counts."""
        try:
            out = call(*args)
        except VaultError as e:
            self._counters.record(operation, e.status)
            raise
        self._counters.record(operation, "ok")
        return out

    # --- keys ---------------------------------------------------------------------

    def create_key(self, name: str, type: str, labels: Mapping[str, str] | None = None) -> Key:
        """A new key, generated straight into secret memory, version 1; durable on return."""
        return self._run("create_key", lambda: _key(self._ring.create(name, type, labels)))

    def import_key_public(self) -> bytes:
        """The X25519 public key that imported key material is sealed to."""
        return bytes(self._run("get_import_key", lambda: self._ring.import_public_key))

    def import_key(self, name: str, type: str, material: bytes | bytearray,
                   labels: Mapping[str, str] | None = None) -> Key:
        """Import the caller's key material: sealed to the import key here, then
        opened inside the keyring straight into a slot.

        ``material`` is the caller's own copy (see
        :func:`secretvault.clients.local.read_key_material`, which returns a
        ``bytearray`` to wipe after this call); the keyring never keeps it,
        and a ``bytearray`` is sealed in place, with no copy in Python.
        """
        local.check_material(type, len(material))
        wrapped = _sodium.crypto_box_seal(material, self.import_key_public())
        return self.import_wrapped(name, type, wrapped, labels)

    def import_wrapped(self, name: str, type: str, wrapped: bytes,
                       labels: Mapping[str, str] | None = None) -> Key:
        """Import material already sealed (``crypto_box_seal``) to the import key."""
        return self._run("import_key",
                         lambda: _key(self._ring.import_wrapped(name, type, wrapped, labels)))

    def get_key(self, name: str) -> Key:
        return self._run("get_key", lambda: _key(self._ring.get(name)))

    def list_keys(self, prefix: str = "") -> list[Key]:
        """Every key whose name starts with ``prefix``, in name order."""
        return self._run("list_keys", lambda: [_key(k) for k in self._ring.list(prefix)])

    def rotate_key(self, name: str) -> Key:
        """A new primary version; the old ones still verify and decrypt."""
        return self._run("rotate_key", lambda: _key(self._ring.rotate(name)))

    def set_min_decryption_version(self, name: str, version: int) -> Key:
        return self._run("set_min_decryption_version",
                         lambda: _key(self._ring.set_min_decryption_version(name, version)))

    def delete_key_version(self, name: str, version: int) -> Key:
        """Remove one version's sealed record, then zero its slot."""
        return self._run("delete_key_version",
                         lambda: _key(self._ring.delete_version(name, version)))

    def delete_key(self, name: str) -> None:
        """Remove every sealed record of the key, then zero its slots."""
        self._run("delete_key", self._ring.delete, name)

    def public_key(self, name: str, *, version: int = 0, format: str = "raw") -> PublicKey:
        """A public key as raw bytes, ``pem``, ``openssh`` or ``jwk`` (version 0: the primary)."""
        def export() -> PublicKey:
            info = self._ring.get(name)
            n = version or info.primary_version
            raw = self._ring.public_key(name, n, "raw")
            data = self._ring.public_key(name, n, format) if format != "raw" else raw
            return PublicKey(name, info.type.value, n, format, data, raw)
        return self._run("get_public_key", export)

    # --- operations: in place on the key in secret memory ---------------------------

    # Each is written out rather than passed through _run: a call and an
    # argument tuple fewer is a tenth of the cost the keyring adds to libsodium.

    def sign(self, key: str, message: bytes) -> bytes:
        """An Ed25519 signature token (the version, then the 64-byte signature)."""
        try:
            token = self._ring.sign(key, message)[1]
        except VaultError as e:
            self._counters.record("sign", e.status)
            raise
        self._counters.record("sign", "ok")
        return token

    def verify(self, key: str, message: bytes, signature: bytes) -> bool:
        try:
            valid = self._ring.verify(key, message, signature)
        except VaultError as e:
            self._counters.record("verify", e.status)
            raise
        self._counters.record("verify", "ok")
        return valid

    def encrypt(self, key: str, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """An XChaCha20-Poly1305 token under the primary version."""
        try:
            token = self._ring.encrypt(key, plaintext, associated_data)[1]
        except VaultError as e:
            self._counters.record("encrypt", e.status)
            raise
        self._counters.record("encrypt", "ok")
        return token

    def decrypt(self, key: str, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """Open an XChaCha20-Poly1305 token, or an X25519 sealed-box token."""
        try:
            plaintext = self._ring.decrypt(key, ciphertext, associated_data)[1]
        except VaultError as e:
            self._counters.record("decrypt", e.status)
            raise
        self._counters.record("decrypt", "ok")
        return plaintext

    def mac(self, key: str, message: bytes) -> bytes:
        """An HMAC-SHA-256 token under the primary version."""
        try:
            token = self._ring.mac(key, message)[1]
        except VaultError as e:
            self._counters.record("mac", e.status)
            raise
        self._counters.record("mac", "ok")
        return token

    def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        try:
            valid = self._ring.verify_mac(key, message, mac)
        except VaultError as e:
            self._counters.record("verify_mac", e.status)
            raise
        self._counters.record("verify_mac", "ok")
        return valid

    # --- what it holds ------------------------------------------------------------------

    def stats(self) -> Stats:
        """Secret memory, memlock, memcg, direct map, keys by type and the
        operations served: the record :meth:`VaultClient.stats` returns."""
        if self._vault is None:
            raise KeyringClosed(self._why_gone)
        return stats_from_wire(to_proto(self._stats.snapshot()))

    @property
    def closed(self) -> bool:
        return self._vault is None

    def close(self) -> None:
        """Zero and unmap every key, let go of the store (idempotent).

        Calls already running finish first (the keyring's write lock);
        later ones raise :class:`KeyringClosed`.
        """
        with self._close_lock:
            vault, self._vault = self._vault, None
            if vault is None:
                return
            self._gone(_CLOSED)
            _OPEN.discard(self)
            vault.close()

    def _gone(self, why: str) -> None:
        self._why_gone = why
        self._ring = cast(ServingKeyring, _Gone(why))

    def _forked(self) -> None:
        """In a forked child: forget the parent's vault without touching it.

        Its secret regions are not mapped here, so nothing may zero or free
        them; the store lock's descriptor is closed (only closed: an unlock
        would release the parent's hold, which shares the open file).  The
        store's connections are the parent's too (a PostgreSQL session shares
        its socket): the vault is kept, never freed here, so that no
        goodbye is sent over them in the parent's name.
        """
        vault, self._vault = self._vault, None
        self._gone(_FORKED)
        self._close_lock = threading.Lock()
        if vault is not None:
            vault.lock.release()
            _INHERITED.append(vault)


def open_keyring(
    data_dir: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    passphrase_file: str | os.PathLike[str] | None = None,
    unseal_key_file: str | os.PathLike[str] | None = None,
    backend: Backend = "memfd_secret",
    store: str | None = None,
) -> Keyring:
    """Open (or, the first time, create) the sealed store in ``data_dir`` in this process.

    Unseal material, as the server takes it: a key file, a passphrase file
    (both read straight into secret memory), a passphrase, or
    ``$SECRETVAULT_PASSPHRASE``; with none of them and no store yet, a new
    key file ``data_dir/unseal.key`` is made (keep it apart from the store
    in production).  A store a server made opens here with the same
    material, and the other way round, and both may have it open at once:
    each follows the store's change feed (a first start or a migration needs
    it alone, :class:`StoreInUse`).

    ``backend`` is ``memfd_secret`` unless a model is asked for; without
    memfd_secret this raises :class:`SecretMemoryUnavailable` and says why,
    never falling back to ordinary memory.  ``store`` is what ``serve
    --store`` takes: a PostgreSQL URL or conninfo string shared with the
    server's replicas (None: the SQLite file in ``data_dir``).
    """
    def path(p: str | os.PathLike[str] | None) -> str | None:
        return None if p is None else os.fspath(p)
    config = VaultConfig(
        data_dir=os.fspath(data_dir), socket="", backend=backend, passphrase=passphrase,
        passphrase_file=path(passphrase_file), unseal_key_file=path(unseal_key_file),
        store=store,
    )
    holder = f"an embedded keyring in {os.path.basename(sys.argv[0] or 'python')}"
    return Keyring(open_vault(config, holder=holder))
