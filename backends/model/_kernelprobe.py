"""The kernel side of the churn sequence: real secret memory, measured.

:func:`run_kernel` runs :mod:`~secretvault.backends.model.churn`'s sequence
on ``memfd_secret`` (root for the frames), reading the split counters and
``/proc/self/pagemap`` at every checkpoint, with idle windows before and
after for the splits other kernel activity makes.  Two preparations make
the run say something on any machine:

* ``occupancy``: memory filled first to that share of ``MemTotal``, half
  anonymous, half shmem page cache, by a child process that holds it for
  the run (and exits when this process does: it waits on its stdin);
* ``reach_fresh``: the free unmovable pages earlier secret memory left in
  split regions (pagetypeinfo's unmovable lists and the per-CPU lists) are
  held aside as secret memory first.  The kernel reuses them before any
  fresh region (``docs/models.md``), so on a machine that ran secret memory
  before, a sequence without this lands wholly in old regions and splits
  nothing; with it, it meets fresh regions as a fresh machine does.

The state the model starts from is read *after* both preparations.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable

from secretvault.backends import _procfs, _sodium
from secretvault.backends._base import Region
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends.model._directmap import PAGES_PER_2M
from secretvault.backends.model._host import HostMemory
from secretvault.backends.model._physmem import UNMOVABLE
from secretvault.backends.model._sequence import (
    GROWTH,
    SMALL_REGIONS,
    Step,
    prefix_names,
    step_names,
)

PAGE = 4096
GiB = 1 << 30
MARGIN = 2 * GiB  # memory left free beyond what the sequence needs


class ProbeUnavailable(RuntimeError):
    """This machine cannot run the sequence as asked; the message says why."""


def touch_page(address: int) -> None:
    # one byte written: the first touch faults the page in, which is when
    # secretmem allocates it and takes it out of the direct map
    _sodium.sodium_memzero(_sodium.pointer(address), 1)


def _idle(counters: _procfs.SplitCounters) -> tuple[int, float]:
    a, t = counters.read()[0], time.monotonic()
    time.sleep(1.0)
    return counters.read()[0] - a, time.monotonic() - t


def run_kernel(*, keep_first: bool = False, reach_fresh: bool = False,
               occupancy: float = 0.0) -> tuple[HostMemory, list[Step], float]:
    """The sequence on real secret memory: the state it began in, the steps, noise/s."""
    need = (2 if keep_first else 1) * GROWTH[-1] * PAGE + MARGIN
    fresh_enough((2 if keep_first else 1) * GROWTH[-1] * PAGE)
    # one CPU for the whole run: per-CPU lists serve only their own CPU
    affinity = os.sched_getaffinity(0)
    cpu = min(affinity)
    os.sched_setaffinity(0, {cpu})
    backend = MemfdSecretBackend()
    counters = _procfs.SplitCounters()
    filler = None
    steps: list[Step] = []

    def measured(name: str, run: Callable[[], list[int]]) -> None:
        """Run one step; ``run`` returns the frames of the pages it touched."""
        a, t = counters.read(), time.monotonic()
        frames = run()
        b = counters.read()
        regions = frozenset(p // PAGES_PER_2M for p in frames)
        steps.append(Step(name, b[0] - a[0], b[1] - a[1], len(regions),
                          time.monotonic() - t, regions))

    def touch(region: Region, lo: int, hi: int) -> list[int]:
        for i in range(lo, hi):
            touch_page(region.address + i * PAGE)
        return _procfs.pagemap(region.address + lo * PAGE, hi - lo)[1]

    def grow(prefix: str) -> Region:
        region = backend.allocate(GROWTH[-1])
        done = 0
        for size, name in zip(GROWTH, prefix_names(prefix), strict=True):
            measured(name, functools.partial(touch, region, done, size))
            done = size
        return region

    def free(region: Region) -> list[int]:
        if not keep_first:
            backend.free(region)
        return []

    def small() -> list[int]:
        return [p for _ in range(SMALL_REGIONS) for p in touch(backend.allocate(1), 0, 1)]

    try:
        if occupancy:
            filler = _fill(occupancy, need)
        if reach_fresh:
            hold_pool(backend, need)
        # again after the preparations: holding the pool can itself take fresh
        # regions (per-CPU pages of other CPUs and of other types are counted
        # in it but not usable here), and a sequence that meets too few says
        # nothing (measured: 40 new splits on a machine left 3.4 GiB unsplit)
        fresh_enough((2 if keep_first else 1) * GROWTH[-1] * PAGE)
        n1, s1 = _idle(counters)
        host = dataclasses.replace(HostMemory.read(), cpu=cpu, pcp_unmovable=not reach_fresh)
        first = grow("grow")
        measured("free", functools.partial(free, first))
        if not keep_first:
            _settle_free()
        measured(step_names()[len(GROWTH) + 1], small)
        grow("again")
        n2, s2 = _idle(counters)
    finally:
        backend.close()
        counters.close()
        os.sched_setaffinity(0, affinity)
        if filler is not None:
            filler.kill()
            filler.wait()
    return host, steps, (n1 + n2) / (s1 + s2)


#: free page reporting (virtio-balloon, ``page_reporting``) takes each free
#: block of its order off the free lists while the host is told of it, from 2 s
#: after the blocks were freed: a regrowth meanwhile misses the pages just
#: freed and goes to fresh regions, which no allocator model predicts (seen on
#: the project's VMs, reporting order 9: about 1.75 of 2 GiB freed missing)
SETTLE_SECONDS = 20.0
SETTLE_DELAY = 2.5  # the kernel's page_reporting_delay is 2 s


def _settle_free() -> None:
    """Wait, after a free, until MemFree is back where the free left it and steady
    (the host's free page reporting has given every block back), at most
    :data:`SETTLE_SECONDS`; on a kernel without page reporting, ``SETTLE_DELAY``."""
    def free_now() -> int:
        return _procfs.meminfo().get("MemFree", 0)

    freed, start = free_now(), time.monotonic()
    time.sleep(SETTLE_DELAY)
    last = free_now()
    while time.monotonic() - start < SETTLE_SECONDS:
        time.sleep(0.25)
        now = free_now()
        if abs(now - last) < (1 << 20) and now >= freed - (8 << 20):
            return
        last = now


def fresh_enough(nbytes: int) -> None:
    """Refuse when the direct map lacks the whole 2 MiB regions ``nbytes`` of
    fresh secret memory need (twice that: where they land is the kernel's)."""
    info = _procfs.meminfo()
    whole = info.get("DirectMap2M", 0) + info.get("DirectMap1G", 0)
    if whole < 2 * nbytes:
        raise ProbeUnavailable(
            f"fresh 2 MiB regions: {whole >> 20} MiB of this machine's direct map is unsplit, "
            f"a run needs about {2 * nbytes >> 20} MiB (earlier secret memory split the rest, "
            "for good: reboot for a fresh machine)")


def hold_pool(backend: MemfdSecretBackend, need: int) -> None:
    """Touch as many secret pages as the unmovable and per-CPU lists hold free."""
    host = HostMemory.read()
    pages = host.free_blocks_pages(UNMOVABLE) + host.pcp_pages
    if host.mem_free - pages * PAGE < need:
        raise ProbeUnavailable(
            f"fresh regions: {pages * PAGE >> 20} MiB of free unmovable memory, left in split "
            f"regions by earlier secret memory, cannot be held aside with {need >> 20} MiB left "
            "for the sequence (reboot for a fresh machine)")
    if pages:
        region = backend.allocate(pages)
        for i in range(pages):
            touch_page(region.address + i * PAGE)


def _fill(occupancy: float, need: int) -> subprocess.Popen[bytes]:
    """A child holding anonymous and shmem memory up to ``occupancy`` of MemTotal."""
    info = _procfs.meminfo()
    available = info.get("MemAvailable", 0)
    want = max(0, int(occupancy * info["MemTotal"]) - (info["MemTotal"] - available))
    if available - want < need:
        raise ProbeUnavailable(
            f"memory: filling to {occupancy:.0%} leaves less than the {need >> 20} MiB the "
            "sequence needs")
    child = subprocess.Popen(
        [sys.executable, "-m", "secretvault.backends.model._kernelprobe", str(want)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None
    if child.stdout.readline().strip() != b"ready":
        child.kill()
        child.wait()
        raise ProbeUnavailable("memory: the filling process could not hold its memory")
    return child


def _hold(nbytes: int) -> None:
    """The filling child: half anonymous, half shmem page cache; then wait on stdin."""
    import mmap

    half = max(PAGE, nbytes // 2 // PAGE * PAGE)
    anon = mmap.mmap(-1, half, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fd = os.memfd_create("secretvault-churn-fill")
    os.ftruncate(fd, half)
    shm = mmap.mmap(fd, half)
    for m in (anon, shm):
        for off in range(0, half, PAGE):
            m[off] = 1
    print("ready", flush=True)
    sys.stdin.buffer.read()  # until the parent goes


if __name__ == "__main__":
    _hold(int(sys.argv[1]))
