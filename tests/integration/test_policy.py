"""The policy matrix: identity x operation x key pattern, on a real server.

Every identity has its own Unix listener (the design in
docs/access-control.md).  For every cell the expected decision comes from
the grants written below, independently of the server's code; a denied cell
must answer PERMISSION_DENIED, leave every key exactly as it was and be
audited as denied; an allowed cell must not be denied.  Crypto operations
are also tried through Batch and Stream.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from secretvault.api._proto.secretvault.v1 import crypto_pb2, keys_pb2, stats_pb2
from secretvault.vault.policy import Policy, PolicyError
from secretvault.vault.server import VaultServer
from tests.integration._support import (
    AEAD,
    ED25519,
    HMAC,
    Stubs,
    cleanup,
    short_dir,
    start,
    stubs,
    wrap,
)

POLICY = """
[identities.reader]
[[identities.reader.sockets]]
path = "{base}/reader.sock"
[[identities.reader.allow]]
operations = ["get_key", "get_public_key", "list_keys"]
keys = ["team/*"]

[identities.signer]
[[identities.signer.sockets]]
path = "{base}/signer.sock"
[[identities.signer.allow]]
operations = ["sign", "verify", "get_public_key"]
keys = ["team/*"]

[identities.operator]
[[identities.operator.sockets]]
path = "{base}/operator.sock"
[[identities.operator.allow]]
operations = ["*"]
keys = ["team/*"]

[identities.watcher]
[[identities.watcher.sockets]]
path = "{base}/watcher.sock"
[[identities.watcher.allow]]
operations = ["get_stats", "watch_stats"]

