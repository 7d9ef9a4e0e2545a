"""The keyring against bare libsodium: unsealing 100,000 keys, and operation rates.

Two figures, each against a bare libsodium loop measured in the same run, in
the same process, with keys in the same kind of memory (memfd_secret slots):

* **unseal**: ``Keyring.open`` on a SQLite store holding ``--keys`` Ed25519
  keys (64-byte secret keys, each sealed with XChaCha20-Poly1305 under the
  KEK, associated data binding store id, name, version and type).  The
  figure covers everything a restart does: reading the store, allocating a
  slot per key, decrypting each record straight into its slot, checking its
  public key.  The peer is a Python loop of bare
  ``crypto_aead_xchacha20poly1305_ietf_decrypt`` calls over as many 64-byte
  records (same associated-data length) into one buffer: the cryptographic
  floor of the same work.  The store is built once per run in a temporary
  directory (records sealed in place and inserted in one transaction), or
  reused with ``--store-dir``.
* **operations**: Ed25519 sign (64 B), XChaCha20-Poly1305 decrypt (1 KiB),
  X25519 sealed-box decrypt (32 B) and HMAC-SHA-256 (64 B) through the
  keyring's public methods (name lookup, type check, read lock, framing),
  against the bare cffi call on a key in a slot of the same allocator, with
  preallocated output buffers.

Figures are medians over rounds; ratios are medians of per-round ratios
(``benchmarks/_measure.py``).  Run::

    python -m benchmarks.bench_keyring                  # about 1 minute
    python -m benchmarks.bench_keyring --keys 10000 --rounds 3 --seconds 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from benchmarks._measure import PeerMissing, Run, median, throughput
from secretvault.api import framing
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.api.framing import Kind
from secretvault.backends import MemfdSecretBackend, Slot, SlotAllocator
from secretvault.backends import _sodium as na
from secretvault.vault import crypto
from secretvault.vault.crypto import KeyType
from secretvault.vault.keyring import Keyring
from secretvault.vault.sealing import (
    Kek,
    UnsealSource,
    create_key_file,
    row_mac_message,
    version_ad,
    version_digest,
)
from secretvault.vault.store import SQLiteStore

KEY_FILE = "unseal.key"
STORE_FILE = "keys.sqlite3"
SIGN_MESSAGE = bytes(range(64))
AEAD_PLAINTEXT = bytes(i % 251 for i in range(1024))
SEAL_PAYLOAD = bytes(range(32))
MAC_MESSAGE = bytes(range(64))


@dataclass
class Pair:
    """One figure and its bare-libsodium peer, round by round."""

    label: str
    unit: str
    vault: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)

    def ratio(self) -> float:
        return median([v / b for v, b in zip(self.vault, self.bare, strict=True) if b > 0])


def _allocator() -> SlotAllocator:
    try:
        return SlotAllocator(MemfdSecretBackend())
    except SecretMemoryUnavailable as e:
        raise PeerMissing(f"memfd_secret unavailable: {e}") from e


# --- the 100,000-key store ------------------------------------------------------


def _name(i: int) -> str:
    return f"bench/k{i:06d}"


def build_store(directory: str, keys: int) -> float:
    """A store of ``keys`` sealed Ed25519 keys; returns seconds taken.

    The store is initialised by the keyring itself (store id, KEK check,
    import key); the records are then sealed here exactly as
    ``Keyring.create`` seals them (same KEK, same associated data, same row
    MAC) and
    inserted in one transaction, which avoids 100,000 fsynced commits.
    """
    t0 = time.perf_counter()
    key_file = os.path.join(directory, KEY_FILE)
    alloc = _allocator()
    try:
        create_key_file(key_file, alloc)
        source = UnsealSource(key_file=key_file)
        store = SQLiteStore(os.path.join(directory, STORE_FILE))
        Keyring.open(alloc, store, source).close()
        store_id = store.get_meta("store_id")
        store.close()
        assert store_id is not None
        kek = Kek.derive(alloc, source, None)
        row_key = kek.row_mac_key(alloc)
        now = time.time()
        key_rows = []
        version_rows = []
        with alloc.allocate(crypto.SLOT_BYTES[KeyType.ED25519]) as slot:
            for i in range(keys):
                name = _name(i)
                public = crypto.generate(KeyType.ED25519, slot)
                nonce, sealed = kek.seal(slot, 64, version_ad(store_id, name, 1, "ed25519"))
                digest = version_digest(1, now, public, nonce, sealed)
                mac = row_key.mac(row_mac_message(store_id, name, "ed25519", now, 1, 1, {},
                                                  [(1, digest)]))
                key_rows.append((name, "ed25519", now, "{}", 1, 1, mac))
                version_rows.append((name, 1, now, public, nonce, sealed))
        row_key.close()
        kek.close()
    finally:
        alloc.close()
    db = sqlite3.connect(os.path.join(directory, STORE_FILE))
    with db:
        db.executemany(
            "INSERT INTO keys (name, type, created, labels, primary_version, "
            "min_decryption_version, row_mac) VALUES (?, ?, ?, ?, ?, ?, ?)",
            key_rows,
        )
        db.executemany(
            "INSERT INTO key_versions (name, version, created, public_key, nonce, sealed) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            version_rows,
        )
    db.close()
    return time.perf_counter() - t0


def unseal_once(directory: str, expect: int) -> tuple[float, float]:
    """(seconds for Keyring.open, of which reading the store) on a fresh allocator."""
    alloc = _allocator()
    store = SQLiteStore(os.path.join(directory, STORE_FILE))
    try:
        t0 = time.perf_counter()
        rows = sum(len(r.versions) for r in store.load())
        t_load = time.perf_counter() - t0
        source = UnsealSource(key_file=os.path.join(directory, KEY_FILE))
        t0 = time.perf_counter()
        ring = Keyring.open(alloc, store, source)
        t_open = time.perf_counter() - t0
        try:
            keys = ring.list()
            damaged = sum(1 for k in keys for v in k.versions if v.damaged)
            if len(keys) != expect or rows != expect or damaged:
                raise AssertionError(
                    f"store holds {len(keys)} keys ({damaged} damaged), expected {expect}"
                )
            # one of them works, and is the key the store says it is
            _, token = ring.sign(_name(expect // 2), b"check")
            if not ring.verify(_name(expect // 2), b"check", token):
                raise AssertionError("an unsealed key does not sign")
        finally:
            ring.close()
    finally:
        store.close()
        alloc.close()
    return t_open, t_load


@contextmanager
def bare_records(keys: int, ad_len: int) -> Iterator[Callable[[], float]]:
    """A timer of the bare loop: decrypt ``keys`` sealed 64-byte records."""
    alloc = _allocator()
    try:
        key = alloc.allocate(32)
        na.randombytes_buf(key.ptr, 32)
        ad = bytes(ad_len)
        records = []
        with alloc.allocate(64) as plain:
            for _ in range(keys):
                na.randombytes_buf(plain.ptr, 64)
                nonce = na.random_bytes(na.AEAD_XCHACHA_NPUBBYTES)
                sealed = na.aead_xchacha_encrypt_from(key.ptr, nonce, plain.ptr, 64, ad)
                records.append((nonce, sealed))
        out = alloc.allocate(64)
        decrypt = na.lib.crypto_aead_xchacha20poly1305_ietf_decrypt
        null = na.NULL
        kptr = key.ptr
        optr = out.ptr

        def run() -> float:
            t0 = time.perf_counter()
            for nonce, sealed in records:
                if decrypt(optr, null, null, sealed, 80, ad, ad_len, nonce, kptr) != 0:
                    raise AssertionError("bare decrypt failed")
            return time.perf_counter() - t0

        yield run
        out.free()
        key.free()
    finally:
        alloc.close()


# --- operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpForm:
    label: str
    vault: Run
    bare: Run


def operation_forms(ring: Keyring, alloc: SlotAllocator) -> list[OpForm]:
    """Keyring calls and their bare libsodium loops, each checked once."""
    lib, null = na.lib, na.NULL
    for name, kind in (("sig", "ed25519"), ("enc", "xchacha20-poly1305"),
                       ("box", "x25519"), ("mac", "hmac-sha256")):
        ring.create(name, kind)

    # vault side: tokens as a client would send them
    enc_token = ring.encrypt("enc", AEAD_PLAINTEXT)[1]
    box_token = framing.frame(
        Kind.SEALED_BOX, 1, na.crypto_box_seal(SEAL_PAYLOAD, ring.public_key("box"))
    )
    assert ring.decrypt("enc", enc_token)[1] == AEAD_PLAINTEXT
    assert ring.decrypt("box", box_token)[1] == SEAL_PAYLOAD
    assert ring.verify("sig", SIGN_MESSAGE, ring.sign("sig", SIGN_MESSAGE)[1])
    assert ring.verify_mac("mac", MAC_MESSAGE, ring.mac("mac", MAC_MESSAGE)[1])

    # bare side: keys in slots of the same allocator, outputs preallocated
    slots: list[Slot] = []

    def slot(n: int) -> Slot:
        s = alloc.allocate(n)
        slots.append(s)
        return s

    sign_sk = slot(64)
    sign_pk = na.crypto_sign_keypair(sign_sk.ptr)
    sig_out = na.ffi.new("unsigned char[64]")
    aead_key = slot(32)
    na.randombytes_buf(aead_key.ptr, 32)
    nonce = na.random_bytes(24)
    aead_ct = na.aead_xchacha_encrypt(aead_key.ptr, nonce, AEAD_PLAINTEXT, b"")
    aead_out = na.ffi.new("unsigned char[]", len(AEAD_PLAINTEXT))
    box_sk = slot(32)
    na.randombytes_buf(box_sk.ptr, 32)
    box_pk = na.crypto_scalarmult_base(box_sk.ptr)
    box_ct = na.crypto_box_seal(SEAL_PAYLOAD, box_pk)
    box_out = na.ffi.new("unsigned char[]", len(SEAL_PAYLOAD))
    mac_key = slot(32)
    na.randombytes_buf(mac_key.ptr, 32)
    mac_state = slot(na.HMACSHA256_STATEBYTES)
    mac_out = na.ffi.new("unsigned char[32]")
    sk, ak, bk, mk, ms = sign_sk.ptr, aead_key.ptr, box_sk.ptr, mac_key.ptr, mac_state.ptr

    assert lib.crypto_sign_detached(sig_out, null, SIGN_MESSAGE, 64, sk) == 0
    assert na.crypto_sign_verify_detached(bytes(sig_out), SIGN_MESSAGE, sign_pk)
    assert lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        aead_out, null, null, aead_ct, len(aead_ct), b"", 0, nonce, ak) == 0
    assert lib.crypto_box_seal_open(box_out, box_ct, len(box_ct), box_pk, bk) == 0

    def v_sign(n: int) -> None:
        for _ in range(n):
            ring.sign("sig", SIGN_MESSAGE)

    def b_sign(n: int) -> None:
        for _ in range(n):
            lib.crypto_sign_detached(sig_out, null, SIGN_MESSAGE, 64, sk)

    def v_decrypt(n: int) -> None:
        for _ in range(n):
            ring.decrypt("enc", enc_token)

    def b_decrypt(n: int) -> None:
        clen = len(aead_ct)
        for _ in range(n):
            lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
                aead_out, null, null, aead_ct, clen, b"", 0, nonce, ak)

    def v_box(n: int) -> None:
        for _ in range(n):
            ring.decrypt("box", box_token)

    def b_box(n: int) -> None:
        clen = len(box_ct)
        for _ in range(n):
            lib.crypto_box_seal_open(box_out, box_ct, clen, box_pk, bk)

    def v_mac(n: int) -> None:
        for _ in range(n):
            ring.mac("mac", MAC_MESSAGE)

    def b_mac(n: int) -> None:
        for _ in range(n):
            lib.crypto_auth_hmacsha256_init(ms, mk, 32)
            lib.crypto_auth_hmacsha256_update(ms, MAC_MESSAGE, 64)
            lib.crypto_auth_hmacsha256_final(ms, mac_out)

    return [
        OpForm("Ed25519 sign, 64 B", v_sign, b_sign),
        OpForm("XChaCha20-Poly1305 decrypt, 1 KiB", v_decrypt, b_decrypt),
        OpForm("X25519 sealed-box decrypt, 32 B", v_box, b_box),
        OpForm("HMAC-SHA-256, 64 B", v_mac, b_mac),
    ]


# --- main ---------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.5, help="per form per round")
    p.add_argument("--store-dir", help="reuse (or build once) the store here")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = p.parse_args(argv)

    tmp = None
    directory = args.store_dir
    if directory is None:
        tmp = directory = tempfile.mkdtemp(prefix="bench-keyring-")
    try:
        return _run(args, directory)
    except PeerMissing as e:
        print(f"cannot run: {e}")
        return 2
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, directory: str) -> int:
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(os.path.join(directory, STORE_FILE)):
        built = build_store(directory, args.keys)
        print(f"built a store of {args.keys:,} sealed Ed25519 keys in {built:.1f} s "
              f"({directory})")
    ad_len = len(version_ad(bytes(16), _name(0), 1, "ed25519"))

    unseal = Pair(f"unseal {args.keys:,} keys", "s")
    load = []
    ops_pairs: list[Pair] = []
    alloc = _allocator()
    ops_dir = tempfile.mkdtemp(prefix="bench-keyring-ops-")
    store = SQLiteStore(os.path.join(ops_dir, STORE_FILE))
    key_file = os.path.join(ops_dir, KEY_FILE)
    create_key_file(key_file, alloc)
    ring = Keyring.open(alloc, store, UnsealSource(key_file=key_file))
    try:
        forms = operation_forms(ring, alloc)
        ops_pairs = [Pair(f.label, "ops/s") for f in forms]
        with bare_records(args.keys, ad_len) as bare_unseal:
            for r in range(args.rounds):
                t_open, t_load = unseal_once(directory, args.keys)
                unseal.vault.append(t_open)
                load.append(t_load)
                unseal.bare.append(bare_unseal())
                for form, pair in zip(forms, ops_pairs, strict=True):
                    pair.vault.append(throughput(form.vault, args.seconds))
                    pair.bare.append(throughput(form.bare, args.seconds))
                print(f"round {r + 1}/{args.rounds}: unseal {t_open:.2f} s "
                      f"(bare {unseal.bare[-1]:.3f} s)", flush=True)
    finally:
        ring.close()
        store.close()
        alloc.close()
        shutil.rmtree(ops_dir, ignore_errors=True)

    print()
    print(f"{'figure':<40} {'keyring':>12} {'bare libsodium':>15} {'ratio':>8}")
    print(f"{unseal.label + ' (s)':<40} {median(unseal.vault):>12.3f} "
          f"{median(unseal.bare):>15.3f} {unseal.ratio():>7.2f}x")
    print(f"{'  of which reading the store (s)':<40} {median(load):>12.3f}")
    rate_v = args.keys / median(unseal.vault)
    rate_b = args.keys / median(unseal.bare)
    print(f"{'  keys unsealed per second':<40} {_fmt(rate_v):>12} {_fmt(rate_b):>15}")
    for pair in ops_pairs:
        print(f"{pair.label + ' (ops/s)':<40} {_fmt(median(pair.vault)):>12} "
              f"{_fmt(median(pair.bare)):>15} {pair.ratio():>7.2f}x")
    print(f"\nmedians over {args.rounds} rounds; ratio = median of per-round keyring/bare "
          "(for the unseal time, higher is slower; for rates, lower is slower)")
    if args.json:
        print(json.dumps({
            "keys": args.keys,
            "rounds": args.rounds,
            "unseal_s": {"keyring": median(unseal.vault), "bare": median(unseal.bare),
                         "ratio": unseal.ratio(), "store_read": median(load)},
            "ops_per_s": {p.label: {"keyring": median(p.vault), "bare": median(p.bare),
                                    "ratio": p.ratio()} for p in ops_pairs},
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
