"""What the vault reports about itself, as the client's own frozen records.

:class:`Stats` (with :class:`SizeClass`, :class:`Memlock`, :class:`Memcg`,
:class:`DirectMap`, :class:`OperationCount`, :class:`Process` and
:class:`IdentityQuota` and :class:`Worker` for its sections) carries the fields of the wire
``Stats`` message under the same names, in Python types:
``int``, ``str``, ``bool``, tuples for repeated fields, mappings for map
fields, and ``None`` exactly where the message leaves an optional field
absent (an unlimited memlock, no memory cgroup, a figure only root can
read).  :func:`stats_from_wire` is the one place the message is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from secretvault.api._proto.secretvault.v1 import stats_pb2


@dataclass(frozen=True, slots=True)
class SizeClass:
    """One slot size of the allocator and the pages it holds."""

    #: the slot size in bytes
    size: int
    pages: int
    slots_used: int
    slots_free: int


@dataclass(frozen=True, slots=True)
class Memlock:
    """RLIMIT_MEMLOCK, which secret memory is charged to, and what is left of it."""

    #: the soft and hard limit in bytes; None when unlimited
    soft: int | None
    hard: int | None
    #: VmLck of the server process
    locked: int
    #: CAP_IPC_LOCK bypasses the limit
    cap_ipc_lock: bool
    #: bytes left under the limit; None when unlimited
    headroom_bytes: int | None
    #: how many more keys of each type fit; a type left out is unlimited
    headroom_keys: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Memcg:
    """The server's memory cgroup; a figure it does not report is None.

    Secret pages are charged as page cache: ``file``, ``file_mapped`` and
    ``unevictable`` include them.
    """

    #: 1 or 2
    version: int
    path: str
    usage: int | None
    #: None when there is no limit
    limit: int | None
    file: int | None
    file_mapped: int | None
    unevictable: int | None


@dataclass(frozen=True, slots=True)
class DirectMap:
    """Direct-map fragmentation: the kernel's 2 MiB / 1 GiB mappings split to hold the pages."""

    #: "kernel" (deltas since the server started, all kernel activity) or
    #: "model" (the simulation's own counters)
    source: str
    level2_splits: int
    level3_splits: int
    directmap_4k: int
    directmap_2m: int
    directmap_1g: int
    directmap_4k_delta: int
    directmap_2m_delta: int
    directmap_1g_delta: int
    #: distinct physical 2 MiB / 1 GiB regions holding the vault's own pages;
    #: None when the server cannot read /proc/self/pagemap (not root)
    distinct_2m_regions: int | None
    distinct_1g_regions: int | None


@dataclass(frozen=True, slots=True)
class OperationCount:
    operation: str
    #: "ok" or the error's gRPC code name
    result: str
    count: int


@dataclass(frozen=True, slots=True)
class Process:
    """Who can read the server's memory with a debugger, and its capabilities.

    No user-space program keeps root (CAP_SYS_PTRACE) out: only
    ``kernel.yama.ptrace_scope=3`` forbids every attach.
    """

    #: kernel.yama.ptrace_scope (0-3); None when the kernel has no Yama
    yama_ptrace_scope: int | None
    #: False once the server hardened itself (then only CAP_SYS_PTRACE may attach)
    dumpable: bool
    #: whether a process with CAP_SYS_PTRACE (root) may attach: False only at scope 3
    root_can_attach: bool
    #: "yes", "ancestors" (scope 1) or "no": a process of the server's own user
    user_can_attach: str
    #: the pid of the tracer attached now; 0 when none
    tracer_pid: int
    #: the server zeroes its secret memory and exits 3 when a tracer appears
    stop_on_tracer: bool
    #: seconds between its checks (0 when it does not check)
    tracer_check_seconds: float
    #: the capability sets, as names ("cap_ipc_lock"), of any thread; empty: none
    capabilities_effective: tuple[str, ...]
    capabilities_permitted: tuple[str, ...]
    capabilities_bounding: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdentityQuota:
    """What the key versions one identity created hold of secret memory, and its quota."""

    #: the policy identity ("owner": the server's own user)
    identity: str
    #: bytes of slots held by the live key versions it created
    secret_bytes: int
    #: its quota in bytes (the policy's secret_memory); None when unlimited
    budget_bytes: int | None


@dataclass(frozen=True, slots=True)
class Feed:
    """Where the process is in its store's change feed (the others' changes, applied)."""

    #: the store, as messages name it (a path, or a URL without its password)
    store: str
    #: the last change of the feed this process has
    position: int
    #: changes applied from the feed since start (made by other processes)
    applied: int
    #: the last applied change: its commit to its application here, in seconds
    last_lag_seconds: float
    #: False while the store cannot be reached (changes fail; crypto goes on)
    store_reachable: bool
    #: why not, while it is not ("" otherwise)
    error: str


@dataclass(frozen=True, slots=True)
class Worker:
    """Which worker of ``secretvault serve --workers N`` answered."""

    #: 0 .. count-1 (a restarted worker keeps its index)
    index: int
    #: N; each worker holds its own copy of every key: these stats are one worker's
    count: int
    #: the supervisor that started it
    supervisor_pid: int