[identities.stranger]
[[identities.stranger.sockets]]
path = "{base}/stranger.sock"
"""

ALL = {"create_key", "import_key", "get_import_key", "get_key", "get_public_key", "list_keys",
       "rotate_key", "set_min_decryption_version", "delete_key_version", "delete_key",
       "sign", "verify", "encrypt", "decrypt", "mac", "verify_mac", "get_stats",
       "watch_stats"}
KEYLESS = {"get_import_key", "list_keys", "get_stats", "watch_stats"}
CRYPTO = ["sign", "verify", "encrypt", "decrypt", "mac", "verify_mac"]

#: the oracle: what each identity was granted above (operations, key prefix)
GRANTS: dict[str, tuple[set[str], str]] = {
    "owner": (ALL, ""),
    "reader": ({"get_key", "get_public_key", "list_keys"}, "team/"),
    "signer": ({"sign", "verify", "get_public_key"}, "team/"),
    "operator": (ALL, "team/"),
    "watcher": ({"get_stats", "watch_stats"}, "team/"),
    "stranger": (set(), "team/"),
}
PREFIXES = ["team", "other"]


def expected(identity: str, op: str, prefix: str) -> bool:
    ops, allowed_prefix = GRANTS[identity]
    return op in ops and (op in KEYLESS or f"{prefix}/".startswith(allowed_prefix))


class World:
    def __init__(self, server: VaultServer, base: str) -> None:
        self.server = server
        self.base = base
        self.owner = stubs(server.config.vault.socket)
        self.ids = {name: stubs(f"{base}/{name}.sock") for name in GRANTS if name != "owner"}
        self.ids["owner"] = self.owner
        self.ipk = self.owner.keys.GetImportKey(keys_pb2.GetImportKeyRequest()).public_key
        self.n = itertools.count()
        for p in PREFIXES:
            self.owner.create(f"{p}/ed", ED25519)
            self.owner.create(f"{p}/aead", AEAD)
            self.owner.create(f"{p}/mac", HMAC)
            self.owner.create(f"{p}/minv", AEAD)
            self.owner.keys.RotateKey(keys_pb2.RotateKeyRequest(name=f"{p}/minv"))

    def snapshot(self) -> bytes:
        keys = self.owner.keys.ListKeys(keys_pb2.ListKeysRequest())
        return keys.SerializeToString(deterministic=True)

    def last_audit(self) -> dict[str, Any]:
        with open(self.server.audit.path or "", encoding="ascii") as f:
            return json.loads(f.readlines()[-1])

    # each operation: the owner prepares what it needs, then returns the call,
    # so a snapshot can be taken between the two

    def prepare(self, op: str, prefix: str, form: str) -> Callable[[Stubs], Any]:
        o = self.owner
        k = f"{prefix}/"
        n = next(self.n)
        if op in CRYPTO:
            request = self._crypto_request(op, k)
            operation = crypto_pb2.Operation(id=7, **{op: request})
            if form == "batch":
                return lambda w: w.crypto.Batch(crypto_pb2.BatchRequest(operations=[operation]))
            if form == "stream":
                return lambda w: list(w.crypto.Stream(iter([operation])))
            method = {"sign": "Sign", "verify": "Verify", "encrypt": "Encrypt",
                      "decrypt": "Decrypt", "mac": "Mac", "verify_mac": "VerifyMac"}[op]
            return lambda w: getattr(w.crypto, method)(request)
        if op == "create_key":
            return lambda w: w.keys.CreateKey(keys_pb2.CreateKeyRequest(name=f"{k}new{n}",
                                                                        type=HMAC))
        if op == "import_key":
            wrapped = wrap(self.ipk, os.urandom(32))
            return lambda w: w.keys.ImportKey(keys_pb2.ImportKeyRequest(
                name=f"{k}imp{n}", type=AEAD, wrapped_key=wrapped))
        if op == "get_import_key":
            return lambda w: w.keys.GetImportKey(keys_pb2.GetImportKeyRequest())
        if op == "get_key":
            return lambda w: w.keys.GetKey(keys_pb2.GetKeyRequest(name=f"{k}ed"))
        if op == "get_public_key":
            return lambda w: w.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(name=f"{k}ed"))
        if op == "list_keys":
            return lambda w: w.keys.ListKeys(keys_pb2.ListKeysRequest())
        if op == "rotate_key":
            return lambda w: w.keys.RotateKey(keys_pb2.RotateKeyRequest(name=f"{k}mac"))
        if op == "set_min_decryption_version":
            o.keys.RotateKey(keys_pb2.RotateKeyRequest(name=f"{k}minv"))
            primary = o.keys.GetKey(keys_pb2.GetKeyRequest(name=f"{k}minv")).primary_version
            return lambda w: w.keys.SetMinDecryptionVersion(
                keys_pb2.SetMinDecryptionVersionRequest(name=f"{k}minv", version=primary))
        if op == "delete_key_version":
            o.create(f"{k}dv{n}", HMAC)
            o.keys.RotateKey(keys_pb2.RotateKeyRequest(name=f"{k}dv{n}"))
            return lambda w: w.keys.DeleteKeyVersion(
                keys_pb2.DeleteKeyVersionRequest(name=f"{k}dv{n}", version=1))
        if op == "delete_key":
            o.create(f"{k}del{n}", HMAC)
            return lambda w: w.keys.DeleteKey(keys_pb2.DeleteKeyRequest(name=f"{k}del{n}"))
        if op == "get_stats":
            return lambda w: w.stats.GetStats(stats_pb2.GetStatsRequest())
        if op == "watch_stats":
            def watch(w: Stubs) -> Any:
                it = w.stats.WatchStats(stats_pb2.WatchStatsRequest(interval_seconds=0.1))
                try:
                    return next(it)
                finally:
                    it.cancel()
            return watch
        raise AssertionError(op)

    def _crypto_request(self, op: str, k: str) -> Any:
        o = self.owner
        if op == "sign":
            return crypto_pb2.SignRequest(key=f"{k}ed", message=b"m")
        if op == "verify":
            sig = o.sign(f"{k}ed").signature
            return crypto_pb2.VerifyRequest(key=f"{k}ed", message=b"m", signature=sig)
        if op == "encrypt":
            return crypto_pb2.EncryptRequest(key=f"{k}aead", plaintext=b"p")
        if op == "decrypt":
            ct = o.crypto.Encrypt(crypto_pb2.EncryptRequest(key=f"{k}aead",
                                                            plaintext=b"p")).ciphertext
            return crypto_pb2.DecryptRequest(key=f"{k}aead", ciphertext=ct)
        if op == "mac":
            return crypto_pb2.MacRequest(key=f"{k}mac", message=b"m")
        mac = o.crypto.Mac(crypto_pb2.MacRequest(key=f"{k}mac", message=b"m")).mac
        return crypto_pb2.VerifyMacRequest(key=f"{k}mac", message=b"m", mac=mac)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = short_dir()
    path = os.path.join(base, "policy.toml")
    with open(path, "w") as f:
        f.write(POLICY.format(base=base))
    try:
        with start(base, policy_file=path) as server:
            yield World(server, base)
    finally:
        cleanup(base)


CELLS = [(who, op, prefix, "unary") for who in GRANTS for op in sorted(ALL)
         for prefix in PREFIXES]
CELLS += [(who, op, prefix, form) for who in GRANTS for op in CRYPTO for prefix in PREFIXES
          for form in ("batch", "stream")]


@pytest.mark.parametrize("who,op,prefix,form", CELLS,
                         ids=["-".join(c) for c in CELLS])
def test_policy_cell(world: World, who: str, op: str, prefix: str, form: str) -> None:
    call = world.prepare(op, prefix, form)
    before = world.snapshot()
    if not expected(who, op, prefix):
        with pytest.raises(grpc.RpcError) as info:
            call(world.ids[who])
        e = info.value
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
        assert dict(e.trailing_metadata() or ())["secretvault-error"] == "PermissionDenied"
        # an identity with no crypto grant at all cannot open a Stream: it is
        # refused before any operation is read
        refused_open = form == "stream" and not GRANTS[who][0] & set(CRYPTO)
        denied = "open a Stream" if refused_open else op
        assert f"identity {who!r} may not {denied}" in (e.details() or "")
        line = world.last_audit()
        assert (line["identity"], line["operation"], line["result"]) == \
            (who, "stream" if refused_open else op, "PERMISSION_DENIED")
        assert world.snapshot() == before, "a denied call changed the keys"
        return
    try:
        result = call(world.ids[who])
    except grpc.RpcError as e:
        raise AssertionError(f"{who} was refused {op} on {prefix}/: {e.code()} "
                             f"{e.details()}") from None
    if form == "batch":
        assert result.results[0].WhichOneof("result") == op, result
    elif form == "stream":
        assert result[0].WhichOneof("result") == op, result
    if op == "list_keys" and who != "owner":
        # the listing shows only the names the identity's list_keys grants match
        names = [k.name for k in result.keys]
        assert names and all(n.startswith(GRANTS[who][1]) for n in names)


def test_policy_file_mistakes_are_refused() -> None:
    from secretvault.vault.policy import PolicyError
    bad = [
        {"identities": {"owner": {}}},  # reserved
        {"identities": {"x": {"allow": [{"operations": ["sing"], "keys": ["*"]}]}}},
        {"identities": {"x": {"allow": [{"operations": ["sign"]}]}}},  # no key patterns
        {"identities": {"x": {"alow": []}}},  # typo
        {"identities": {"x": {"sockets": [{"path": "relative.sock"}]}}},
        {"identities": {"x": {"sockets": [{"path": "/a.sock", "mode": "0770"}]}}},  # no group
        {"identities": {"x": {"sockets": [{"path": "/a.sock", "mode": "0755"}]}}},  # exec bits
        {"identities": {"x": {"tls": ["a"]}, "y": {"tls": ["a"]}}},  # one cert, two names
        {"grants": {}},
    ]
    for doc in bad:
        with pytest.raises(PolicyError):
            Policy.from_dict(doc)
    p = Policy.from_dict({"identities": {"x": {"allow": [{"operations": ["get_stats"]}]}}})
    assert p.allows("x", "get_stats", None) and not p.allows("x", "sign", "k")
    assert p.allows("owner", "delete_key", "anything") and not p.allows("y", "get_stats", None)


def test_the_example_policy_is_valid() -> None:
    import tomllib
    from pathlib import Path

    doc = tomllib.loads((Path(__file__).parents[2] / "docs" / "policy.example.toml")
                        .read_text())
    # the example names groups (ci, app, monitoring) this machine may not have
    for ident in doc["identities"].values():
        for sock in ident.get("sockets", []) + ident.get("agent_sockets", []):
            sock["group"] = os.getgid()
    p = Policy.from_dict(doc)
    assert [(s.path, s.identity) for s in p.agent_sockets] == [
        ("/run/secretvault/ci-agent/agent.sock", "ci-signer")]
    assert not p.ssh_agent_persist and not p.allows("ci-signer", "ssh_add_key", None)
    assert p.allows("ci-signer", "sign", "ci/release/a")
    assert not p.allows("ci-signer", "sign", "jwt/a")
    assert p.tls_identity("spiffe://example.org/ci/signer") == "ci-signer"
    assert p.tls_identity("token-issuer.internal") == "token-issuer"
    assert p.allows("app", "rotate_key", "app/data-key")
    assert not p.allows("app", "rotate_key", "app/other")
    assert p.allows("monitoring", "watch_stats", None)
    assert not p.allows("monitoring", "get_key", "app/data-key")
    assert len(p.sockets) == 3
    assert p.secret_memory("app") == 4096 and p.secret_memory("ci-signer") == 1 << 20


def test_agent_sockets_and_the_ssh_agent_table() -> None:
    p = Policy.from_dict({
        "ssh_agent": {"persist": True},
        "identities": {"dev": {
            "agent_sockets": [{"path": "/run/x/agent.sock", "mode": "0600"}],
            "allow": [{"operations": ["ssh_add_key", "sign"], "keys": ["dev/*"]}]}}})
    assert p.ssh_agent_persist
    assert [(s.path, s.identity) for s in p.agent_sockets] == [("/run/x/agent.sock", "dev")]
    assert p.sockets == ()  # agent sockets are not gRPC listeners
    assert p.allows("dev", "ssh_add_key", None) and not p.allows("dev", "ssh_remove_key", None)
    for bad, message in (
            ({"ssh_agent": {"persist": "yes"}}, "persist = true or false"),
            ({"ssh_agent": {"persist": False, "add": True}}, "unknown field"),
            ({"identities": {"dev": {"agent_sockets": [{"path": "relative"}]}}}, "absolute"),
            ({"identities": {"dev": {"agent_sockets": [{"path": "/a", "mode": "0660"}]}}},
             "needs a group"),
            ({"identities": {"dev": {"sockets": [{"path": "/a"}],
                                     "agent_sockets": [{"path": "/a"}]}}}, "more than one")):
        with pytest.raises(PolicyError, match=message):
            Policy.from_dict(bad)
