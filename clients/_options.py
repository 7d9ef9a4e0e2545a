"""The client's connection options: :class:`RetryPolicy`, :class:`TlsConfig`, the timeout.

Every client loads these; the key records (:mod:`secretvault.clients._types`)
and the batch operations (:mod:`secretvault.clients._ops`) load only when a
call needs them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from secretvault.api.errors import InvalidArgument

#: seconds each attempt of each call may take, unless the client is given another
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on UNAVAILABLE, with exponential backoff and full jitter.

    Calls that read or compute (get, list, sign, verify, encrypt, decrypt,
    MAC, stats, batch) are retried up to ``max_attempts`` in all.  Calls that
    change keys (create, import, rotate, delete, set-min-version) are retried
    only while the channel has not connected — nothing was sent — or when
    the server says it refused the call unprocessed (``ShuttingDown``);
    a connection lost after sending raises
    :class:`~secretvault.api.errors.OutcomeUnknown` instead of a blind retry.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0
    #: how long a key-changing call waits for the channel to connect per attempt
    connect_wait: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise InvalidArgument("need 0 <= initial_backoff <= max_backoff")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for a ``host:port`` target; with ``cert`` and ``key``, mutual TLS.

    The client's certificate key is the client's own TLS credential, not a
    vault key.
    """

    #: PEM CA certificates that sign the server's certificate (None: system roots)
    ca: bytes | None = None
    #: PEM client certificate chain and its private key, for mutual TLS
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    #: the name to check in the server's certificate, if not the host
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("mutual TLS needs both a client certificate and its key")

    @classmethod
    def from_files(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key), server_name)
