"""secretvault: keys held only in Linux secret memory, served over gRPC.

The one import root.  Each room is a top-level folder of the repository,
linked here under its own name (``secretvault/<room> -> ../<room>``), so the
installed package, an editable install, mypy and pytest all see the same
tree with no import hook:

* :mod:`secretvault.api` — the ground floor everyone shares: the error tree,
  tokens and their framing, public-key encodings, default paths and the
  generated wire code;
* :mod:`secretvault.backends` — secret memory: memfd_secret, the two models,
  the slot allocator, accounting; depends on ``api`` only;
* :mod:`secretvault.vault` — the server: keyring, sealing, stores, the gRPC
  edge and servicers, and the ``secretvault`` command;
* :mod:`secretvault.clients` — the Python client library (asyncio, and the
  sync client generated from it); depends on ``api`` only.

``docs/architecture.md`` draws the rooms and what each may import.
"""

__version__ = "0.1.0"
