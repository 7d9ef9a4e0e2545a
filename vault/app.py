"""The composition root: configuration in, a running vault out.

This is the one place that chooses the concrete backend and store.  Every
other module receives them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal

from secretvault.api.errors import InvalidArgument, StoreInUse
from secretvault.api.paths import default_socket_path
from secretvault.backends import (
    MemfdSecretBackend,
    SecretMemoryBackend,
    SlotAllocator,
    harden_process,
)
from secretvault.vault.feed import FeedFollower
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import Argon2Params, UnsealSource, create_key_file
from secretvault.vault.store import SQLiteStore, Store
from secretvault.vault.storelock import StoreLock
from secretvault.vault.unsealing import STORE_FORMAT, Progress

BackendName = Literal["memfd_secret", "page-model", "pooled-pmd-model"]
BACKENDS: tuple[BackendName, ...] = ("memfd_secret", "page-model", "pooled-pmd-model")
PASSPHRASE_ENV = "SECRETVAULT_PASSPHRASE"  # noqa: S105 (a variable name)
KEY_FILE_NAME = "unseal.key"
STORE_FILE_NAME = "keys.sqlite3"


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/secretvault"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "secretvault")


@dataclass(frozen=True)
class VaultConfig:
    data_dir: str = field(default_factory=default_data_dir)
    socket: str = field(default_factory=default_socket_path)
    backend: BackendName = "memfd_secret"
    passphrase: bytes | None = None
    passphrase_file: str | None = None
    unseal_key_file: str | None = None
    kdf: Argon2Params = field(default_factory=Argon2Params)
    # model backends: simulated machine
    model_memory_bytes: int = 4 << 30
    model_cma_bytes: int = 256 << 20
    model_fallback: bool = False
    harden: bool = True
    #: where the sealed keys are: None, the data directory's SQLite file; or a
    #: PostgreSQL URL or conninfo string, shared by every replica (its password
    #: only in the URL or libpq's PGPASSWORD / PGPASSFILE; never in a message)
    store: str | None = field(default=None, repr=False)

    @property
    def store_path(self) -> str:
        return os.path.join(self.data_dir, STORE_FILE_NAME)


@dataclass
class Vault:
    """A running vault's parts; :meth:`close` zeroes and unmaps everything."""

    config: VaultConfig
    backend: SecretMemoryBackend
    allocator: SlotAllocator
    store: Store
    keyring: Keyring
    lock: StoreLock
    created_key_file: str | None = None
    #: keeps the keyring in step with the store's change feed (other processes' changes)
    feed: FeedFollower | None = None

    def close(self) -> None:
        """Zero and unmap secret memory even if closing the keyring or the
        store fails part-way; the store is let go last."""
        try:
            if self.feed is not None:
                self.feed.close()
            self.keyring.close()
        finally:
            try:
                self.store.close()
            finally:
                try:
                    self.allocator.close()
                finally:
                    self.lock.release()


def make_backend(config: VaultConfig) -> SecretMemoryBackend:
    if config.backend == "memfd_secret":
        return MemfdSecretBackend()
    if config.backend in ("page-model", "pooled-pmd-model"):
        from secretvault.backends.model import make_model_backend

        return make_model_backend(
            config.backend,
            memory_bytes=config.model_memory_bytes,
            cma_bytes=config.model_cma_bytes,
            fallback=config.model_fallback,
            # faults are recorded as the slot allocator first uses each
            # page, as memfd_secret faults pages on first touch
            fault_on_allocate=False,
        )
    raise InvalidArgument(f"unknown backend {config.backend!r}; use one of {', '.join(BACKENDS)}")


def make_store(config: VaultConfig) -> Store:
    """The configured store, opened (the one place a store is chosen)."""
    if config.store is None:
        return SQLiteStore(config.store_path)
    from secretvault.vault.store_pg import PostgreSQLStore, is_postgresql

    if not is_postgresql(config.store):
        raise InvalidArgument("--store takes a PostgreSQL URL (postgresql://USER@HOST:PORT/DB) "
                              "or conninfo string; without it the store is the data "
                              "directory's SQLite file")
    return PostgreSQLStore(config.store)


