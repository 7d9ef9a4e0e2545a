"""The edge's method table: what each vault method is called in the policy and audit.

Every method of the vault's three services has a :class:`MethodSpec` in
:data:`METHODS` (``Batch`` and ``Stream`` carry operations, each of which is
checked and audited by its own name: :func:`op_target`, :func:`op_record`).
:func:`check_methods` keeps the table complete: a method the service
descriptors list but the table lacks would run with no policy check, no
audit line and no error mapping, so the server refuses to start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from secretvault.api._proto.secretvault.v1 import crypto_pb2
from secretvault.api.errors import InvalidKeyName
from secretvault.vault import errors
from secretvault.vault.audit import Entry
from secretvault.vault.handlers import Malformed, method_paths
from secretvault.vault.records import MAX_NAME_LEN

#: a request or response message of any of the vault's methods: the table's
#: accessors read the field each method keeps its key or version in
Request = Any
Response = Any
#: (operation name as the policy calls it, key) of one call or operation
Target = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    operation: str
    key: Callable[[Request], str | None]
    version: Callable[[Request, Response | None], int | None]
    #: changes keys: audited as an attempt before it runs (refused if it cannot be)
    mutating: bool = False


def _name(r: Request) -> str:
    return str(r.name)


def _key(r: Request) -> str:
    return str(r.key)


def _none(r: Request) -> None:
    return None


def _no_version(r: Request, resp: Response | None) -> None:
    return None


def _primary(r: Request, resp: Response | None) -> int | None:
    return int(resp.primary_version) if resp is not None else None


def _requested(r: Request, resp: Response | None) -> int | None:
    return int(r.version) or None


def _response_version(r: Request, resp: Response | None) -> int | None:
    return int(resp.version) if resp is not None else (int(r.version) or None)


def _key_version(r: Request, resp: Response | None) -> int | None:
    return int(resp.key_version) if resp is not None else None


_KS = "/secretvault.v1.KeyService/"
_CS = "/secretvault.v1.CryptoService/"
_SS = "/secretvault.v1.StatsService/"

#: every method of the vault's services: what it is called in the policy,
#: which key it touches and which version to audit
METHODS: dict[str, MethodSpec] = {
    _KS + "CreateKey": MethodSpec("create_key", _name, _primary, mutating=True),
    _KS + "GetImportKey": MethodSpec("get_import_key", _none, _no_version),
    _KS + "ImportKey": MethodSpec("import_key", _name, _primary, mutating=True),
    _KS + "GetKey": MethodSpec("get_key", _name, _primary),
    _KS + "GetPublicKey": MethodSpec("get_public_key", _name, _response_version),
    _KS + "ListKeys": MethodSpec("list_keys", _none, _no_version),
    _KS + "RotateKey": MethodSpec("rotate_key", _name, _primary, mutating=True),
    _KS + "SetMinDecryptionVersion": MethodSpec("set_min_decryption_version", _name,
                                                _requested, mutating=True),
    _KS + "DeleteKeyVersion": MethodSpec("delete_key_version", _name, _requested,
                                         mutating=True),
    _KS + "DeleteKey": MethodSpec("delete_key", _name, _no_version, mutating=True),
    _CS + "Sign": MethodSpec("sign", _key, _key_version),
    _CS + "Verify": MethodSpec("verify", _key, _key_version),
    _CS + "Encrypt": MethodSpec("encrypt", _key, _key_version),
    _CS + "Decrypt": MethodSpec("decrypt", _key, _key_version),
    _CS + "Mac": MethodSpec("mac", _key, _key_version),
    _CS + "VerifyMac": MethodSpec("verify_mac", _key, _key_version),
    _SS + "GetStats": MethodSpec("get_stats", _none, _no_version),
    _SS + "WatchStats": MethodSpec("watch_stats", _none, _no_version),
}
#: the methods that carry operations: each operation is checked and audited
#: under its own name (sign, verify, ...), not the method's
BATCH = _CS + "Batch"
STREAM = _CS + "Stream"
#: the methods with edge behaviour of their own: the listing is filtered by
#: the caller's visibility, the watch is a long-lived call
LIST_KEYS = _KS + "ListKeys"
WATCH_STATS = _SS + "WatchStats"

#: the services that pass through unchecked: they reveal the API, not keys
PASS_THROUGH: tuple[str, ...] = (
    f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/",
    f"/{reflection.SERVICE_NAME}/",
)


def check_methods() -> None:
    """Refuse to serve when a vault method has no entry in the edge's table.

    A method added to the .proto is served from the descriptors; without an
    entry here, it would have no policy check, no audit line and no error
    mapping.  Called when a listener's edge is built, so the server does not
    start.
    """
    missing = [m for m in method_paths() if m not in METHODS and m not in (BATCH, STREAM)]
    if missing:
        raise RuntimeError(
            f"the server edge has no policy entry for {', '.join(missing)}: add it to "
            "secretvault.vault.edge.methods.METHODS (operation name, key, audited version)")


def audit_version(version: Callable[[Request, Response | None], int | None],
                  request: Request, response: Response | None) -> int | None:
    """The version to audit; never an error of its own."""
    if isinstance(request, Malformed):
        return None
    try:
        return version(request, response)
    except (AttributeError, TypeError, ValueError):
        return None


def sized(key: str | None) -> str | None:
    """``key``, refused (INVALID_ARGUMENT) when no key name could be that long.

    Checked before the policy and before anything is audited: a key field is
    the one string a client puts in the audit trail, and a name longer than
    any key's would only make the trail (and the server's memory) grow with
    the request.  The rest of the name's rules are the keyring's.
    """
    if key is not None and len(key) > MAX_NAME_LEN:
        raise InvalidKeyName(
            f"the key name is {len(key)} characters long: key names are at most "
            f"{MAX_NAME_LEN} characters")
    return key


def op_target(op: crypto_pb2.Operation) -> Target:
    """(operation name, key) of one batch/stream Operation (an oversized key refused)."""
    kind = op.WhichOneof("op")
    if kind is None:
        return "invalid", None
    return str(kind), sized(str(getattr(op, kind).key))


def batch_targets(operations: Iterable[crypto_pb2.Operation]) -> list[Target]:
    """:func:`op_target` of every operation of a batch, in one loop (a batch's hot
    path: a call per operation costs as much as what it does)."""
    out: list[Target] = []
    append = out.append
    for op in operations:
        kind = op.WhichOneof("op")
        if kind is None:
            append(("invalid", None))
            continue
        key = getattr(op, kind).key
        if len(key) > MAX_NAME_LEN:
            sized(key)  # raises
        append((kind, key))
    return out


def batch_entries(targets: list[Target], results: Iterable[crypto_pb2.OperationResult]
                  ) -> tuple[list[Entry], dict[tuple[str, str], int]]:
    """The audit entries ``(operation, key, version, result)`` of a batch that ran, and
    how many operations had each ``(operation, result)``, for the counters: what
    :func:`op_record` says of each result, in one loop."""
    entries: list[Entry] = []
    append = entries.append
    tally: dict[tuple[str, str], int] = {}
    for (op, key), result in zip(targets, results, strict=False):
        which = result.WhichOneof("result")
        if which == op:  # the operation's own kind of result: it succeeded
            outcome, version = "ok", getattr(result, which).key_version or None
        else:
            outcome, version = op_record(result)
        append((op, key, version, outcome))
        pair = (op, outcome)
        tally[pair] = tally.get(pair, 0) + 1
    return entries, tally


def op_record(result: crypto_pb2.OperationResult) -> tuple[str, int | None]:
    """(result, version) of one OperationResult."""
    which = result.WhichOneof("result")
    if which == "error" or which is None:
        code = result.error.code
        return _CODE_NAMES.get(code, str(code)), None
    return "ok", int(getattr(result, which).key_version) or None


_CODE_NAMES = {errors.code_number(c): c.name for c in grpc.StatusCode}
