"""``secretvault stats --json`` prints the wire message's fields, from the client's record.

The record (:class:`secretvault.clients.Stats`) is not a protobuf message;
``stats_json`` prints what ``json_format.MessageToDict`` prints for the
message (the same names, absent optional fields left out), except that
every integer is a JSON number: proto3's JSON form writes 64-bit integers as
strings, which a script then has to convert (issue 13; the contract changed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format

from secretvault.api._proto.secretvault.v1 import stats_pb2
from secretvault.clients._stats import stats_from_wire
from secretvault.vault.cli.render import stats_json


def _full() -> stats_pb2.Stats:
    return stats_pb2.Stats(
        backend="memfd_secret", protection="secretmem", regions=2, pages_mapped=32,
        pages_resident=3, bytes_locked=131072, key_bytes=96,
        size_classes=[stats_pb2.SizeClass(size=64, pages=1, slots_used=1, slots_free=63),
                      stats_pb2.SizeClass(size=32, pages=2, slots_used=2, slots_free=252)],
        memlock=stats_pb2.Memlock(soft=8 << 20, hard=8 << 20, locked=131072,
                                  headroom_bytes=(8 << 20) - 131072,
                                  headroom_keys={"ed25519": 130000, "hmac-sha256": 30000}),
        memcg=stats_pb2.Memcg(version=2, path="/system.slice", usage=1 << 30, limit=2 << 30,
                              file=4096, file_mapped=8192, unevictable=12288),
        hibernation_inhibited=True,
        direct_map=stats_pb2.DirectMap(source="kernel", level2_splits=3, level3_splits=1,
                                       directmap_4k=1 << 22, directmap_2m=1 << 31,
                                       directmap_1g=1 << 34, directmap_4k_delta=-4096,
                                       directmap_2m_delta=2 << 20, distinct_2m_regions=2,
                                       distinct_1g_regions=1),
        extra={"pool_bytes": 2.5},
        keys_by_type={"ed25519": 1},
        operations=[stats_pb2.OperationCount(operation="sign", result="ok", count=7)],
        process=stats_pb2.Process(yama_ptrace_scope=1, root_can_attach=True,
                                  user_can_attach="ancestors", tracer_pid=4242,
                                  stop_on_tracer=True, tracer_check_seconds=0.1,
                                  capabilities_bounding=["cap_chown"]),
        max_versions_per_key=100,
        identity_quotas=[stats_pb2.IdentityQuota(identity="ci", secret_bytes=640,
                                                 budget_bytes=4096)],
    )


def _sparse() -> stats_pb2.Stats:
    """What an unprivileged server without a memory cgroup and unlimited memlock reports."""
    return stats_pb2.Stats(backend="page-model", protection="model",
                           memlock=stats_pb2.Memlock(locked=0, cap_ipc_lock=True),
                           direct_map=stats_pb2.DirectMap(source="model"))


def _numbers(value: Any) -> Any:
    """proto3 JSON with its 64-bit integer strings read back as numbers."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _wire_json(msg: stats_pb2.Stats) -> dict[str, object]:
    wire = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    result: dict[str, object] = _numbers(wire)
    return result


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def test_json_of_the_record_is_the_wire_messages_fields() -> None:
    for msg in (_full(), _sparse()):
        assert stats_json(stats_from_wire(msg)) == _wire_json(msg)


def test_every_integer_is_a_json_number() -> None:
    full = stats_json(stats_from_wire(_full()))
    assert full["bytes_locked"] == 131072  # uint64: a number, not "131072"
    assert full["key_bytes"] == 96 and full["memlock"]["soft"] == 8 << 20
    assert full["memlock"]["headroom_keys"] == {"ed25519": 130000, "hmac-sha256": 30000}
    assert full["direct_map"]["directmap_4k_delta"] == -4096  # signed
    assert full["operations"][0]["count"] == 7
    assert full["size_classes"][0]["size"] == 64  # uint32: a number, as before
    assert full["memcg"]["version"] == 2
    # what is left as a string is text: names, paths, sources
    numeric = [(p, v) for p, v in _strings(json.loads(json.dumps(full)))
               if v.lstrip("-").isdigit()]
    assert numeric == []


def test_absent_fields_are_left_out() -> None:
    out = stats_json(stats_from_wire(_sparse()))
    assert "memcg" not in out and "soft" not in out["memlock"]
    assert "headroom_bytes" not in out["memlock"]
