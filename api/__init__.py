"""The API shared by the server, the backends and the clients.

Nothing here knows about secret memory, the keyring or gRPC channels; every
other room imports from here and this room imports from no other:

* :mod:`~secretvault.api.errors` — the one error tree, each class naming its
  gRPC status, and the trailing-metadata key that carries its name;
* :mod:`~secretvault.api.framing` — the token formats (signatures, MACs,
  ciphertexts) and their version-carrying headers;
* :mod:`~secretvault.api.pubkeys` — public-key encodings (raw, PEM, OpenSSH,
  JWK) and the key types;
* :mod:`~secretvault.api.paths` — default locations (the socket);
* :mod:`~secretvault.api.limits` — the server's default limits on one request;
* ``secretvault.api._proto`` — the generated wire code (``scripts/gen-proto``).
"""
