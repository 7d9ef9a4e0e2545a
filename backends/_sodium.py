"""Thin cffi bindings to the libsodium that PyNaCl bundles.

PyNaCl's own ``nacl._sodium.lib`` exposes only part of libsodium, and its
high-level API takes and returns keys as ``bytes``.  The shared object it
ships exports the whole libsodium API, so this module ``dlopen``s that same
file (the dynamic loader hands back the already-loaded copy, initialised by
PyNaCl's ``sodium_init``) and declares the calls secretvault needs.

Every function here is named after the C call, takes *pointers* for key
material (cffi ``unsigned char *`` into a secret-memory slot, never
``bytes``), checks sizes up front and turns a non-zero return into a
typed error.  Message inputs (public data) may be ``bytes``.

This is the one place that is allowed untyped calls (see pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nacl._sodium as _nacl_sodium
import nacl.bindings  # noqa: F401  (runs sodium_init once, as PyNaCl does)
from cffi import FFI

from secretvault.api.errors import BackendError, DecryptionFailed, InvalidImport

Ptr = Any  # a cffi ``unsigned char *``

ffi = FFI()
ffi.cdef(
    """
    int sodium_init(void);
    void sodium_memzero(void * pnt, size_t len);
    int sodium_memcmp(const void * b1_, const void * b2_, size_t len);
    int sodium_is_zero(const unsigned char *n, const size_t nlen);
    void randombytes_buf(void * buf, size_t size);

    int crypto_sign_keypair(unsigned char *pk, unsigned char *sk);
    int crypto_sign_seed_keypair(unsigned char *pk, unsigned char *sk,
                                 const unsigned char *seed);
    int crypto_sign_detached(unsigned char *sig, unsigned long long *siglen_p,
                             const unsigned char *m, unsigned long long mlen,
                             const unsigned char *sk);
    int crypto_sign_verify_detached(const unsigned char *sig,
                                    const unsigned char *m, unsigned long long mlen,
                                    const unsigned char *pk);
    int crypto_sign_ed25519_sk_to_pk(unsigned char *pk, const unsigned char *sk);

    int crypto_scalarmult_base(unsigned char *q, const unsigned char *n);
    int crypto_box_seal(unsigned char *c, const unsigned char *m,
                        unsigned long long mlen, const unsigned char *pk);
    int crypto_box_seal_open(unsigned char *m, const unsigned char *c,
                             unsigned long long clen,
                             const unsigned char *pk, const unsigned char *sk);

    int crypto_aead_xchacha20poly1305_ietf_encrypt(
        unsigned char *c, unsigned long long *clen_p,
        const unsigned char *m, unsigned long long mlen,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *nsec, const unsigned char *npub,
        const unsigned char *k);
    int crypto_aead_xchacha20poly1305_ietf_decrypt(
        unsigned char *m, unsigned long long *mlen_p, unsigned char *nsec,
        const unsigned char *c, unsigned long long clen,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *npub, const unsigned char *k);

    size_t crypto_auth_hmacsha256_statebytes(void);
    int crypto_auth_hmacsha256_init(void *state, const unsigned char *key, size_t keylen);
    int crypto_auth_hmacsha256_update(void *state, const unsigned char *in,
                                      unsigned long long inlen);
    int crypto_auth_hmacsha256_final(void *state, unsigned char *out);

    int crypto_pwhash(unsigned char * const out, unsigned long long outlen,
                      const char * const passwd, unsigned long long passwdlen,
                      const unsigned char * const salt,
                      unsigned long long opslimit, size_t memlimit, int alg);
    int crypto_pwhash_alg_argon2id13(void);
    """
)
lib = ffi.dlopen(_nacl_sodium.__file__)
if lib.sodium_init() < 0:  # idempotent: 1 means "already initialised"
    raise BackendError("libsodium failed to initialise")

NULL = ffi.NULL

# sizes, from libsodium's headers
SIGN_PUBLICKEYBYTES = 32
SIGN_SECRETKEYBYTES = 64
SIGN_SEEDBYTES = 32
SIGN_BYTES = 64
BOX_PUBLICKEYBYTES = 32
BOX_SECRETKEYBYTES = 32
BOX_SEALBYTES = 48
AEAD_XCHACHA_KEYBYTES = 32
AEAD_XCHACHA_NPUBBYTES = 24
AEAD_XCHACHA_ABYTES = 16
HMACSHA256_BYTES = 32
HMACSHA256_KEYBYTES = 32
HMACSHA256_STATEBYTES = int(lib.crypto_auth_hmacsha256_statebytes())
PWHASH_SALTBYTES = 16
PWHASH_ALG_ARGON2ID13 = int(lib.crypto_pwhash_alg_argon2id13())


def address(ptr: Ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def pointer(addr: int) -> Ptr:
    """An ``unsigned char *`` at ``addr`` (no copy, no ownership)."""
    return ffi.cast("unsigned char *", addr)


def sodium_memzero(ptr: Ptr, n: int) -> None:
    lib.sodium_memzero(ptr, n)


def sodium_memcmp(a: Ptr, b: Ptr, n: int) -> bool:
    """Constant-time equality."""
    return bool(lib.sodium_memcmp(a, b, n) == 0)


def sodium_is_zero(ptr: Ptr, n: int) -> bool:
    return bool(lib.sodium_is_zero(ptr, n) == 1)


def randombytes_buf(ptr: Ptr, n: int) -> None:
    lib.randombytes_buf(ptr, n)


def random_bytes(n: int) -> bytes:
    """Public randomness (nonces, salts, ids) as bytes."""
    buf = ffi.new("unsigned char[]", n)
    lib.randombytes_buf(buf, n)
    return bytes(ffi.buffer(buf, n))


# --- Ed25519 ----------------------------------------------------------------


def crypto_sign_keypair(sk_out: Ptr) -> bytes:
    """Generate straight into ``sk_out``; returns the public key."""
    pk = ffi.new("unsigned char[32]")
    if lib.crypto_sign_keypair(pk, sk_out) != 0:
        raise BackendError("crypto_sign_keypair failed")
    return bytes(pk)


def crypto_sign_seed_keypair(pk_out: Ptr, sk_out: Ptr, seed: Ptr) -> None:
    if lib.crypto_sign_seed_keypair(pk_out, sk_out, seed) != 0:
        raise BackendError("crypto_sign_seed_keypair failed")


def crypto_sign_detached(sk: Ptr, message: bytes) -> bytes:
    sig = ffi.new("unsigned char[64]")
    if lib.crypto_sign_detached(sig, NULL, message, len(message), sk) != 0:
        raise BackendError("crypto_sign_detached failed")
    return bytes(sig)


def crypto_sign_detached_each(sk: Ptr, messages: Sequence[bytes]) -> list[bytes]:
    """The signature of each message, in order (a batch's run of signs with one key:
    one output buffer, no Python call per message between the loop and libsodium)."""
    sig = ffi.new("unsigned char[64]")
    sign, copy = lib.crypto_sign_detached, ffi.buffer(sig)
    out: list[bytes] = []
    append = out.append
    for message in messages:
        if sign(sig, NULL, message, len(message), sk) != 0:
            raise BackendError("crypto_sign_detached failed")
        append(copy[:])
    return out


def crypto_sign_verify_detached(signature: bytes, message: bytes, pk: bytes) -> bool:
    if len(signature) != SIGN_BYTES or len(pk) != SIGN_PUBLICKEYBYTES:
        return False
    return bool(lib.crypto_sign_verify_detached(signature, message, len(message), pk) == 0)


def crypto_sign_ed25519_sk_to_pk(sk: Ptr) -> bytes:
    pk = ffi.new("unsigned char[32]")
    if lib.crypto_sign_ed25519_sk_to_pk(pk, sk) != 0:
        raise BackendError("crypto_sign_ed25519_sk_to_pk failed")
    return bytes(pk)


# --- X25519 sealed boxes ----------------------------------------------------


def crypto_scalarmult_base(sk: Ptr) -> bytes:
    pk = ffi.new("unsigned char[32]")
    if lib.crypto_scalarmult_base(pk, sk) != 0:
        raise BackendError("crypto_scalarmult_base failed")
    return bytes(pk)


def crypto_box_seal(message: bytes | bytearray, pk: bytes) -> bytes:
    """Seal ``message`` to ``pk``; a ``bytearray`` is read in place (no copy of
    it is made, so a caller can wipe its only copy afterwards)."""
    if len(pk) != BOX_PUBLICKEYBYTES:
        raise ValueError("an X25519 public key is 32 bytes")
    out = ffi.new("unsigned char[]", len(message) + BOX_SEALBYTES)
    src = message if isinstance(message, bytes) else ffi.from_buffer(message)
    if lib.crypto_box_seal(out, src, len(message), pk) != 0:
        raise BackendError("crypto_box_seal failed")
    return bytes(ffi.buffer(out, len(message) + BOX_SEALBYTES))


def crypto_box_seal_open(ciphertext: bytes, pk: bytes, sk: Ptr) -> bytes:
    """Open a sealed box whose plaintext is public data (a client's message)."""
    if len(ciphertext) < BOX_SEALBYTES:
        raise DecryptionFailed("a sealed box is at least 48 bytes")
    n = len(ciphertext) - BOX_SEALBYTES
    out = ffi.new("unsigned char[]", max(n, 1))
    if lib.crypto_box_seal_open(out, ciphertext, len(ciphertext), pk, sk) != 0:
        raise DecryptionFailed("the sealed box does not open with this key")
    return bytes(ffi.buffer(out, n))


def crypto_box_seal_open_into(
    out: Ptr, out_len: int, ciphertext: bytes, pk: bytes, sk: Ptr
) -> None:
    """Open a sealed box straight into ``out`` (a secret slot): wrapped import."""
    if len(ciphertext) != out_len + BOX_SEALBYTES:
        raise InvalidImport(
            f"a wrapped key of {out_len} bytes is {out_len + BOX_SEALBYTES} bytes sealed, "
            f"got {len(ciphertext)}"
        )
    if lib.crypto_box_seal_open(out, ciphertext, len(ciphertext), pk, sk) != 0:
        sodium_memzero(out, out_len)
        raise InvalidImport("the wrapped key does not open with the vault's import key")


# --- XChaCha20-Poly1305 -------------------------------------------------------


def aead_xchacha_encrypt(key: Ptr, nonce: bytes, message: bytes, ad: bytes) -> bytes:
    if len(nonce) != AEAD_XCHACHA_NPUBBYTES:
        raise ValueError("an XChaCha20 nonce is 24 bytes")
    n = len(message) + AEAD_XCHACHA_ABYTES
    out = ffi.new("unsigned char[]", n)
    if (
        lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            out, NULL, message, len(message), ad, len(ad), NULL, nonce, key
        )
        != 0
    ):
        raise BackendError("crypto_aead_xchacha20poly1305_ietf_encrypt failed")
    return bytes(ffi.buffer(out, n))


