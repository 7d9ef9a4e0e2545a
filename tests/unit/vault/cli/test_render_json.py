"""``secretvault stats --json`` prints the wire message's JSON form, from the client's record.

The record (:class:`secretvault.clients.Stats`) is not a protobuf message;
``stats_json`` must still print what ``json_format.MessageToDict`` printed
when the CLI rendered the message itself: absent optional fields left out,
64-bit integers as strings, 32-bit ones as numbers.
"""

from __future__ import annotations

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
        max_versions_per_key=100,
        identity_quotas=[stats_pb2.IdentityQuota(identity="ci", secret_bytes=640,
                                                 budget_bytes=4096)],
    )


def _sparse() -> stats_pb2.Stats:
    """What an unprivileged server without a memory cgroup and unlimited memlock reports."""
    return stats_pb2.Stats(backend="page-model", protection="model",
                           memlock=stats_pb2.Memlock(locked=0, cap_ipc_lock=True),
                           direct_map=stats_pb2.DirectMap(source="model"))


def _wire_json(msg: stats_pb2.Stats) -> dict[str, object]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def test_json_of_the_record_is_the_wire_messages_json() -> None:
    for msg in (_full(), _sparse()):
        assert stats_json(stats_from_wire(msg)) == _wire_json(msg)


def test_absent_fields_are_left_out_and_integers_keep_their_json_form() -> None:
    out = stats_json(stats_from_wire(_sparse()))
    assert "memcg" not in out and "soft" not in out["memlock"]
    full = stats_json(stats_from_wire(_full()))
    assert full["bytes_locked"] == "131072"  # uint64: a string in proto3 JSON
    assert full["size_classes"][0]["size"] == 64  # uint32: a number
    assert full["memcg"]["version"] == 2
