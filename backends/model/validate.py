"""Validate the models against the real kernel (root, memfd_secret, x86-64).

Two questions, on one allocation sequence (one large region touched page
by page in order, then ``small_regions`` one-page regions created one after
another, as the measurements in ``kernel-facts.md`` did):

1. **Does the direct-map model predict the kernel's splits?**  Real secret
   pages are faulted one at a time; after each touch ``/proc/vmstat`` is
   read, so every level-2/level-3 split the kernel makes is attributed to the
   fault that made it.  The physical frames (``/proc/self/pagemap``) are then
   replayed through :class:`DirectMap`, laid out from ``/proc/iomem`` the way
   x86 boot code maps RAM, and the model's split for each fault is compared
   with the kernel's.

2. **Does the buddy model place pages like the kernel?**  The same sequence
   runs on a simulated machine; pages per split and distinct 2 MiB regions
   are compared with the kernel's.

What cannot be known, and how it is handled.  The kernel does not tell which
2 MiB ranges are *already* split when the run starts (no ptdump/kcore here):
earlier secret memory -- other processes', earlier runs' -- leaves its
regions split for good, and freed secret pages are reused first, so new
pages often land in regions split long ago.  The replay therefore treats
every region as whole unless this run split it, which makes its count an
*upper bound*, and the per-fault attribution sorts the first touches of a
2 MiB region into "the kernel split it" and "it was split before the run".
The checks that can fail are:

* **no unexpected split**: the kernel splits only where the model says a
  first touch may split -- never on a later touch of a region, never twice
  for one page -- within the noise allowance;
* **pre-split within budget**: first touches without a split are at most
  the 2 MiB granules the kernel mapped at 4 KiB when the run began
  (``DirectMap4k`` / 2 MiB);
* **known-whole regions split**: a 2 MiB region inside a 1 GiB range whose
  level-3 split this run observed was certainly whole (a 1 GiB entry has no
  2 MiB entries under it), so its first touch *must* split;
* **bounds**: the kernel's total lies between the replay's upper bound
  minus that budget and the upper bound plus the noise allowance.

Noise: other kernel activity (BPF, ftrace, module loading, other processes'
secret memory) splits too.  Idle windows before and after measure its rate;
the allowance is three times the splits expected at that rate over the
run, plus one.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

from secretvault.api.errors import SecretMemoryUnavailable
from secretvault.backends import _procfs
from secretvault.backends._memfd import MemfdSecretBackend
from secretvault.backends.model._directmap import BYTES_2M, PAGES_PER_1G, PAGES_PER_2M, DirectMap
from secretvault.backends.model._kernelprobe import (
    MARGIN,
    ProbeUnavailable,
    fresh_enough,
    hold_pool,
    touch_page,
)
from secretvault.backends.model._machine import GiB, Machine
from secretvault.backends.model._pagebypage import PageByPageDesign
from secretvault.backends.model._validation import PhaseResult, ValidationResult
from secretvault.backends.model._workload import WorkloadConfig

_L2 = "direct_map_level2_splits"
_L3 = "direct_map_level3_splits"


class ValidationUnavailable(RuntimeError):
    """This machine cannot run the validation; the message says what is missing."""


# --- prerequisites -------------------------------------------------------------------


def ram_ranges(text: str | None = None) -> list[tuple[int, int]]:
    """``System RAM`` ranges of /proc/iomem as ``[start_pfn, end_pfn)``.

    Only root sees real addresses; others read zeros (an empty list here).
    """
    if text is None:
        try:
            with open("/proc/iomem", encoding="ascii") as f:
                text = f.read()
        except OSError:
            return []
    out: list[tuple[int, int]] = []
    for line in text.splitlines():
        if line.startswith(" ") or not line.rstrip().endswith(": System RAM"):
            continue  # top-level entries only
        span = line.split(":", 1)[0].strip()
        lo, _, hi = span.partition("-")
        start, end = int(lo, 16), int(hi, 16) + 1
        if end > 1:
            out.append((start // 4096, end // 4096))
    return out


def missing_prerequisite() -> str | None:
    """What this machine lacks for the validation, or None."""
    if platform.machine() != "x86_64":
        return f"the direct-map model is of x86-64; this is {platform.machine()}"
    if os.geteuid() != 0:
        return "root (CAP_SYS_ADMIN) to read physical frames from /proc/self/pagemap"
    if _L2 not in _procfs.vmstat(_L2):
        return f"/proc/vmstat has no {_L2} (kernel too old, or not x86)"
    if not ram_ranges():
        return "readable System RAM ranges in /proc/iomem"
    try:
        MemfdSecretBackend().close()
    except SecretMemoryUnavailable as e:
        return f"memfd_secret(2): {e}"
    return None


# --- the run ------------------------------------------------------------------------------


def _idle(counters: _procfs.SplitCounters, seconds: float) -> tuple[int, float]:
    a = counters.read()
    t = time.monotonic()
    time.sleep(seconds)
    b = counters.read()
    return b[0] - a[0], time.monotonic() - t


def _buddy_model(
    pages: int, small_regions: int, seed: int, occupancy: float
) -> tuple[list[int], list[int], int, int]:
    """The same sequence on a simulated idle machine: frames and splits.

    4 GiB, or more when the run at the host's occupancy needs it: a machine
    whose other secret memory is held aside (``reach_fresh``) can be 90%
    occupied, and the model must still have room for the run's pages."""
    room = math.ceil(pages * 4096 * 1.5 / max(0.1, 1 - occupancy) / GiB) * GiB
    machine = Machine(
        memory_bytes=max(4 * GiB, room),
        seed=seed,
        workload=WorkloadConfig(occupancy=occupancy, ops_per_fault=0.1),
    )
    design = PageByPageDesign(machine)
    proc = machine.spawn(memlock_limit=None)
    dm = machine.direct_map
    f = design.mmap(proc, pages)
    big = [design.fault(f, i) for i in range(pages)]
    l2_big = dm.level2_splits
    small = [design.fault(design.mmap(proc, 1), 0) for _ in range(small_regions)]
    return big, small, l2_big, dm.level2_splits - l2_big


