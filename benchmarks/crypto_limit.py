"""The crypto limit: libsodium in-process, on one core, no RPC.

Each operation runs through the same ``secretvault.backends._sodium`` pointer functions
the vault uses, twice: with the key in a secret-memory slot (a
:class:`secretvault.backends.SlotAllocator` over
:class:`secretvault.backends.MemfdSecretBackend`)
and with the key in an ordinary cffi buffer on the C heap.  Same code, same
messages, same process: the ratio isolates where the key lives.

Secret pages are removed from the kernel's direct map, but user space reads
them through its own page tables exactly like any other page, so libsodium
should see no difference; the ratio shows whether that holds.

Operations and sizes:

* Ed25519 sign of a 64-byte message (``crypto_sign_detached``);
* X25519 sealed-box open of a 32-byte payload (``crypto_box_seal_open``);
* XChaCha20-Poly1305 decrypt of 1 KiB (``crypto_aead_xchacha20poly1305_ietf_decrypt``);
* HMAC-SHA-256 of a 64-byte message, with the hash state (which holds the
  key's pads) in secret memory too, as the vault keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from benchmarks._measure import PeerMissing, Run
from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import MemfdSecretBackend, SlotAllocator, _sodium

SIGN_MESSAGE = bytes(range(64))
SEAL_PAYLOAD = bytes(range(32))
AEAD_PLAINTEXT = bytes(i % 251 for i in range(1024))
HMAC_MESSAGE = bytes(range(64))

#: (operation key, label) in table order
OPERATIONS: tuple[tuple[str, str], ...] = (
    ("ed25519_sign", "Ed25519 sign, 64 B"),
    ("sealed_box_open", "X25519 sealed-box open, 32 B"),
    ("xchacha_decrypt", "XChaCha20-Poly1305 decrypt, 1 KiB"),
    ("hmac_sha256", "HMAC-SHA-256, 64 B"),
)


@dataclass(frozen=True)
class Form:
    key: str  # e.g. "crypto.ed25519_sign.secret"
    label: str
    run: Run


Alloc = Callable[[int], _sodium.Ptr]


def _forms_for(where: str, alloc: Alloc) -> list[Form]:
    """Set up one key of each type with ``alloc`` and return the four forms."""
    sodium = _sodium
    # Ed25519: the seed is generated straight into the key's memory and the
    # 64-byte secret key derived beside it, as the keyring does
    seed = alloc(32)
    sodium.randombytes_buf(seed, 32)
    sign_sk = alloc(64)
    pk_buf = sodium.ffi.new("unsigned char[32]")
    sodium.crypto_sign_seed_keypair(pk_buf, sign_sk, seed)
    sodium.sodium_memzero(seed, 32)
    sign_pk = bytes(pk_buf)

    box_sk = alloc(32)
    sodium.randombytes_buf(box_sk, 32)
    box_pk = sodium.crypto_scalarmult_base(box_sk)
    sealed = sodium.crypto_box_seal(SEAL_PAYLOAD, box_pk)

    aead_key = alloc(32)
    sodium.randombytes_buf(aead_key, 32)
    nonce = sodium.random_bytes(sodium.AEAD_XCHACHA_NPUBBYTES)
    ciphertext = sodium.aead_xchacha_encrypt(aead_key, nonce, AEAD_PLAINTEXT, b"")

    mac_key = alloc(32)
    sodium.randombytes_buf(mac_key, 32)
    mac_state = alloc(sodium.HMACSHA256_STATEBYTES)

    # each form is checked once before it is timed: a benchmark of a broken
    # operation would be a figure about nothing
    sig = sodium.crypto_sign_detached(sign_sk, SIGN_MESSAGE)
    if not sodium.crypto_sign_verify_detached(sig, SIGN_MESSAGE, sign_pk):
        raise AssertionError("Ed25519 signature does not verify")
    if sodium.crypto_box_seal_open(sealed, box_pk, box_sk) != SEAL_PAYLOAD:
        raise AssertionError("sealed box did not round-trip")
    if sodium.aead_xchacha_decrypt(aead_key, nonce, ciphertext, b"") != AEAD_PLAINTEXT:
        raise AssertionError("XChaCha20-Poly1305 did not round-trip")
    if len(sodium.hmacsha256(mac_state, mac_key, 32, HMAC_MESSAGE)) != 32:
        raise AssertionError("HMAC-SHA-256 is not 32 bytes")

    sign = sodium.crypto_sign_detached
    seal_open = sodium.crypto_box_seal_open
    decrypt = sodium.aead_xchacha_decrypt
    hmac = sodium.hmacsha256

    def ed25519_sign(n: int) -> None:
        for _ in range(n):
            sign(sign_sk, SIGN_MESSAGE)

    def sealed_box_open(n: int) -> None:
        for _ in range(n):
            seal_open(sealed, box_pk, box_sk)

    def xchacha_decrypt(n: int) -> None:
        for _ in range(n):
            decrypt(aead_key, nonce, ciphertext, b"")

    def hmac_sha256(n: int) -> None:
        for _ in range(n):
            hmac(mac_state, mac_key, 32, HMAC_MESSAGE)

    runs = {
        "ed25519_sign": ed25519_sign,
        "sealed_box_open": sealed_box_open,
        "xchacha_decrypt": xchacha_decrypt,
        "hmac_sha256": hmac_sha256,
    }
    return [Form(f"crypto.{op}.{where}", f"{label}, key in {where} memory", runs[op])
            for op, label in OPERATIONS]


@contextmanager
def crypto_forms() -> Iterator[tuple[list[Form], list[Form]]]:
    """(forms with keys in secret memory, forms with keys in ordinary memory).

    Raises :class:`PeerMissing` where memfd_secret is unavailable: there is
    no secret-memory side to measure then, and the table says why.
    """
    try:
        allocator = SlotAllocator(MemfdSecretBackend())
    except SecretMemoryUnavailable as e:
        raise PeerMissing(f"memfd_secret unavailable: {e}") from e
    slots = []
    keep: list[object] = []  # cffi buffers are freed when collected

    def secret(n: int) -> _sodium.Ptr:
        slot = allocator.allocate(n)
        slots.append(slot)
        return slot.ptr

    def ordinary(n: int) -> _sodium.Ptr:
        buf = _sodium.ffi.new("unsigned char[]", n)
        keep.append(buf)
        return buf

    try:
        yield _forms_for("secret", secret), _forms_for("ordinary", ordinary)
    finally:
        for slot in slots:
            slot.free()
        allocator.close()
        for buf in keep:
            _sodium.sodium_memzero(buf, _sodium.ffi.sizeof(buf))
