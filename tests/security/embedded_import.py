"""An application importing its own key into an embedded keyring, for test_residue.py.

``python -m tests.security.embedded_import DATA_DIR``: generates an Ed25519
seed straight into a ``bytearray`` (libsodium's randombytes through the
buffer, so no ``bytes`` ever holds it), writes those 32 raw bytes to stdout
(``os.write`` reads the buffer in place), imports it with
``Keyring.import_key``, wipes the bytearray, signs once, prints ``ready``
and waits on stdin, so the test can scan this process for the seed.
"""

from __future__ import annotations

import gc
import os
import sys

from secretvault.backends import _sodium
from secretvault.embedded import open_keyring


def main() -> int:
    seed = bytearray(32)
    _sodium.randombytes_buf(_sodium.ffi.from_buffer(seed), len(seed))
    os.write(sys.stdout.fileno(), seed)
    with open_keyring(sys.argv[1]) as ring:
        ring.import_key("imported", "ed25519", seed)
        _sodium.sodium_memzero(_sodium.ffi.from_buffer(seed), len(seed))
        ring.sign("imported", b"used")
        gc.collect()
        os.write(sys.stdout.fileno(), b"ready\n")
        sys.stdin.readline()  # scanned while blocked here
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