@dataclass(frozen=True, slots=True)
class Stats:
    """What secret memory costs right now, as the vault reported it."""

    #: "memfd_secret", "page-model" or "pooled-pmd-model"
    backend: str
    #: "secretmem", or "model": keys are NOT in secret memory
    protection: str
    regions: int
    pages_mapped: int
    pages_resident: int
    bytes_locked: int
    #: bytes in used slots: the keys' versions and the vault's own secrets (KEK,
    #: row-MAC key, import key, HMAC scratch)
    key_bytes: int
    size_classes: tuple[SizeClass, ...]
    memlock: Memlock
    #: None when the server cannot read its memory cgroup
    memcg: Memcg | None
    hibernation_inhibited: bool
    direct_map: DirectMap
    #: backend-specific figures (the models' pool waste, failures...)
    extra: Mapping[str, float]
    keys_by_type: Mapping[str, int]
    operations: tuple[OperationCount, ...]
    #: debugger exposure and capabilities; None from a server too old to report them
    process: Process | None
    #: versions one key may have; 0 when there is no limit
    max_versions_per_key: int = 0
    #: every policy identity, and any other holding secret memory, by name
    identity_quotas: tuple[IdentityQuota, ...] = ()
    #: the store's change feed, as this process follows it; None from an older server
    feed: Feed | None = None
    #: the pid of the process that answered (every figure is its own); 0 from an
    #: older server
    pid: int = 0
    #: which worker it is; None when the server is one process
    worker: Worker | None = None


def _optional(msg: Message, field: str) -> int | None:
    """An optional integer field: None when the message leaves it absent."""
    return int(getattr(msg, field)) if msg.HasField(field) else None


def _memcg(msg: stats_pb2.Memcg) -> Memcg:
    return Memcg(
        version=msg.version,
        path=msg.path,
        usage=_optional(msg, "usage"),
        limit=_optional(msg, "limit"),
        file=_optional(msg, "file"),
        file_mapped=_optional(msg, "file_mapped"),
        unevictable=_optional(msg, "unevictable"),
    )


def _process(msg: stats_pb2.Process) -> Process:
    return Process(
        yama_ptrace_scope=_optional(msg, "yama_ptrace_scope"),
        dumpable=msg.dumpable,
        root_can_attach=msg.root_can_attach,
        user_can_attach=msg.user_can_attach,
        tracer_pid=msg.tracer_pid,
        stop_on_tracer=msg.stop_on_tracer,
        tracer_check_seconds=msg.tracer_check_seconds,
        capabilities_effective=tuple(msg.capabilities_effective),
        capabilities_permitted=tuple(msg.capabilities_permitted),
        capabilities_bounding=tuple(msg.capabilities_bounding),
    )


def stats_from_wire(msg: stats_pb2.Stats) -> Stats:
    """The record for a ``Stats`` message, field for field."""
    ml, dm = msg.memlock, msg.direct_map
    return Stats(
        backend=msg.backend,
        protection=msg.protection,
        regions=msg.regions,
        pages_mapped=msg.pages_mapped,
        pages_resident=msg.pages_resident,
        bytes_locked=msg.bytes_locked,
        key_bytes=msg.key_bytes,
        size_classes=tuple(
            SizeClass(size=c.size, pages=c.pages, slots_used=c.slots_used, slots_free=c.slots_free)
            for c in msg.size_classes
        ),
        memlock=Memlock(
            soft=_optional(ml, "soft"),
            hard=_optional(ml, "hard"),
            locked=ml.locked,
            cap_ipc_lock=ml.cap_ipc_lock,
            headroom_bytes=_optional(ml, "headroom_bytes"),
            headroom_keys=dict(sorted(ml.headroom_keys.items())),
        ),
        memcg=_memcg(msg.memcg) if msg.HasField("memcg") else None,
        hibernation_inhibited=msg.hibernation_inhibited,
        direct_map=DirectMap(
            source=dm.source,
            level2_splits=dm.level2_splits,
            level3_splits=dm.level3_splits,
            directmap_4k=dm.directmap_4k,
            directmap_2m=dm.directmap_2m,
            directmap_1g=dm.directmap_1g,
            directmap_4k_delta=dm.directmap_4k_delta,
            directmap_2m_delta=dm.directmap_2m_delta,
            directmap_1g_delta=dm.directmap_1g_delta,
            distinct_2m_regions=_optional(dm, "distinct_2m_regions"),
            distinct_1g_regions=_optional(dm, "distinct_1g_regions"),
        ),
        extra=dict(sorted(msg.extra.items())),
        keys_by_type=dict(sorted(msg.keys_by_type.items())),
        operations=tuple(
            OperationCount(operation=o.operation, result=o.result, count=o.count)
            for o in msg.operations
        ),
        process=_process(msg.process) if msg.HasField("process") else None,
        max_versions_per_key=msg.max_versions_per_key,
        identity_quotas=tuple(
            IdentityQuota(identity=q.identity, secret_bytes=q.secret_bytes,
                          budget_bytes=_optional(q, "budget_bytes"))
            for q in msg.identity_quotas
        ),
        feed=Feed(store=msg.feed.store, position=msg.feed.position, applied=msg.feed.applied,
                  last_lag_seconds=msg.feed.last_lag_seconds,
                  store_reachable=msg.feed.store_reachable, error=msg.feed.error)
        if msg.HasField("feed") else None,
        pid=msg.pid,
        worker=Worker(index=msg.worker.index, count=msg.worker.count,
                      supervisor_pid=msg.worker.supervisor_pid)
        if msg.HasField("worker") else None,
    )
