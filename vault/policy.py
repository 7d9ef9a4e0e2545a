"""Who may do what to which keys: the TOML policy.

Identities are never names a client claims.  Each one is bound to something
the kernel or TLS vouches for:

* a Unix listener: a socket file only its owner/group may open (connecting
  to a Unix socket needs write permission on the file, checked by the
  kernel against the connecting process's credentials), served by its own
  gRPC server so every call knows which listener it came in on;
* a client certificate on mutual TLS, verified against the configured CA:
  its first SAN URI, or its CN when it has no URI.

The default socket belongs to the server's own user (:data:`OWNER`), which
may do everything.  Everyone else may do nothing the policy does not grant.

Example (see ``docs/policy.example.toml``)::

    [identities.ci-signer]
    tls = ["spiffe://example.org/ci-signer"]

    [[identities.ci-signer.sockets]]
    path = "/run/secretvault/ci/vault.sock"
    group = "ci"
    mode = "0660"

    [[identities.ci-signer.allow]]
    operations = ["sign", "verify", "get_public_key"]
    keys = ["ci/*"]

Key patterns are ``fnmatch`` patterns, matched case-sensitively against the
whole name; ``*`` also matches ``/`` (``ci/*`` covers ``ci/a/b``).

Every identity but the owner has a quota of secret memory (``secret_memory``,
in bytes or with a unit: ``"64 KiB"``; ``"unlimited"``): what the key
versions it creates, imports or rotates may hold at once.  It is set per
identity, else by the top-level ``[quotas]`` table, else
:data:`DEFAULT_SECRET_MEMORY` (see ``secretvault.vault.quotas``).
"""

from __future__ import annotations

import fnmatch
import grp
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secretvault.api.errors import InvalidArgument, PermissionDenied

#: the identity of the default socket: the server's own user, allowed everything
OWNER = "owner"
#: the identity of a caller who proved nothing (TCP with server-only TLS); its
#: grants come from the policy's top-level ``[anonymous]`` table, nothing else
ANONYMOUS = "anonymous"
#: what the audit names a caller refused before its identity was established
UNKNOWN = "unknown"
#: names the edge gives on its own: a policy cannot define identities with them,
#: so no socket, certificate or grant can be confused with one.  (Unlisted
#: certificates become ``tls:SUBJECT``, which no identity name can spell: names
#: have no ``:``.)
RESERVED: frozenset[str] = frozenset({OWNER, ANONYMOUS, UNKNOWN})

#: every operation a policy can grant (the RPCs, and the batch/stream operations)
KEY_OPERATIONS: frozenset[str] = frozenset({
    "create_key", "import_key", "get_key", "get_public_key", "rotate_key",
    "set_min_decryption_version", "delete_key_version", "delete_key",
    "sign", "verify", "encrypt", "decrypt", "mac", "verify_mac",
})
#: operations on no particular key: granted by any rule listing them
#: (``list_keys`` answers only the names the identity's list_keys patterns match)
KEYLESS_OPERATIONS: frozenset[str] = frozenset({
    "get_import_key", "list_keys", "get_stats", "watch_stats",
    # the SSH agent's changes to the identity's own agent keys (ssh-add; -d, -D)
    "ssh_add_key", "ssh_remove_key",
})
OPERATIONS: frozenset[str] = KEY_OPERATIONS | KEYLESS_OPERATIONS
#: the operations a Batch or Stream can carry: an identity granted none of them
#: may not open a Stream at all
CRYPTO_OPERATIONS: frozenset[str] = frozenset({
    "sign", "verify", "encrypt", "decrypt", "mac", "verify_mac",
})

_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: the secret-memory quota of an identity the policy gives none: 1 MiB holds
#: 16,384 Ed25519 keys (64 bytes each) or 32,768 of the 32-byte types
DEFAULT_SECRET_MEMORY = 1 << 20
#: an identity's ``secret_memory`` when it names none: the policy's default
FROM_POLICY = -1
_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


class PolicyError(InvalidArgument):
    """The policy file is invalid: the server refuses to start with it."""