def _unseal_source(
    config: VaultConfig, allocator: SlotAllocator, store: Store
) -> tuple[UnsealSource, str | None]:
    """The configured unseal material; on a first start with none, a new key file."""
    if config.unseal_key_file:
        return UnsealSource(key_file=config.unseal_key_file), None
    if config.passphrase is not None:
        return UnsealSource(passphrase=config.passphrase), None
    if config.passphrase_file:
        return UnsealSource(passphrase_file=config.passphrase_file), None
    # Taken out of the environment, so children and /proc/PID/environ
    # readers of later copies do not see it.  The bytes of the initial
    # environment block and this str cannot be wiped: prefer a passphrase
    # file or a key file, which are read straight into secret memory.
    env = os.environ.pop(PASSPHRASE_ENV, None)
    if env:
        return UnsealSource(passphrase=env.encode()), None
    key_file = os.path.join(config.data_dir, KEY_FILE_NAME)
    created = None
    if not os.path.exists(key_file):
        if store.get_meta("store_id") is not None:
            raise InvalidArgument(
                f"the store {store.describe} exists but no unseal material was given: set "
                f"{PASSPHRASE_ENV}, or pass --passphrase-file or --unseal-key-file"
            )
        create_key_file(key_file, allocator)
        created = key_file
    return UnsealSource(key_file=key_file), created


def _needs_sole_access(store: Store) -> bool:
    """A first start (no metadata yet) or a store whose format is migrated on unseal."""
    return store.get_meta("store_id") is None or store.get_meta("format") != STORE_FORMAT


#: how long a process waits for another's first start or migration to finish
SOLE_ACCESS_WAIT_SECONDS = 30.0


def _hold(store_path: str, holder: str, *, sole: bool) -> StoreLock:
    """The store's lock, exclusive when ``sole``; a serving process waits (up to
    :data:`SOLE_ACCESS_WAIT_SECONDS`) while another holds it alone."""
    deadline = time.monotonic() + SOLE_ACCESS_WAIT_SECONDS
    while True:
        try:
            return StoreLock(store_path, holder, shared=not sole)
        except StoreInUse:
            if sole or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


#: what a refused second opener is told holds the store (``StoreLock``)
SERVER_HOLDER = "the secretvault server"


def open_vault(config: VaultConfig, *, progress: Progress | None = None,
               holder: str = SERVER_HOLDER, follow: bool = True) -> Vault:
    """Harden the process, pick the backend, hold the store, unseal it.

    ``holder`` says what this process is, to anyone refused the store while
    it is open here (:class:`StoreInUse`).  Every serving process (replica,
    worker of ``serve --workers``, embedded keyring) shares the store and
    follows its change feed; only a first start or a migration holds it alone.
    The feed's thread starts here unless ``follow`` is False: a server starts it
    once it has dropped the capabilities binding needed (threads inherit them).
    """
    if config.harden:
        harden_process()
    backend = make_backend(config)
    allocator = SlotAllocator(backend)
    lock: StoreLock | None = None
    store: Store | None = None
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        store = make_store(config)
        # held before anything is unsealed or created: a first start (the
        # key file, the metadata) and a migration need the store alone, so
        # two first starts cannot both make a key file; serving shares it
        lock = _hold(config.store_path, holder, sole=_needs_sole_access(store))
        source, created = _unseal_source(config, allocator, store)
        keyring = Keyring.open(allocator, store, source, kdf=config.kdf, progress=progress)
        lock.share()
        # from here on, what another process changes in the store is applied here
        feed = FeedFollower(store, keyring.follow, keyring.applier)
        if follow:
            feed.start()
    except BaseException:
        try:
            if store is not None:
                store.close()
        finally:
            try:
                allocator.close()
            finally:
                if lock is not None:
                    lock.release()
        raise
    return Vault(config, backend, allocator, store, keyring, lock, created, feed)


