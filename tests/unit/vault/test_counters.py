"""OperationCounters: lock-free per-thread shards that add up to exact totals."""

from __future__ import annotations

import sys
import threading

from secretvault.vault.stats import OperationCount, OperationCounters


def test_counts_by_operation_and_result_in_order() -> None:
    c = OperationCounters()
    c.record("sign", "ok", 3)
    c.record("sign", "NOT_FOUND")
    c.record("decrypt", "ok")
    c.record("sign", "ok")
    assert c.snapshot() == (OperationCount("decrypt", "ok", 1),
                            OperationCount("sign", "NOT_FOUND", 1),
                            OperationCount("sign", "ok", 4))


def test_many_threads_counting_at_once_lose_nothing() -> None:
    c = OperationCounters()
    per_thread, threads = 20_000, 8
    start = threading.Barrier(threads + 1)
    snapshots: list[int] = []

    def count() -> None:
        start.wait()
        for _ in range(per_thread):
            c.record("sign", "ok")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        ts = [threading.Thread(target=count) for _ in range(threads)]
        for t in ts:
            t.start()
        start.wait()
        while any(t.is_alive() for t in ts):  # snapshots taken while they count
            snapshots.append(sum(o.count for o in c.snapshot()))
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert c.snapshot() == (OperationCount("sign", "ok", per_thread * threads),)
    assert snapshots == sorted(snapshots)  # a total never goes backwards


def test_ended_threads_are_folded_in_not_kept() -> None:
    c = OperationCounters()
    for i in range(50):
        t = threading.Thread(target=c.record, args=("mac", "ok", i))
        t.start()
        t.join()
    c.record("mac", "ok")  # this thread's shard
    assert c.snapshot() == (OperationCount("mac", "ok", sum(range(50)) + 1),)
    # only the last ended thread and this one are still shards
    assert len(c._shards) <= 2
