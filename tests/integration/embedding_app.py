"""An application that embeds the keyring, for tests/integration/test_embedded.py.

``python -m tests.integration.embedding_app DATA_DIR BACKEND`` raises its own
core-dump limit, opens the keyring in ``DATA_DIR`` (with the unseal key file
there, as the server makes it, or making one on a new store), signs with
``app/signer`` (created on first use), and prints one JSON line: the
process's dumpable flag and core limit before and after opening, the keys it
sees and its signature.  It then serves the store (following its change feed,
as every process over a store does): each ``list`` line on stdin is answered
with ``{"keys": [...]}``, the keys it sees now; an empty line closes the
keyring, prints ``{"closed": true}`` and exits.  Opening
errors are printed as ``{"error": CLASS, "message": TEXT}`` (exit 3).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

from secretvault.embedded import KeyNotFound, VaultError, open_keyring

PR_GET_DUMPABLE = 3


def _process() -> dict[str, object]:
    libc = ctypes.CDLL(None, use_errno=True)
    return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
            "core": list(resource.getrlimit(resource.RLIMIT_CORE))}


def _say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    data_dir, backend = sys.argv[1], sys.argv[2]
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # what hardening must undo
    before = _process()
    # the key file a server made (or, on a new store, none: one is made there)
    key_file = os.path.join(data_dir, "unseal.key")
    try:
        ring = open_keyring(data_dir, backend=backend,  # type: ignore[arg-type]
                            unseal_key_file=key_file if os.path.exists(key_file) else None)
    except VaultError as e:
        _say({"error": type(e).__name__, "message": str(e)})
        return 3
    with ring:
        try:
            ring.get_key("app/signer")
        except KeyNotFound:
            ring.create_key("app/signer", "ed25519")
        _say({
            "before": before, "after": _process(),
            "keys": [k.name for k in ring.list_keys()],
            "signature": ring.sign("app/signer", b"from the application").hex(),
            "stats_backend": ring.stats().backend,
        })
        while sys.stdin.readline().strip() == "list":
            _say({"keys": [k.name for k in ring.list_keys()]})
    _say({"closed": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
