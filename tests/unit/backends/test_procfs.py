"""secretvault.backends._procfs: /proc and cgroup readers, on this machine and on fixture trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secretvault.backends import _procfs, _sodium, _sys
from secretvault.backends._procfs import PAGES_PER_1G, PAGES_PER_2M


def test_vmstat_selects_counters() -> None:
    got = _procfs.vmstat("nr_free_pages", "no_such_counter")
    assert set(got) == {"nr_free_pages"}
    assert got["nr_free_pages"] > 0


def test_meminfo_in_bytes() -> None:
    mem = _procfs.meminfo()
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # MemTotal is physical memory less what the kernel reserved at boot
    assert 0.5 * phys < mem["MemTotal"] <= phys
    assert mem["MemTotal"] % 1024 == 0
    if "HugePages_Total" in mem:  # a count, not kB: left as is
        assert mem["HugePages_Total"] < 1 << 30


def test_status_field_and_cap() -> None:
    assert _procfs.status_field("VmLck") == _sys.vm_locked_bytes()
    assert _procfs.status_field("NoSuchField") is None
    assert _procfs.status_field("VmRSS", os.getpid()) is not None


@pytest.mark.root
def test_root_has_cap_ipc_lock() -> None:
    assert _procfs.has_cap_ipc_lock()


def test_distinct_regions_arithmetic() -> None:
    frames = [0, 1, PAGES_PER_2M - 1, PAGES_PER_2M, PAGES_PER_1G - 1, PAGES_PER_1G, PAGES_PER_1G]
    # 2 MiB regions: 0, 1, 511, 512 -> 4;  1 GiB regions: 0, 1 -> 2
    assert _procfs.distinct_regions(frames) == (4, 2)
    assert _procfs.distinct_regions([]) == (0, 0)


def test_pagemap_on_locked_anonymous_memory() -> None:
    n = 8
    addr = _sys.mmap_anonymous_locked(n * _sys.PAGE_SIZE)
    try:
        # mlock faults every page in up front: all present
        present, frames = _procfs.pagemap(addr, n)
        assert present == n
        if os.geteuid() == 0:
            assert len(frames) == n and len(set(frames)) == n and all(frames)
        else:
            assert frames == []  # PFNs read as zero without CAP_SYS_ADMIN
    finally:
        _sys.munmap(addr, n * _sys.PAGE_SIZE)
    assert _procfs.pagemap(addr, n)[0] == 0


@pytest.mark.memfd_secret
def test_pagemap_on_secret_memory_follows_first_touch() -> None:
    n = 6
    addr = _sys.create_secret_region(n * _sys.PAGE_SIZE)
    try:
        assert _procfs.pagemap(addr, n) == (0, [])
        for i in (0, 2, 5):
            _sodium.randombytes_buf(_sodium.pointer(addr + i * _sys.PAGE_SIZE), 1)
        present, frames = _procfs.pagemap(addr, n)
        assert present == 3
        assert len(frames) == (3 if os.geteuid() == 0 else 0)
    finally:
        _sys.munmap(addr, n * _sys.PAGE_SIZE)


# --- memcg, from fixture trees ------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


V1_UNLIMITED = "9223372036854771712\n"


def v1_tree(tmp_path: Path, cgpath: str, limit: str) -> tuple[str, str]:
    cgroup_file = tmp_path / "cgroup"
    write(cgroup_file, f"5:cpu,cpuacct:/\n4:memory:{cgpath}\n1:name=systemd:/\n0::/\n")
    d = tmp_path / "fs" / "memory" / cgpath.lstrip("/")
    write(d / "memory.usage_in_bytes", "37502976\n")
    write(d / "memory.limit_in_bytes", limit)
    write(
        d / "memory.stat",
        "cache 24461312\nrss 8000000\nmapped_file 2248704\nunevictable 16384\ntotal_cache 99\n",
    )
    return str(cgroup_file), str(tmp_path / "fs")


def test_memcg_v1(tmp_path: Path) -> None:
    got = _procfs.memcg(*v1_tree(tmp_path, "/process_api/abc", "1073741824\n"))
    assert got == _procfs.MemcgReading(
        version=1,
        path="/process_api/abc",
        usage=37502976,
        limit=1 << 30,
        file=24461312,
        file_mapped=2248704,
        unevictable=16384,
    )


def test_memcg_v1_unlimited(tmp_path: Path) -> None:
    got = _procfs.memcg(*v1_tree(tmp_path, "/a", V1_UNLIMITED))
    assert got is not None and got.limit is None and got.usage == 37502976


def test_memcg_v1_in_a_cgroup_namespace_uses_the_mount(tmp_path: Path) -> None:
    cgroup_file, root = v1_tree(tmp_path, "/", "2097152\n")
    # the process sees a path that is not under the mount (namespaced)
    write(Path(cgroup_file), "4:memory:/not/here\n")
    got = _procfs.memcg(cgroup_file, root)
    assert got is not None and got.limit == 2 << 20


def v2_tree(tmp_path: Path, limit: str) -> tuple[str, str]:
    cgroup_file = tmp_path / "cgroup"
    write(cgroup_file, "0::/system.slice/secretvault.service\n")
    d = tmp_path / "fs" / "system.slice" / "secretvault.service"
    write(d / "memory.current", "5242880\n")
    write(d / "memory.max", limit)
    write(
        d / "memory.stat",
        "anon 1000\nfile 409600\nkernel 1\nfile_mapped 204800\nunevictable 409600\n",
    )
    return str(cgroup_file), str(tmp_path / "fs")


def test_memcg_v2(tmp_path: Path) -> None:
    got = _procfs.memcg(*v2_tree(tmp_path, "268435456\n"))
    assert got == _procfs.MemcgReading(
        version=2,
        path="/system.slice/secretvault.service",
        usage=5 << 20,
        limit=256 << 20,
        file=409600,
        file_mapped=204800,
        unevictable=409600,
    )


def test_memcg_v2_max_is_no_limit(tmp_path: Path) -> None:
    got = _procfs.memcg(*v2_tree(tmp_path, "max\n"))
    assert got is not None and got.version == 2 and got.limit is None


def test_memcg_v2_without_the_memory_controller(tmp_path: Path) -> None:
    cgroup_file, root = v2_tree(tmp_path, "max\n")
    os.remove(Path(root) / "system.slice" / "secretvault.service" / "memory.current")
    assert _procfs.memcg(cgroup_file, root) is None


def test_memcg_unreadable(tmp_path: Path) -> None:
    assert _procfs.memcg(str(tmp_path / "missing"), str(tmp_path)) is None


def test_memcg_on_this_machine_matches_the_files() -> None:
    got = _procfs.memcg()
    if got is None:
        pytest.skip("no memory cgroup readable on this machine (/proc/self/cgroup)")
    assert got.version in (1, 2)
    assert got.usage is None or got.usage > 0


def test_split_counters_read_what_vmstat_says() -> None:
    names = ("direct_map_level2_splits", "direct_map_level3_splits")
    counters = _procfs.SplitCounters()
    try:
        for _ in range(3):
            before = _procfs.vmstat(*names)
            fast = counters.read()
            after = _procfs.vmstat(*names)
            if before == after:  # no split in between (they are system-wide)
                break
        assert fast == (before.get(names[0], 0), before.get(names[1], 0))
    finally:
        counters.close()
