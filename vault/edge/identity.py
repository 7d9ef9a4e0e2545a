"""Who is calling: the listener's own identity, or the verified client certificate's.

A Unix listener's identity is fixed (the socket file only that identity
can open); on mutual TLS it is the certificate's SAN URI, else its CN,
mapped through the policy.  Nothing the client sends can change it.
"""

from __future__ import annotations

import threading

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from secretvault.api.errors import Unauthenticated
from secretvault.vault.policy import ANONYMOUS, Policy


class Authenticator:
    """Says who is calling, from what the kernel or TLS established."""

    def __init__(self, listener: str, identity: str | None, policy: Policy) -> None:
        self.listener = listener
        self._identity = identity  # fixed for a Unix listener; None: from the certificate
        self._policy = policy
        self._cache: dict[bytes, str] = {}
        self._lock = threading.Lock()

    @property
    def fixed_identity(self) -> str | None:
        """The identity of every call on this listener, or None when each call's
        certificate says (TLS)."""
        return self._identity

    def identity(self, context: grpc.ServicerContext) -> str:
        if self._identity is not None:
            return self._identity
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            # server-only TLS: the client proved nothing
            return ANONYMOUS
        pem = pems[0]
        with self._lock:
            name = self._cache.get(pem)
        if name is None:
            subject = certificate_subject(pem)
            # "" stands for a certificate that names nobody (remembered too)
            name = self._policy.tls_identity(subject) if subject else ""
            with self._lock:
                if len(self._cache) > 1024:
                    self._cache.clear()
                self._cache[pem] = name
        if not name:
            # a verified certificate that names nobody: it must not become
            # "anonymous" (whose grants are for callers without a certificate)
            raise Unauthenticated(
                "the client certificate has neither a SAN URI nor a subject CN: it names no "
                "identity the policy could map")
        return name


def certificate_subject(pem: bytes) -> str | None:
    """The first SAN URI of a (verified) client certificate, else its CN."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None