@dataclass(frozen=True, slots=True)
class Grant:
    operations: frozenset[str]
    keys: tuple[str, ...]  # fnmatch patterns

    def covers(self, operation: str, key: str | None) -> bool:
        if operation not in self.operations:
            return False
        if key is None:
            return True
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys)


@dataclass(frozen=True, slots=True)
class SocketBinding:
    """A Unix listener bound to an identity; its file's owner/group/mode guard it."""

    path: str
    identity: str
    mode: int = 0o600
    group: int | None = None  # gid the socket file (and its directory) belong to


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    grants: tuple[Grant, ...] = ()
    sockets: tuple[SocketBinding, ...] = ()
    tls: tuple[str, ...] = ()  # certificate identities (SAN URI, else CN)
    #: its secret-memory quota in bytes; None: unlimited; FROM_POLICY: the policy's
    secret_memory: int | None = FROM_POLICY
    #: SSH agent sockets bound to it (``[[identities.NAME.agent_sockets]]``)
    agent_sockets: tuple[SocketBinding, ...] = ()


#: decisions remembered per policy (identity, operation, key): a bound on memory,
#: since key names come from clients; names longer than a valid one are not kept
_MAX_DECISIONS = 4096
_MAX_CACHED_NAME = 128


@dataclass(frozen=True)
class Policy:
    identities: Mapping[str, Identity] = field(default_factory=dict)
    source: str = "the built-in policy (owner only)"
    #: the quota of every identity that names none (``[quotas] secret_memory``)
    default_secret_memory: int | None = DEFAULT_SECRET_MEMORY
    #: ``[ssh_agent] persist``: keys added with ssh-add become sealed vault keys
    ssh_agent_persist: bool = False
    # a policy never changes once loaded, so its answers can be remembered
    _decisions: dict[tuple[str, str, str | None], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _listers: dict[str, Callable[[str], bool]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    # --- decisions ------------------------------------------------------------------

    def unrestricted(self, identity: str) -> bool:
        """Whether ``identity`` may do everything (the server's own user).

        The edge asks this once per listener and skips the per-operation
        checks for such an identity; every other identity is checked on
        every operation.
        """
        return identity == OWNER

    def allows(self, identity: str, operation: str, key: str | None) -> bool:
        if identity == OWNER:
            return True
        memo = (identity, operation, key)
        decision = self._decisions.get(memo)
        if decision is None:
            ident = self.identities.get(identity)
            decision = ident is not None and any(g.covers(operation, key)
                                                 for g in ident.grants)
            if key is None or len(key) <= _MAX_CACHED_NAME:
                if len(self._decisions) >= _MAX_DECISIONS:
                    self._decisions.clear()
                self._decisions[memo] = decision
        return decision

    def check(self, identity: str, operation: str, key: str | None) -> None:
        """Raise :class:`PermissionDenied` unless ``identity`` may do this."""
        if not self.allows(identity, operation, key):
            target = f" on key {key[:140]!r}" if key is not None else ""
            raise PermissionDenied(
                f"identity {identity!r} may not {operation}{target} ({self.source})"
            )

    def secret_memory(self, identity: str) -> int | None:
        """The bytes of secret memory ``identity``'s key versions may hold (None: no limit)."""
        if identity == OWNER:
            return None
        ident = self.identities.get(identity)
        if ident is None or ident.secret_memory == FROM_POLICY:
            return self.default_secret_memory
        return ident.secret_memory

    def may_stream(self, identity: str) -> bool:
        """Whether ``identity`` holds any crypto grant (else a Stream is refused
        when it opens, before it can hold a thread waiting for operations)."""
        if identity == OWNER:
            return True
        ident = self.identities.get(identity)
        return ident is not None and any(g.operations & CRYPTO_OPERATIONS
                                         for g in ident.grants)

    def lister(self, identity: str) -> Callable[[str], bool] | None:
        """Which key names ``identity`` may see in ListKeys (None: all of them).

        One compiled regular expression per identity, from its ``list_keys``
        patterns (the same ``fnmatch`` translation :meth:`allows` uses); it
        does not go through the remembered decisions, so a long listing
        cannot push the hot path's decisions out.
        """
        if identity == OWNER:
            return None
        found = self._listers.get(identity)
        if found is not None:
            return found
        ident = self.identities.get(identity)
        patterns = sorted({p for g in (ident.grants if ident else ())
                           if "list_keys" in g.operations for p in g.keys})
        if patterns:
            match = re.compile("|".join(fnmatch.translate(p) for p in patterns)).match

            def found(name: str) -> bool:
                return match(name) is not None
        else:
            found = _nothing
        if ident is not None:  # a bounded set: only the policy's own identities are kept
            self._listers[identity] = found
        return found

    def tls_identity(self, subject: str) -> str:
        """The identity a verified certificate subject (SAN URI or CN) maps to."""
        for ident in self.identities.values():
            if subject in ident.tls:
                return ident.name
        # unknown subjects get a name of their own, with no grants
        return f"tls:{subject}"

    @property
    def sockets(self) -> tuple[SocketBinding, ...]:
        return tuple(s for i in self.identities.values() for s in i.sockets)

    @property
    def agent_sockets(self) -> tuple[SocketBinding, ...]:
        return tuple(s for i in self.identities.values() for s in i.agent_sockets)

    # --- loading ----------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> Policy:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise PolicyError(f"cannot read the policy file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"the policy file {path} is not valid TOML: {e}") from None
        return cls.from_dict(data, source=f"policy {path}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        _only(data, {"identities", ANONYMOUS, "quotas", "ssh_agent"}, "the policy")
        agent = data.get("ssh_agent", {})
        if not isinstance(agent, dict) or not isinstance(agent.get("persist", False), bool):
            raise PolicyError("[ssh_agent] must be a table; persist = true or false")
        _only(agent, {"persist"}, "[ssh_agent]")
        quotas = data.get("quotas", {})
        if not isinstance(quotas, dict):
            raise PolicyError("[quotas] must be a table")
        _only(quotas, {"secret_memory"}, "[quotas]")
        default = _size(quotas.get("secret_memory", DEFAULT_SECRET_MEMORY),
                        "[quotas] secret_memory")
        raw = data.get("identities", {})
        if not isinstance(raw, dict):
            raise PolicyError("[identities] must be a table of identities")
        identities: dict[str, Identity] = {}
        if ANONYMOUS in data:
            identities[ANONYMOUS] = _anonymous(data[ANONYMOUS])
        tls_seen: dict[str, str] = {}
        for name, body in raw.items():
            ident = _identity(name, body)
            for subject in ident.tls:
                if subject in tls_seen:
                    raise PolicyError(
                        f"certificate identity {subject!r} is given to both "
                        f"{tls_seen[subject]!r} and {name!r}")
                tls_seen[subject] = name
            identities[name] = ident
        paths = [s.path for i in identities.values() for s in (*i.sockets, *i.agent_sockets)]
        if len(set(paths)) != len(paths):
            raise PolicyError("a socket path is bound to more than one identity")
        return cls(identities, source, default, agent.get("persist", False))


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    # a typo in a security policy must not silently grant or deny something
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(
            f"unknown field(s) {', '.join(unknown)} in {where}; allowed: "
            f"{', '.join(sorted(allowed))}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return tuple(value)


def _identity(name: str, body: Any) -> Identity:
    where = f"[identities.{name}]"
    if not _IDENTITY_NAME.fullmatch(name):
        raise PolicyError(
            f"identity name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -")
    if name == OWNER:
        raise PolicyError(
            f"{OWNER!r} is the server's own user (the default socket); it is always allowed "
            "everything and cannot be configured")
    if name == ANONYMOUS:
        raise PolicyError(
            f"{ANONYMOUS!r} is reserved: it names callers who proved nothing (TCP with "
            "server-only TLS). Grant them operations in a top-level [[anonymous.allow]] "
            "table; no socket or certificate can be bound to it")
    if name in RESERVED:
        raise PolicyError(f"{name!r} is a reserved identity name: choose another")
    if not isinstance(body, dict):
        raise PolicyError(f"{where} must be a table")
    _only(body, {"tls", "sockets", "agent_sockets", "allow", "secret_memory"}, where)
    tls = _strings(body.get("tls", []), f"{where} tls")
    grants = tuple(_grant(g, f"{where} allow") for g in _tables(body.get("allow", []),
                                                                 f"{where} allow"))
    sockets = tuple(_socket(name, s, f"{where} sockets")
                    for s in _tables(body.get("sockets", []), f"{where} sockets"))
    agent = tuple(_socket(name, s, f"{where} agent_sockets")
                  for s in _tables(body.get("agent_sockets", []), f"{where} agent_sockets"))
    quota = (_size(body["secret_memory"], f"{where} secret_memory")
             if "secret_memory" in body else FROM_POLICY)
    return Identity(name, grants, sockets, tls, agent_sockets=agent, secret_memory=quota)


def _anonymous(body: Any) -> Identity:
    where = f"[{ANONYMOUS}]"
    if not isinstance(body, dict):
        raise PolicyError(f"{where} must be a table")
    # grants only: nothing can be bound to a caller who proved nothing
    _only(body, {"allow", "secret_memory"}, where)
    grants = tuple(_grant(g, f"{where} allow") for g in _tables(body.get("allow", []),
                                                                 f"{where} allow"))
    quota = (_size(body["secret_memory"], f"{where} secret_memory")
             if "secret_memory" in body else FROM_POLICY)
    return Identity(ANONYMOUS, grants, secret_memory=quota)


def _size(value: Any, where: str) -> int | None:
    """A quota in bytes: an integer, a string with a binary unit ("64 KiB"), or
    "unlimited" (None)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if value == "unlimited":
        return None
    m = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise PolicyError(f"{where} must be a number of bytes, a string such as \"64 KiB\" "
                          "(units B, KiB, MiB, GiB), or \"unlimited\"")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _nothing(name: str) -> bool:
    return False


def _tables(value: Any, where: str) -> Iterable[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PolicyError(f"{where} must be an array of tables ([[...]])")
    return value


def _grant(body: dict[str, Any], where: str) -> Grant:
    _only(body, {"operations", "keys"}, where)
    ops = _strings(body.get("operations", []), f"{where} operations")
    if not ops:
        raise PolicyError(f"{where}: list at least one operation (or \"*\")")
    expanded: set[str] = set()
    for op in ops:
        if op == "*":
            expanded |= OPERATIONS
        elif op in OPERATIONS:
            expanded.add(op)
        else:
            raise PolicyError(
                f"{where}: unknown operation {op!r}; use \"*\" or: "
                f"{', '.join(sorted(OPERATIONS))}")
    keys = _strings(body.get("keys", ["*"] if expanded <= KEYLESS_OPERATIONS else []),
                    f"{where} keys")
    if not keys and expanded & KEY_OPERATIONS:
        raise PolicyError(f"{where}: list the key patterns (\"*\" for every key)")
    return Grant(frozenset(expanded), keys)


def _socket(identity: str, body: dict[str, Any], where: str) -> SocketBinding:
    _only(body, {"path", "mode", "group"}, where)
    path = body.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise PolicyError(f"{where}: path must be an absolute path")
    mode_text = body.get("mode", "0600")
    try:
        mode = int(mode_text, 8) if isinstance(mode_text, str) else -1
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777 or mode & 0o111:
        raise PolicyError(
            f"{where}: mode must be an octal string such as \"0660\" (no execute bits)")
    group = body.get("group")
    gid: int | None = None
    if group is not None:
        gid = _gid(group, where)
    elif mode & 0o070 and not mode & 0o007:
        # otherwise the server's own primary group would get in, by accident
        raise PolicyError(f"{where}: a group-accessible mode needs a group")
    return SocketBinding(path, identity, mode, gid)


def _gid(group: Any, where: str) -> int:
    if isinstance(group, int) and not isinstance(group, bool) and group >= 0:
        return group
    if isinstance(group, str):
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise PolicyError(f"{where}: no group named {group!r} on this system") from None
    raise PolicyError(f"{where}: group must be a group name or a gid")
