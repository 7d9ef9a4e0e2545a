"""The child of the durability test: create keys until killed.

``python -m tests.integration.create_loop DATA_DIR ROUND`` opens the vault
the way the server does (``open_vault``: the test lane's backend, memfd_secret
or page-model, ``tests/_lane.py``; SQLite store; an unseal key file created
on the very first start), prints ``READY``, then
creates keys of every type in a tight loop, rotating every fourth one.  A
line is printed only after the call returned, i.e. after the transaction
committed:

    ACK <name> <type> <public key hex or ->
    ROT <name> <version> <public key hex or ->

The parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import sys

from secretvault.vault.app import VaultConfig, open_vault
from tests import _lane

TYPES = ("ed25519", "xchacha20-poly1305", "hmac-sha256", "x25519")


def main() -> int:
    data_dir, round_no = sys.argv[1], int(sys.argv[2])
    vault = open_vault(VaultConfig(data_dir=data_dir, backend=_lane.server_backend()))
    ring = vault.keyring
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    i = 0
    while True:
        kind = TYPES[i % len(TYPES)]
        # the round in the name: a key committed but not acknowledged before
        # the last kill cannot collide with this round's names
        name = f"r{round_no:03d}/k{i:06d}"
        info = ring.create(name, kind)
        pub = info.versions[0].public_key
        out.write(f"ACK {name} {kind} {pub.hex() if pub else '-'}\n")
        out.flush()
        if i % 4 == 3:
            info = ring.rotate(name)
            pub = info.versions[-1].public_key
            out.write(f"ROT {name} {info.primary_version} {pub.hex() if pub else '-'}\n")
            out.flush()
        i += 1


if __name__ == "__main__":
    raise SystemExit(main())