def validate(
    *,
    pages: int | None = None,
    fresh_splits: int = 8,
    min_pages: int = 8192,
    max_pages: int = 1 << 18,
    small_regions: int = 256,
    idle_seconds: float = 1.0,
    seed: int = 0,
    reach_fresh: bool = True,
) -> ValidationResult:
    """Run the sequence on real secret memory and on the models; compare.

    With ``reach_fresh`` the free unmovable pages earlier secret memory left
    in split regions are first held aside (``_kernelprobe``): they are
    reused before any fresh region, and a machine that ran large secret
    allocations before (the churn test, for one) holds gigabytes of them,
    so 1 GiB would otherwise meet no whole region at all.

    The large region's size: ``pages`` when given; otherwise its pages are
    touched until the kernel has made ``fresh_splits`` level-2 splits (at
    least ``min_pages``, at most ``max_pages``, 1 GiB).  Freed secret pages
    are reused first, so a fixed size would land again in the regions the
    previous run split, the kernel would split nothing, and the first-touch
    rule would go untested; stopping after a few fresh splits exercises it
    while adding only those few permanent splits per run.
    """
    missing = missing_prerequisite()
    if missing is not None:
        raise ValidationUnavailable(f"the validation needs {missing}")
    ranges = ram_ranges()
    counters = _procfs.SplitCounters()
    pool = MemfdSecretBackend()
    try:
        if reach_fresh:
            size = (max_pages if pages is None else pages) * 4096
            try:
                fresh_enough(size)
                hold_pool(pool, size + MARGIN)
                # again: holding the pool can itself take fresh regions (churn's probe)
                fresh_enough(size)
            except ProbeUnavailable as e:
                raise ValidationUnavailable(f"the validation needs {e}") from None
        return _validate(
            counters,
            ranges,
            (pages, pages) if pages is not None else (min_pages, max_pages),
            None if pages is not None else fresh_splits,
            small_regions,
            idle_seconds,
            seed,
        )
    finally:
        counters.close()
        pool.close()