def aead_xchacha_encrypt_from(
    key: Ptr, nonce: bytes, message: Ptr, mlen: int, ad: bytes
) -> bytes:
    """Encrypt ``mlen`` bytes read through a pointer (sealing a key in a slot)."""
    n = mlen + AEAD_XCHACHA_ABYTES
    out = ffi.new("unsigned char[]", n)
    if (
        lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            out, NULL, message, mlen, ad, len(ad), NULL, nonce, key
        )
        != 0
    ):
        raise BackendError("crypto_aead_xchacha20poly1305_ietf_encrypt failed")
    return bytes(ffi.buffer(out, n))


def aead_xchacha_decrypt(key: Ptr, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    if len(nonce) != AEAD_XCHACHA_NPUBBYTES:
        raise DecryptionFailed("an XChaCha20 nonce is 24 bytes")
    if len(ciphertext) < AEAD_XCHACHA_ABYTES:
        raise DecryptionFailed("the ciphertext is shorter than its 16-byte tag")
    n = len(ciphertext) - AEAD_XCHACHA_ABYTES
    out = ffi.new("unsigned char[]", max(n, 1))
    if (
        lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, NULL, NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
        )
        != 0
    ):
        raise DecryptionFailed("authentication failed: wrong key, or the data was altered")
    return bytes(ffi.buffer(out, n))


