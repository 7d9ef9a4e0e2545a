"""The client's Stats record: the wire message's fields, in frozen Python types.

The record must keep up with the proto: every field of every message has a
field of the same name, optional ones (and only those) may be None, and
nothing protobuf reaches the caller.  tests/integration/test_client.py
checks the same record against a real server's message.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from secretvault.api._proto.secretvault.v1 import stats_pb2
from secretvault.clients import (
    DirectMap,
    IdentityQuota,
    Memcg,
    Memlock,
    OperationCount,
    Process,
    SizeClass,
    Stats,
)
from secretvault.clients._stats import stats_from_wire

RECORDS: dict[str, type] = {
    "Stats": Stats, "SizeClass": SizeClass, "Memlock": Memlock, "Memcg": Memcg,
    "DirectMap": DirectMap, "OperationCount": OperationCount, "Process": Process,
    "IdentityQuota": IdentityQuota,
}


def full() -> stats_pb2.Stats:
    """A message with every optional field set."""
    return stats_pb2.Stats(
        backend="memfd_secret", protection="secretmem", regions=2, pages_mapped=3,
        pages_resident=3, bytes_locked=12288, key_bytes=96,
        size_classes=[stats_pb2.SizeClass(size=32, pages=1, slots_used=3, slots_free=125)],
        memlock=stats_pb2.Memlock(soft=65536, hard=131072, locked=12288, cap_ipc_lock=False,
                                  headroom_bytes=53248, headroom_keys={"x25519": 9, "ed25519": 8}),
        memcg=stats_pb2.Memcg(version=2, path="/vault", usage=1 << 20, limit=1 << 30, file=4096,
                              file_mapped=4096, unevictable=8192),
        hibernation_inhibited=True,
        direct_map=stats_pb2.DirectMap(source="kernel", level2_splits=1, level3_splits=0,
                                       directmap_4k=1 << 21, directmap_2m=1 << 30,
                                       directmap_1g=0, directmap_4k_delta=-4096,
                                       directmap_2m_delta=2 << 20, directmap_1g_delta=0,
                                       distinct_2m_regions=1, distinct_1g_regions=1),
        extra={"pool_waste": 0.25},
        keys_by_type={"ed25519": 3, "hmac-sha256": 0},
        operations=[stats_pb2.OperationCount(operation="sign", result="ok", count=7)],
        max_versions_per_key=100,
        identity_quotas=[stats_pb2.IdentityQuota(identity="ci", secret_bytes=640,
                                                 budget_bytes=4096),
                         stats_pb2.IdentityQuota(identity="owner", secret_bytes=64)],
    )


def test_every_field_of_the_message_is_read() -> None:
    s = stats_from_wire(full())
    assert (s.backend, s.protection, s.regions, s.pages_mapped, s.pages_resident,
            s.bytes_locked, s.key_bytes, s.hibernation_inhibited) == (
        "memfd_secret", "secretmem", 2, 3, 3, 12288, 96, True)
    assert s.size_classes == (SizeClass(size=32, pages=1, slots_used=3, slots_free=125),)
    assert s.memlock == Memlock(soft=65536, hard=131072, locked=12288, cap_ipc_lock=False,
                                headroom_bytes=53248, headroom_keys={"ed25519": 8, "x25519": 9})
    assert s.memcg == Memcg(version=2, path="/vault", usage=1 << 20, limit=1 << 30, file=4096,
                            file_mapped=4096, unevictable=8192)
    assert s.direct_map == DirectMap(
        source="kernel", level2_splits=1, level3_splits=0, directmap_4k=1 << 21,
        directmap_2m=1 << 30, directmap_1g=0, directmap_4k_delta=-4096,
        directmap_2m_delta=2 << 20, directmap_1g_delta=0, distinct_2m_regions=1,
        distinct_1g_regions=1)
    assert s.extra == {"pool_waste": 0.25}
    assert s.keys_by_type == {"ed25519": 3, "hmac-sha256": 0}
    assert s.operations == (OperationCount(operation="sign", result="ok", count=7),)
    assert s.max_versions_per_key == 100
    assert s.identity_quotas == (IdentityQuota("ci", 640, 4096), IdentityQuota("owner", 64, None))


def test_absent_optional_fields_are_none_and_zero_stays_zero() -> None:
    msg = full()
    for field in ("soft", "hard", "headroom_bytes"):
        msg.memlock.ClearField(field)  # unlimited
    msg.direct_map.ClearField("distinct_2m_regions")  # not root
    msg.direct_map.ClearField("distinct_1g_regions")
    msg.memlock.headroom_keys.clear()
    s = stats_from_wire(msg)
    assert (s.memlock.soft, s.memlock.hard, s.memlock.headroom_bytes) == (None, None, None)
    assert s.memlock.headroom_keys == {}
    assert s.direct_map.distinct_2m_regions is None and s.direct_map.distinct_1g_regions is None
    msg.memcg.ClearField("limit")
    msg.memcg.usage = 0  # set to zero: present, not absent
    s = stats_from_wire(msg)
    assert s.memcg is not None and s.memcg.limit is None and s.memcg.usage == 0
    msg.ClearField("memcg")
    assert stats_from_wire(msg).memcg is None


def test_the_record_is_frozen_all_the_way_down() -> None:
    s = stats_from_wire(full())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.backend = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.memlock.soft = 0  # type: ignore[misc]
    assert s.memcg is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.memcg.limit = 0  # type: ignore[misc]
    assert isinstance(s.size_classes, tuple) and isinstance(s.operations, tuple)


def test_no_protobuf_value_reaches_the_caller() -> None:
    def walk(value: object) -> None:
        assert not isinstance(value, Message), value
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, Mapping):
            assert type(value) is dict, type(value)  # not a protobuf ScalarMap
            for k, v in value.items():
                assert type(k) is str and type(v) in (int, float), (k, v)
        elif isinstance(value, tuple):
            for item in value:
                walk(item)
        else:
            assert value is None or type(value) in (int, str, bool, float), (value, type(value))

    walk(stats_from_wire(full()))
    walk(stats_from_wire(stats_pb2.Stats()))


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_record_has_the_fields_of_its_message(name: str) -> None:
    """Same names, in the proto's order; None allowed exactly where the proto says
    ``optional`` (which it records as a one-field oneof)."""
    descriptor: Descriptor = getattr(stats_pb2, name).DESCRIPTOR
    record = RECORDS[name]
    hints = typing.get_type_hints(record)
    assert [f.name for f in dataclasses.fields(record)] == [f.name for f in descriptor.fields]
    for field in descriptor.fields:
        optional = field.containing_oneof is not None
        allows_none = type(None) in typing.get_args(hints[field.name])
        assert allows_none == optional, f"{name}.{field.name}"