def _validate(
    counters: _procfs.SplitCounters,
    ranges: list[tuple[int, int]],
    size: tuple[int, int],
    fresh_splits: int | None,
    small_regions: int,
    idle_seconds: float,
    seed: int,
) -> ValidationResult:
    info = _procfs.meminfo()
    occupancy = min(0.9, max(0.0, 1 - info.get("MemAvailable", 0) / max(1, info["MemTotal"])))
    noise_a, secs_a = _idle(counters, idle_seconds)
    mem0 = _procfs.meminfo()
    start = counters.read()
    backend = MemfdSecretBackend()
    deltas: list[tuple[int, int]] = []  # per fault: (level-2, level-3) splits
    t0 = time.monotonic()
    try:
        least, most = size
        # untouched pages cost nothing: secretmem allocates at first touch
        big = backend.allocate(most)
        prev = counters.read()
        made = 0
        for i in range(most):
            if fresh_splits is not None and i >= least and made >= fresh_splits:
                break
            touch_page(big.address + i * 4096)
            cur = counters.read()
            deltas.append((cur[0] - prev[0], cur[1] - prev[1]))
            made += cur[0] - prev[0]
            prev = cur
        pages = len(deltas)
        smalls = []
        for _ in range(small_regions):
            r = backend.allocate(1)
            smalls.append(r)
            touch_page(r.address)
            cur = counters.read()
            deltas.append((cur[0] - prev[0], cur[1] - prev[1]))
            prev = cur
        run_seconds = time.monotonic() - t0
        end = counters.read()
        frames_big = backend.frames(big)  # the touched pages, in order
        frames_small = [pfn for r in smalls for pfn in backend.frames(r)]
    finally:
        backend.close()
    if len(frames_big) != pages or len(frames_small) != small_regions:
        raise ValidationUnavailable(
            "the validation needs every touched page's frame from /proc/self/pagemap; "
            f"got {len(frames_big)} of {pages} and {len(frames_small)} of {small_regions}"
        )
    noise_b, secs_b = _idle(counters, idle_seconds)

    # --- replay through the direct-map model -----------------------------------
    dm = DirectMap.from_ranges(ranges)
    layout = (dm.bytes_4k, dm.bytes_2m, dm.bytes_1g)
    frames = frames_big + frames_small
    model: list[tuple[int, int]] = []
    for pfn in frames:
        l2, l3 = dm.level2_splits, dm.level3_splits
        dm.invalidate_page(pfn)
        model.append((dm.level2_splits - l2, dm.level3_splits - l3))

    # 1 GiB ranges whose level-3 split this run saw: whole until then
    whole_1g: dict[int, int] = {}  # 1 GiB index -> fault index of its split
    for i, ((_k2, k3), (_m2, m3)) in enumerate(zip(deltas, model, strict=True)):
        if k3 and m3:
            whole_1g.setdefault(frames[i] // PAGES_PER_1G, i)
    known_first = known_split = 0
    for i, ((k2, _k3), (m2, _m3)) in enumerate(zip(deltas, model, strict=True)):
        at = whole_1g.get(frames[i] // PAGES_PER_1G)
        if m2 and at is not None and i >= at:
            known_first += 1
            known_split += 1 if k2 else 0

    big_model, small_model, model_l2_big, model_l2_small = _buddy_model(
        pages, small_regions, seed, occupancy
    )

    def phase(name: str, lo: int, hi: int, model_frames: list[int], model_l2: int) -> PhaseResult:
        confirmed = presplit = unexpected = unexpected_l3 = 0
        for (k2, k3), (m2, m3) in zip(deltas[lo:hi], model[lo:hi], strict=True):
            if m2:
                if k2:
                    confirmed += 1
                    unexpected += k2 - 1
                else:
                    presplit += 1
            else:
                unexpected += k2
            unexpected_l3 += max(0, k3 - m3)
        d2m, d1g = _procfs.distinct_regions(frames[lo:hi])
        per_region: dict[int, int] = {}
        fresh: list[int] = []  # regions the kernel split, in the order it did
        for pfn, (k2, _), (m2, _) in zip(frames[lo:hi], deltas[lo:hi], model[lo:hi], strict=True):
            region = pfn // PAGES_PER_2M
            per_region[region] = per_region.get(region, 0) + 1
            if k2 and m2:
                fresh.append(region)
        counts = [per_region[r] for r in fresh[:-2]]
        return PhaseResult(
            name=name,
            pages=hi - lo,
            kernel_l2=sum(k for k, _ in deltas[lo:hi]),
            kernel_l3=sum(k for _, k in deltas[lo:hi]),
            predicted_l2=sum(m for m, _ in model[lo:hi]),
            predicted_l3=sum(m for _, m in model[lo:hi]),
            split_confirmed=confirmed,
            presplit=presplit,
            unexpected=unexpected,
            unexpected_l3=unexpected_l3,
            kernel_distinct_2m=d2m,
            kernel_distinct_1g=d1g,
            model_distinct_2m=len({p // PAGES_PER_2M for p in model_frames}),
            model_l2=model_l2,
            kernel_pages_per_fresh_region=statistics.median(counts) if counts else None,
        )

    phases = (
        phase(f"one region of {pages} pages", 0, pages, big_model, model_l2_big),
        phase(
            f"{small_regions} one-page regions",
            pages,
            pages + small_regions,
            small_model,
            model_l2_small,
        ),
    )
    noise_seconds = secs_a + secs_b
    noise = noise_a + noise_b
    expected_noise = noise / noise_seconds * run_seconds if noise_seconds else 0.0
    return ValidationResult(
        kernel=platform.release(),
        phases=phases,
        kernel_l2_total=end[0] - start[0],
        kernel_l3_total=end[1] - start[1],
        directmap_4k_start=mem0.get("DirectMap4k", 0),
        directmap_2m_start=mem0.get("DirectMap2M", 0),
        directmap_1g_start=mem0.get("DirectMap1G", 0),
        layout_4k=layout[0],
        layout_2m=layout[1],
        layout_1g=layout[2],
        presplit_budget=mem0.get("DirectMap4k", 0) // BYTES_2M,
        known_whole_first_touches=known_first,
        known_whole_split=known_split,
        noise_splits=noise,
        noise_seconds=noise_seconds,
        run_seconds=run_seconds,
        tolerance=math.ceil(3 * expected_noise) + 1,
    )


if __name__ == "__main__":
    import sys

    try:
        result = validate(pages=int(sys.argv[1]) if len(sys.argv) > 1 else None)
    except ValidationUnavailable as e:
        print(e, file=sys.stderr)
        sys.exit(77)
    print(result)
    sys.exit(0 if result.agrees else 1)
