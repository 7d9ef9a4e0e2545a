"""The composition root: configuration in, a running vault out.

This is the one place that chooses the concrete backend and store.  Every
other module receives them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from secretvault.api.errors import InvalidArgument
from secretvault.api.paths import default_socket_path
from secretvault.backends import (
    MemfdSecretBackend,
    SecretMemoryBackend,
    SlotAllocator,
    harden_process,
)
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import Argon2Params, UnsealSource, create_key_file
from secretvault.vault.store import SQLiteStore, Store
from secretvault.vault.storelock import StoreLock
from secretvault.vault.unsealing import Progress

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

    def close(self) -> None:
        """Zero and unmap secret memory even if closing the keyring or the
        store fails part-way; the store is let go last."""
        try:
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


def _unseal_source(
    config: VaultConfig, allocator: SlotAllocator
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
        if os.path.exists(config.store_path):
            raise InvalidArgument(
                f"the store {config.store_path} exists but no unseal material was given: set "
                f"{PASSPHRASE_ENV}, or pass --passphrase-file or --unseal-key-file"
            )
        create_key_file(key_file, allocator)
        created = key_file
    return UnsealSource(key_file=key_file), created


#: what a refused second opener is told holds the store (``StoreLock``)
SERVER_HOLDER = "the secretvault server"


def open_vault(config: VaultConfig, *, progress: Progress | None = None,
               holder: str = SERVER_HOLDER, shared: bool = False) -> Vault:
    """Harden the process, pick the backend, hold the store, unseal it.

    ``holder`` says what this process is, to anyone refused the store while
    it is open here (:class:`StoreInUse`).  ``shared``: the store is held
    with the other workers of one ``serve --workers`` (:class:`StoreLock`).
    """
    if config.harden:
        harden_process()
    backend = make_backend(config)
    allocator = SlotAllocator(backend)
    lock: StoreLock | None = None
    try:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        # held before anything is read or created, so two first starts
        # cannot both make a key file
        lock = StoreLock(config.store_path, holder, shared=shared)
        source, created = _unseal_source(config, allocator)
        store = SQLiteStore(config.store_path)
        try:
            keyring = Keyring.open(allocator, store, source, kdf=config.kdf, progress=progress)
        except BaseException:
            store.close()
            raise
    except BaseException:
        try:
            allocator.close()
        finally:
            if lock is not None:
                lock.release()
        raise
    return Vault(config, backend, allocator, store, keyring, lock, created)


