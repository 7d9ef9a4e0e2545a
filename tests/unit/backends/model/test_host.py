"""Importing this machine's memory state into a model."""

from __future__ import annotations

from secretvault.backends.model._directmap import BYTES_2M
from secretvault.backends.model._host import HostMemory, _pagetypes, host_machine
from secretvault.backends.model._physmem import MOVABLE, RECLAIMABLE, UNMOVABLE

# ruff: noqa: E501  (a verbatim /proc/pagetypeinfo)

PAGETYPEINFO = """\
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10
Node    0, zone      DMA, type    Unmovable      0      0      0      0      0      0      0      0      1      0      0
Node    0, zone      DMA, type      Movable      0      0      0      0      0      0      0      0      0      1      3
Node    0, zone    DMA32, type      Movable      4      1      2      2      2      2      1      4      4      2    752
Node    0, zone   Normal, type    Unmovable    406    534   1142    841    375    144    154     91     29      1      0
Node    0, zone   Normal, type      Movable  10667   9170   5535   3078   1419    690    453    226    338    220    944
Node    0, zone   Normal, type  Reclaimable   2959   2812   1158    751    444    225     95     31      5      0      0
Node    0, zone   Normal, type   HighAtomic      0      0      0      0      0      0      0      0      0      0      0

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate
Node 0, zone      DMA            1            7            0            0            0
Node 0, zone    DMA32            0         1528            0            0            0
Node 0, zone   Normal          155         3073          164            0            0
"""


def test_pagetypeinfo_is_summed_over_zones_above_dma_with_order_10_as_two_pageblocks() -> None:
    free, blocks = _pagetypes(PAGETYPEINFO)
    assert blocks == (155, 3073 + 1528, 164)
    assert free[UNMOVABLE][0] == 406 and free[UNMOVABLE][9] == 1
    assert free[MOVABLE][9] == 2 + 752 * 2 + 220 + 944 * 2
    assert free[RECLAIMABLE][8] == 5


def host(**kw: object) -> HostMemory:
    free, blocks = _pagetypes(PAGETYPEINFO)
    base = dict(
        mem_total=24 << 30, mem_free=23 << 30, directmap_4k=306 << 20,
        directmap_2m=7026688 << 10, directmap_1g=19 << 30, level2_splits=143,
        level3_splits=5, managed_pages=2_500_000, pcp=(300, 0),
        free_blocks=free, pageblocks=blocks,
    )
    base.update(kw)
    return HostMemory(**base)  # type: ignore[arg-type]


def test_the_boot_layout_undoes_the_splits_since_boot() -> None:
    b4k, b2m, b1g = host().boot_layout
    assert b4k == (306 << 20) - 143 * BYTES_2M  # 20 MiB: what the kernel mapped at 4 KiB
    assert b1g == 24 << 30
    assert b4k + b2m + b1g == (306 << 20) + (7026688 << 10) + (19 << 30)


def test_the_model_starts_in_the_machines_state() -> None:
    h = host()
    m = host_machine(h)
    phys, dm = m.phys, m.direct_map
    # the per-CPU pages are on their CPU's list: 300 pages make one 256-page run
    assert phys.nr_free[UNMOVABLE] == h.free_blocks_pages(UNMOVABLE)
    assert phys.pcp_pages() == 256
    assert phys.nr_free[RECLAIMABLE] == h.free_blocks_pages(RECLAIMABLE)
    # the machine's split regions are split in the model, uncounted
    assert dm.level2_splits == 0
    assert dm.bytes_4k >= 143 * BYTES_2M
    # boot layout by the machine's counts: 4 KiB, 2 MiB below the 1 GiB entries
    assert abs(m.boot_directmap[0] - h.boot_layout[0]) < BYTES_2M
    assert m.boot_directmap[2] > 16 << 30
    by_type = phys.pageblocks_by_type()
    assert by_type[UNMOVABLE] >= 155 and by_type[RECLAIMABLE] == 164


ZONEINFO = """\
Node 0, zone      DMA
  pages free     3840
        managed  3840
  pagesets
    cpu: 0
              count:    7
Node 0, zone    DMA32
        managed  772798
  pagesets
    cpu: 0
              count:    941
    cpu: 1
              count:    981
Node 0, zone   Normal
        managed  1736704
  pagesets
    cpu: 0
              count:    250994
    cpu: 1
              count:    46933
"""


def test_zoneinfo_gives_managed_pages_and_per_cpu_pages_by_cpu() -> None:
    from secretvault.backends.model._host import _zoneinfo

    assert _zoneinfo(ZONEINFO) == (772798 + 1736704, (941 + 250994, 981 + 46933))


def test_the_machine_keeps_its_count_of_1g_entries() -> None:
    m = host_machine(host(directmap_1g=3 << 30))
    assert m.direct_map.bytes_1g == 3 << 30


def test_splits_beyond_the_unmovable_pageblocks_are_movable_ones_and_lose_no_free_memory() -> None:
    # a machine whose old regions hold movable memory now: 2,000 splits, 155
    # unmovable pageblocks; every free block must still find room
    for splits in (143, 2000):
        h = host(level2_splits=splits)
        m = host_machine(h)
        assert abs(m.phys.free_pages() * 4096 - h.mem_free) < h.mem_free // 100, splits
        assert m.direct_map.bytes_4k >= splits * BYTES_2M