def aead_xchacha_decrypt_into(
    out: Ptr, out_len: int, key: Ptr, nonce: bytes, ciphertext: bytes, ad: bytes
) -> bool:
    """Decrypt straight into ``out`` (a secret slot): unsealing a stored key.

    Returns False (and leaves ``out`` zeroed) when authentication fails.
    """
    if len(ciphertext) != out_len + AEAD_XCHACHA_ABYTES or len(nonce) != AEAD_XCHACHA_NPUBBYTES:
        return False
    rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, NULL, NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
    )
    if rc != 0:
        sodium_memzero(out, out_len)
        return False
    return True


# --- HMAC-SHA-256 -------------------------------------------------------------


def hmacsha256(state: Ptr, key: Ptr, keylen: int, message: bytes) -> bytes:
    """HMAC-SHA-256 with a key of any length; ``state`` is secret scratch.

    The hash state holds the key's inner and outer pads, so it must live in
    secret memory too; it is wiped before returning.
    """
    mac = ffi.new("unsigned char[32]")
    hmacsha256_into(mac, state, key, keylen, message)
    return bytes(mac)


def hmacsha256_into(out: Ptr, state: Ptr, key: Ptr, keylen: int, message: bytes) -> None:
    """HMAC-SHA-256 written straight into ``out`` (a secret slot of 32 bytes):
    deriving a subkey from a key in secret memory.  ``state`` is secret
    scratch, wiped before returning."""
    try:
        if lib.crypto_auth_hmacsha256_init(state, key, keylen) != 0:
            raise BackendError("crypto_auth_hmacsha256_init failed")
        lib.crypto_auth_hmacsha256_update(state, message, len(message))
        lib.crypto_auth_hmacsha256_final(state, out)
    finally:
        sodium_memzero(state, HMACSHA256_STATEBYTES)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    if len(a) != len(b):
        return False
    return bool(lib.sodium_memcmp(a, b, len(a)) == 0)


# --- Argon2id ------------------------------------------------------------------


def crypto_pwhash_argon2id(
    out: Ptr, outlen: int, passphrase: Ptr, passlen: int, salt: bytes, ops: int, mem: int
) -> None:
    """Derive ``outlen`` bytes into ``out`` (a secret slot)."""
    if len(salt) != PWHASH_SALTBYTES:
        raise ValueError("an Argon2id salt is 16 bytes")
    rc = lib.crypto_pwhash(
        out, outlen, ffi.cast("const char *", passphrase), passlen, salt, ops, mem,
        PWHASH_ALG_ARGON2ID13,
    )
    if rc != 0:
        raise BackendError("crypto_pwhash (Argon2id) failed: out of memory?")
