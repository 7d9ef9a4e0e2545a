"""How a command ends: its exit status and, on failure, one line naming the problem and the fix.

A mistake the command itself finds is a :class:`CliError`; an error from the
vault is a :class:`~secretvault.api.errors.VaultError`, whose fix is looked up
in :data:`FIXES` by the nearest class in its MRO.
"""

from __future__ import annotations

import sys

from secretvault.api.errors import (
    DeadlineExceeded,
    DecryptionFailed,
    FailedPrecondition,
    ImportKeyUnavailable,
    IntegrityError,
    InvalidArgument,
    InvalidImport,
    InvalidKeyName,
    KeyExists,
    KeyNotFound,
    MalformedCiphertext,
    MemlockExceeded,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    PoolExhausted,
    QuotaExceeded,
    RequestTooLarge,
    ResourceExhausted,
    SecretMemoryExhausted,
    SecretMemoryUnavailable,
    ShuttingDown,
    StoreBusy,
    StoreFull,
    StoreInUse,
    StoreSealed,
    StoreUnavailable,
    TooManyCalls,
    TooManyVersions,
    Unavailable,
    VaultError,
    VersionBelowMinimum,
    VersionNotFound,
    WrongKeyType,
    WrongPassphrase,
)

PROG = "secretvault"

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_ERROR = 2


class CliError(Exception):
    """A user mistake the CLI itself detects: the problem and how to fix it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# --- the fix for each error the vault can report -----------------------------------

#: the nearest class in an error's MRO decides the hint
FIXES: dict[type[VaultError], str] = {
    KeyNotFound: "'secretvault keys list' shows the keys; "
    "'secretvault keys create NAME --type TYPE' makes one",
    VersionNotFound: "'secretvault keys show NAME' lists the key's versions",
    VersionBelowMinimum: "the token was made with a version retired for decrypt and verify "
    "('secretvault keys show NAME'); 'secretvault keys set-min-version NAME N' lowers the "
    "minimum if that was not intended",
    KeyExists: "choose another name, or 'secretvault keys rotate NAME' for a new version",
    InvalidKeyName: "rename the key within that character set",
    WrongKeyType: "'secretvault keys show NAME' shows its type: sign/verify need ed25519, "
    "encrypt/decrypt xchacha20-poly1305 (decrypt also x25519), mac/verify-mac hmac-sha256",
    MalformedCiphertext: "pass the token exactly as secretvault wrote it (not --raw output, "
    "not base64)",
    DecryptionFailed: "check the key name and --aad: the data was made with another key "
    "or associated data, or it was altered",
    InvalidImport: "see 'secretvault keys import --help' for the accepted key files",
    PermissionDenied: "the vault's policy does not allow this: ask its operator to grant it",
    MemlockExceeded: "raise the server's memlock limit (ulimit -l, LimitMEMLOCK=, "
    "--ulimit memlock=) or grant it CAP_IPC_LOCK (serve drops it unless "
    "--keep-capabilities); 'secretvault stats' shows the headroom",
    PoolExhausted: "the pooled-PMD model's pool is drained: start it with a larger pool "
    "or with fallback enabled",
    SecretMemoryExhausted: "free keys ('secretvault keys delete') or give the machine or "
    "its memory cgroup more memory",
    RequestTooLarge: "send less in one call (smaller messages, fewer operations per batch)",
    StoreSealed: "wait for the vault to finish unsealing, then retry",
    WrongPassphrase: "give the passphrase the store was created with (SECRETVAULT_PASSPHRASE "
    "or --passphrase-file) or its --unseal-key-file",
    SecretMemoryUnavailable: "see README.md, Troubleshooting; for development only, "
    "--backend page-model runs on a model",
    IntegrityError: "the store is damaged or was tampered with: restore it from a backup",
    ImportKeyUnavailable: "the vault's sealed import key is damaged: restore the store from "
    "a backup, or create keys in the vault instead of importing them",
    QuotaExceeded: "delete keys or old versions this identity created ('secretvault keys "
    "delete NAME [--version N]'), or ask the operator to raise its secret_memory quota; "
    "'secretvault stats' shows each identity's use",
    TooManyVersions: "delete old versions first ('secretvault keys delete NAME --version N'; "
    "'secretvault keys show NAME' lists them), or ask the operator to raise "
    "--max-versions-per-key",
    StoreFull: "free space on the vault's data directory, then retry",
    StoreInUse: "let the process the message names finish its first start or migration, or "
    "stop it, then start again",
    StoreUnavailable: "check that the PostgreSQL server the message names is up and "
    "reachable; keys already loaded keep serving, changes work again once it is back",
    StoreBusy: "another process holds the store: run one vault per data directory, then retry",
    TooManyCalls: "close idle streams or watches, or ask the operator to raise the limits "
    "(--max-concurrent-rpcs, --max-streams-per-identity)",
    ShuttingDown: "the vault is stopping: retry once it is back",
    OutcomeUnknown: "read the key back ('secretvault keys show NAME') to see whether the "
    "change was applied",
    DeadlineExceeded: "raise --timeout, or check the vault's load",
    # the families: the vault's message names what is wrong
    InvalidArgument: "correct what the message names ('--help' lists the options)",
    NotFound: "'secretvault keys list' shows what exists",
    FailedPrecondition: "change what the message names first, then retry",
    ResourceExhausted: "'secretvault stats' shows what is used and what is left",
    Unavailable: "retry in a moment; if it persists, check the vault is running",
}


def fix_for(error: VaultError) -> str:
    """The fix for ``error``: its own (naming what to change), else that of the
    nearest class in its MRO with one."""
    own = getattr(error, "fix", None)
    if own:
        return str(own)
    for cls in type(error).__mro__:
        fix = FIXES.get(cls)
        if fix is not None:
            return fix
    return "see the vault's log for details"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fail(problem: str, fix: str) -> int:
    """Say ``problem`` and ``fix`` on one stderr line; the exit status to end with."""
    line = f"{PROG}: error: {_one_line(problem)}"
    if fix:
        line += f" (fix: {_one_line(fix)})"
    print(line, file=sys.stderr)
    return EXIT_ERROR
