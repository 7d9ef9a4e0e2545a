"""The keyring as a library: keys in this process's own secret memory, no server.

::

    from secretvault.embedded import open_keyring

    with open_keyring("/var/lib/myapp/keys", unseal_key_file="/etc/myapp/unseal.key") as ring:
        ring.create_key("webhook", "ed25519")
        token = ring.sign("webhook", b"payload")
        assert ring.verify("webhook", b"payload", token)

* :func:`open_keyring` opens (or creates) a sealed store and unseals it
  into secret memory; :class:`Keyring` serves it on the caller's threads,
  with the client library's methods, records and errors.
* The same store a server opens: a store made by ``secretvault serve``
  opens here with the same unseal material, and the other way round, and
  both may serve it at once: each process follows the store's change feed
  and serves what the others created (only a first start or a migration
  needs it alone: :class:`StoreInUse`).

Embedding puts the keys in the application's own process: anything that
runs in it, a compromised dependency included, can *use* them (never read
them: they are outside the direct map, and no call returns them).  Run the
server when the application should only be able to ask.
"""

from __future__ import annotations

from secretvault.api.errors import (
    DecryptionFailed,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyExists,
    KeyNotFound,
    KeyringClosed,
    MemlockExceeded,
    SecretMemoryUnavailable,
    StoreInUse,
    VaultError,
    VersionBelowMinimum,
    VersionNotFound,
    WrongKeyType,
    WrongPassphrase,
)
from secretvault.embedded._keyring import Backend, Keyring, open_keyring

__all__ = [
    "Backend",
    "DecryptionFailed",
    "FailedPrecondition",
    "IntegrityError",
    "InvalidArgument",
    "KeyExists",
    "KeyNotFound",
    "Keyring",
    "KeyringClosed",
    "MemlockExceeded",
    "SecretMemoryUnavailable",
    "StoreInUse",
    "VaultError",
    "VersionBelowMinimum",
    "VersionNotFound",
    "WrongKeyType",
    "WrongPassphrase",
    "open_keyring",
]
