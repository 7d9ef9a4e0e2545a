"""The embedded keyring's public API, over memfd_secret and over the page model.

Every test opens a real keyring on a real SQLite store in ``tmp_path``.  The
process hardening that opening does (no core dumps, not dumpable) would
outlive the test and change the pytest process for every later test, so here
it is recorded instead of applied (``hardened`` asserts it was asked for);
tests/integration/test_embedded.py checks its real effect in a process of
its own.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretvault import embedded
from secretvault.api.errors import StoreInUse
from secretvault.clients import Key, PublicKey, local
from secretvault.embedded import (
    DecryptionFailed,
    KeyExists,
    KeyNotFound,
    Keyring,
    KeyringClosed,
    VersionNotFound,
    WrongKeyType,
    open_keyring,
)
from secretvault.vault import app
from secretvault.vault.storelock import StoreLock

BACKENDS = [pytest.param("memfd_secret", marks=pytest.mark.memfd_secret),
            pytest.param("page-model")]


@pytest.fixture
def hardened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(app, "harden_process", lambda: calls.append(os.getpid()))
    return calls


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> embedded.Backend:
    b: embedded.Backend = request.param
    return b


@pytest.fixture
def ring(tmp_path: Path, backend: embedded.Backend, hardened: list[int]) -> Iterator[Keyring]:
    r = open_keyring(tmp_path / "data", backend=backend)
    yield r
    r.close()


def test_opening_hardens_the_process_and_makes_a_key_file(
        tmp_path: Path, backend: embedded.Backend, hardened: list[int]) -> None:
    with open_keyring(tmp_path / "data", backend=backend) as r:
        assert hardened == [os.getpid()]
        assert (tmp_path / "data" / "unseal.key").stat().st_mode & 0o777 == 0o600
        assert r.stats().backend == backend
        assert r.stats().protection == ("secretmem" if backend == "memfd_secret" else "model")


def test_every_operation_works_in_place(ring: Keyring) -> None:
    signer = ring.create_key("app/signer", "ed25519", {"team": "a"})
    assert isinstance(signer, Key)
    assert (signer.name, signer.type, signer.primary_version, signer.labels) == (
        "app/signer", "ed25519", 1, {"team": "a"})
    token = ring.sign("app/signer", b"hello")
    assert ring.verify("app/signer", b"hello", token)
    assert not ring.verify("app/signer", b"hullo", token)
    # the token is the server's: the client's local verify accepts it
    pub = ring.public_key("app/signer")
    assert isinstance(pub, PublicKey) and len(pub.raw) == 32 and pub.data == pub.raw
    assert pub.verify(b"hello", token)
    assert ring.public_key("app/signer", format="openssh").data.startswith(b"ssh-ed25519 ")

    ring.create_key("app/box", "x25519")
    sealed = ring.public_key("app/box").encrypt(b"to the box")
    assert ring.decrypt("app/box", sealed) == b"to the box"

    ring.create_key("app/aead", "xchacha20-poly1305")
    ct = ring.encrypt("app/aead", b"secret", b"ad")
    assert ring.decrypt("app/aead", ct, b"ad") == b"secret"
    with pytest.raises(DecryptionFailed):
        ring.decrypt("app/aead", ct, b"other ad")

    ring.create_key("app/mac", "hmac-sha256")
    tag = ring.mac("app/mac", b"m")
    assert ring.verify_mac("app/mac", b"m", tag)
    assert not ring.verify_mac("app/mac", b"n", tag)

    assert [k.name for k in ring.list_keys("app/")] == [
        "app/aead", "app/box", "app/mac", "app/signer"]
    assert ring.get_key("app/mac").type == "hmac-sha256"


def test_import_rotate_and_delete(ring: Keyring) -> None:
    seed = bytearray(range(32))
    ring.import_key("imported", "ed25519", seed)
    raw = ring.public_key("imported").raw
    from nacl.signing import SigningKey  # the test's own copy of its known key

    assert raw == bytes(SigningKey(bytes(seed)).verify_key)

    old = ring.sign("imported", b"m")
    rotated = ring.rotate_key("imported")
    assert rotated.primary_version == 2
    assert [v.version for v in rotated.versions] == [1, 2]
    new = ring.sign("imported", b"m")
    assert local.signature_payload(new)[0] == 2
    assert ring.verify("imported", b"m", old) and ring.verify("imported", b"m", new)

    ring.delete_key_version("imported", 1)
    with pytest.raises(VersionNotFound):
        ring.verify("imported", b"m", old)
    ring.delete_key("imported")
    with pytest.raises(KeyNotFound):
        ring.sign("imported", b"m")


def test_errors_have_the_servers_names(ring: Keyring) -> None:
    ring.create_key("k", "ed25519")
    with pytest.raises(KeyExists, match="already exists"):
        ring.create_key("k", "ed25519")
    with pytest.raises(WrongKeyType):
        ring.encrypt("k", b"x")
    with pytest.raises(KeyNotFound):
        ring.get_key("nope")
    counts = {(o.operation, o.result): o.count for o in ring.stats().operations}
    assert counts[("create_key", "ok")] == 1
    assert counts[("create_key", "ALREADY_EXISTS")] == 1
    assert counts[("encrypt", "INVALID_ARGUMENT")] == 1
    assert counts[("get_key", "NOT_FOUND")] == 1


def test_stats_count_the_keys_in_secret_memory(ring: Keyring) -> None:
    before = ring.stats()
    for i in range(3):
        ring.create_key(f"s{i}", "ed25519")
    after = ring.stats()
    assert dict(after.keys_by_type)["ed25519"] == 3
    assert after.key_bytes > before.key_bytes
    assert after.pages_mapped >= 1


def test_keys_survive_reopening(tmp_path: Path, backend: embedded.Backend,
                                hardened: list[int]) -> None:
    with open_keyring(tmp_path / "data", backend=backend) as r:
        r.create_key("durable", "ed25519")
        token = r.sign("durable", b"m")
    with open_keyring(tmp_path / "data", backend=backend) as r:
        assert r.verify("durable", b"m", token)


def test_close_zeroes_and_refuses_later_calls(ring: Keyring) -> None:
    ring.create_key("k", "ed25519")
    ring.close()
    ring.close()  # idempotent
    assert ring.closed
    with pytest.raises(KeyringClosed, match="closed"):
        ring.sign("k", b"m")
    with pytest.raises(KeyringClosed):
        ring.stats()


def test_keyrings_share_a_store_but_a_first_start_is_alone(tmp_path: Path,
                                                          hardened: list[int]) -> None:
    """Contract change (the change feed): a store is no longer open in one
    process at a time.  Serving keyrings share it; only a first start (which
    makes the key file and the metadata) holds it alone."""
    with open_keyring(tmp_path / "data", backend="page-model") as one:
        one.create_key("k", "ed25519")
        with open_keyring(tmp_path / "data", backend="page-model") as two:
            assert two.sign("k", b"m")
    (tmp_path / "new").mkdir()
    first = StoreLock(str(tmp_path / "new" / "keys.sqlite3"), "a first start")
    try:
        with pytest.raises(StoreInUse, match=rf"pid {os.getpid()}: a first start"):
            open_keyring(tmp_path / "new", backend="page-model")
    finally:
        first.release()
    open_keyring(tmp_path / "new", backend="page-model").close()


def test_a_store_needs_its_unseal_material(tmp_path: Path, hardened: list[int]) -> None:
    with open_keyring(tmp_path / "data", backend="page-model") as r:
        r.create_key("k", "ed25519")
    os.unlink(tmp_path / "data" / "unseal.key")
    with pytest.raises(embedded.InvalidArgument, match="no unseal material"):
        open_keyring(tmp_path / "data", backend="page-model")


@pytest.mark.memfd_secret
def test_a_forked_child_cannot_read_or_use_the_keys(tmp_path: Path, hardened: list[int]) -> None:
    """The child has no mapping where the keys are (MADV_DONTFORK): its
    inherited keyring refuses, and a raw read of the address faults."""
    with open_keyring(tmp_path / "data") as r:
        r.create_key("k", "ed25519")
        maps = Path("/proc/self/maps").read_text()
        secret = [line for line in maps.splitlines() if "secretmem" in line]
        assert secret, "the keyring's region is a secretmem mapping"
        start = int(secret[0].split("-")[0], 16)

        def child(body: str) -> int:
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                code = 1
                try:
                    if body == "use":
                        try:
                            r.sign("k", b"m")
                        except KeyringClosed as e:
                            code = 0 if "fork" in str(e) else 2
                    elif body == "maps":
                        mine = Path("/proc/self/maps").read_text()
                        code = 0 if "secretmem" not in mine else 3
                    else:
                        import ctypes
                        import faulthandler

                        faulthandler.disable()  # the fault is the expected end
                        ctypes.string_at(start, 32)  # faults: nothing mapped there
                        code = 4
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            return status

        assert os.waitstatus_to_exitcode(child("use")) == 0
        assert os.waitstatus_to_exitcode(child("maps")) == 0
        assert os.waitstatus_to_exitcode(child("read")) == -signal.SIGSEGV
        # the parent's keyring is untouched by its children
        assert r.verify("k", b"m", r.sign("k", b"m"))
    # and the children's exits did not keep the store: it opens again
    open_keyring(tmp_path / "data").close()


def test_threads_share_one_keyring(ring: Keyring) -> None:
    """Signers on several threads while another rotates and deletes: every
    token verifies, the deleted key is refused by name, the counts add up."""
    import threading

    ring.create_key("shared", "ed25519")
    ring.create_key("doomed", "hmac-sha256")
    errors: list[BaseException] = []
    per_thread = 300

    def signer() -> None:
        try:
            for i in range(per_thread):
                msg = i.to_bytes(4, "big")
                assert ring.verify("shared", msg, ring.sign("shared", msg))
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=signer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        ring.rotate_key("shared")
    ring.mac("doomed", b"m")
    ring.delete_key("doomed")
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(KeyNotFound):
        ring.mac("doomed", b"m")
    counts = {(o.operation, o.result): o.count for o in ring.stats().operations}
    assert counts[("sign", "ok")] == counts[("verify", "ok")] == 4 * per_thread
    assert counts[("rotate_key", "ok")] == 5
    assert ring.get_key("shared").primary_version == 6


def test_a_token_of_the_wrong_length_is_malformed(ring: Keyring) -> None:
    """A correct header on a payload that is no signature (64 bytes) or MAC
    (32) is refused, as the server refuses it, not answered 'invalid'."""
    from secretvault.api import framing
    from secretvault.api.errors import MalformedCiphertext

    ring.create_key("sig", "ed25519")
    ring.create_key("mac", "hmac-sha256")
    for n in (0, 33, 63, 65):
        with pytest.raises(MalformedCiphertext, match="64 bytes after its 7-byte header"):
            ring.verify("sig", b"m", framing.frame(framing.Kind.SIGNATURE, 1, bytes(n)))
    for n in (0, 31, 33, 64):
        with pytest.raises(MalformedCiphertext, match="32 bytes after its 7-byte header"):
            ring.verify_mac("mac", b"m", framing.frame(framing.Kind.MAC, 1, bytes(n)))
    counts = {(o.operation, o.result): o.count for o in ring.stats().operations}
    assert counts[("verify", "INVALID_ARGUMENT")] == 4
    assert counts[("verify_mac", "INVALID_ARGUMENT")] == 4


@pytest.mark.parametrize("backend", ["page-model"])
def test_a_living_forked_child_does_not_keep_the_store(
        tmp_path: Path, backend: embedded.Backend, hardened: list[int]) -> None:
    """flock belongs to the open file, which a fork shares: a child that lives
    on must not keep the store once the parent closes (the at-fork hook closes
    the child's copy of the descriptor)."""
    r = open_keyring(tmp_path / "data", backend=backend)
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: alive until the parent says so)
        os.close(hold_w)
        os.read(hold_r, 1)
        os._exit(0)
    os.close(hold_r)
    try:
        r.close()
        open_keyring(tmp_path / "data", backend=backend).close()  # not StoreInUse
    finally:
        os.close(hold_w)
        os.waitpid(pid, 0)
