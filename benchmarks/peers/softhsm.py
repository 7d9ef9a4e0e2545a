"""SoftHSM2 as a signing peer, in-process through PKCS#11.

Debian's softhsm2 ships ``libsofthsm2.so``, a PKCS#11 module whose keys
live in the calling process (its object store on disk holds them encrypted
under the token PIN).  ``python-pkcs11`` loads it; the signing call is
``C_SignInit`` + ``C_Sign`` on a session key, so the figure is SoftHSM's
own cost plus the binding's, with no IPC at all.

* Ed25519: ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` with ``CKA_EC_PARAMS`` naming
  curve 1.3.101.112, signing with ``CKM_EDDSA`` (pure Ed25519);
* P-256: ``CKM_EC_KEY_PAIR_GEN`` on prime256v1, signing with ``CKM_ECDSA``
  over a SHA-256 digest computed by the caller (SoftHSM 2.6 does not offer
  ``CKM_ECDSA_SHA256``); the digest is part of the timed loop.

SoftHSM reads ``SOFTHSM2_CONF`` in ``C_Initialize``: the token directory is
a fresh temporary one, initialised with ``softhsm2-util --init-token``
before the module is (re)initialised, so the benchmark never touches a
system token store.  The module is loaded once per process, so a new
:class:`SoftHsm` re-initialises it and the sessions of any older one end:
use one at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks._measure import PeerMissing

_SETUP_HINT = "run benchmarks/setup-peers"
MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
ED25519_OID = "1.3.101.112"
P256_OID = "1.2.840.10045.3.1.7"
_PIN = "1234"
_SO_PIN = "12345678"
_LABEL = "sv-bench"


def module_path() -> str:
    for p in MODULE_PATHS:
        if os.path.exists(p):
            return p
    raise PeerMissing(f"libsofthsm2.so not found (Debian package softhsm2); {_SETUP_HINT}")


def _import_pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as e:
        raise PeerMissing(f"PyPI package python-pkcs11 not installed; {_SETUP_HINT}") from e
    return pkcs11


class SoftHsm:
    """A fresh SoftHSM2 token with one Ed25519 and one P-256 session key."""

    def __init__(self) -> None:
        so = module_path()
        util = shutil.which("softhsm2-util")
        if util is None:
            raise PeerMissing(f"softhsm2-util not on PATH (Debian softhsm2); {_SETUP_HINT}")
        pkcs11 = _import_pkcs11()
        from pkcs11.util.ec import encode_named_curve_parameters

        self._dir = tempfile.TemporaryDirectory(prefix="sv-bench-softhsm-")
        self._session: Any = None
        try:
            tokens = Path(self._dir.name) / "tokens"
            tokens.mkdir()
            conf = Path(self._dir.name) / "softhsm2.conf"
            conf.write_text(
                f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                "log.level = ERROR\nslots.removable = false\n"
            )
            env = dict(os.environ, SOFTHSM2_CONF=str(conf))
            subprocess.run(
                [util, "--init-token", "--free", "--label", _LABEL,
                 "--so-pin", _SO_PIN, "--pin", _PIN],
                check=True, env=env, capture_output=True, stdin=subprocess.DEVNULL,
            )
            # the module reads SOFTHSM2_CONF in C_Initialize; python-pkcs11
            # keeps one loaded module per path, so a second SoftHsm in the
            # same process re-runs C_Finalize/C_Initialize to see its token
            self._prev_conf = os.environ.get("SOFTHSM2_CONF")
            os.environ["SOFTHSM2_CONF"] = str(conf)
            lib = pkcs11.lib(so)
            lib.reinitialize()
            major, minor = lib.library_version
            self.library = f"{lib.library_description} {major}.{minor} ({lib.manufacturer_id})"
            token = lib.get_token(token_label=_LABEL)
            self._session = token.open(user_pin=_PIN, rw=True)
            ka = pkcs11.Attribute
            ed_params = self._session.create_domain_parameters(
                pkcs11.KeyType.EC_EDWARDS,
                {ka.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
                local=True,
            )
            self._ed_pub, self._ed_priv = ed_params.generate_keypair(store=False)
            ec_params = self._session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {ka.EC_PARAMS: encode_named_curve_parameters(P256_OID)},
                local=True,
            )
            self._ec_pub, self._ec_priv = ec_params.generate_keypair(store=False)
            self._mech = pkcs11.Mechanism
            self._attr = ka
        except BaseException:
            self.close()
            raise

    # --- public keys, for verification --------------------------------------

    def ed25519_public(self) -> bytes:
        """Raw 32-byte Ed25519 public key (CKA_EC_POINT is a DER OCTET STRING)."""
        point = bytes(self._ed_pub[self._attr.EC_POINT])
        if len(point) == 34 and point[0] == 0x04 and point[1] == 32:
            return point[2:]
        if len(point) == 32:
            return point
        raise ValueError(f"unexpected CKA_EC_POINT of {len(point)} bytes")

    def p256_public_point(self) -> bytes:
        """Uncompressed SEC1 point (0x04 || X || Y) of the P-256 key."""
        point = bytes(self._ec_pub[self._attr.EC_POINT])
        if len(point) == 67 and point[0] == 0x04 and point[1] == 65:
            return point[2:]
        if len(point) == 65:
            return point
        raise ValueError(f"unexpected CKA_EC_POINT of {len(point)} bytes")

    # --- signing -------------------------------------------------------------

    def sign_ed25519(self, message: bytes) -> bytes:
        return bytes(self._ed_priv.sign(message, mechanism=self._mech.EDDSA))

    def sign_p256(self, message: bytes) -> bytes:
        """Raw r || s (64 bytes) over SHA-256(message)."""
        digest = hashlib.sha256(message).digest()
        return bytes(self._ec_priv.sign(digest, mechanism=self._mech.ECDSA))

    def runner(self, which: str, message: bytes) -> Callable[[int], None]:
        sign = {"ed25519": self.sign_ed25519, "p256": self.sign_p256}[which]

        def run(n: int) -> None:
            for _ in range(n):
                sign(message)

        return run

    # --- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            try:
                session.close()
            except _import_pkcs11().SessionHandleInvalid:
                # a later SoftHsm in this process re-ran C_Finalize and
                # C_Initialize, which already closed every session of ours
                pass
            if self._prev_conf is None:
                os.environ.pop("SOFTHSM2_CONF", None)
            else:
                os.environ["SOFTHSM2_CONF"] = self._prev_conf
        self._dir.cleanup()

    def __enter__(self) -> SoftHsm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
