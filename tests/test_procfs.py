"""/proc renderers against text written by hand from Linux 7.1.8's formats.

Each expected text follows the function that prints the file (cited per test) and values
worked out from the kernel: PSS halves for a THP mapped by two mms (smaps_account with
mapcount 2), copy_huge_pmd's pmd_mkold (the child's PMD is not young), kpage_read's 0 for
ZONE_DEVICE, and so on. Addresses: the first 2 MiB-aligned gap below mmap_base 0x7ffff7fff000.
"""

from __future__ import annotations

from foliosim.procfs import render_proc
from tests.conftest import run_text

A = "config thp=always\ntask A\nA: m = mmap 2M\nA: write m 4K\n"
ZERO = "     0 kB\n"


def proc(text: str, name: str, task: str | None = "A") -> str:
    run = run_text(text, check_each=False)
    return render_proc(run.kernel, run.kernel.tasks[task] if task else None, name)


def kb(label: str, value: int, width: int = 8) -> str:
    return f"{label}{value:>{width}} kB\n"


def smap_body(
    rss: int,
    pss: int,
    pss_dirty: int,
    sc: int,
    sd: int,
    pc: int,
    pd: int,
    ref: int,
    anon: int,
    ahp: int = 0,
    spm: int = 0,
    fpm: int = 0,
    rollup: tuple[int, int, int] | None = None,
) -> str:
    """__show_smap() (fs/proc/task_mmu.c): labels padded to 16 columns, values width 8."""
    out = kb("Rss:            ", rss) + kb("Pss:            ", pss)
    out += kb("Pss_Dirty:      ", pss_dirty)
    if rollup:
        out += kb("Pss_Anon:       ", rollup[0]) + kb("Pss_File:       ", rollup[1])
        out += kb("Pss_Shmem:      ", rollup[2])
    out += kb("Shared_Clean:   ", sc) + kb("Shared_Dirty:   ", sd)
    out += kb("Private_Clean:  ", pc) + kb("Private_Dirty:  ", pd)
    out += kb("Referenced:     ", ref) + kb("Anonymous:      ", anon)
    out += kb("KSM:            ", 0) + kb("LazyFree:       ", 0)
    out += kb("AnonHugePages:  ", ahp) + kb("ShmemPmdMapped: ", spm)
    out += kb("FilePmdMapped:  ", fpm) + kb("Shared_Hugetlb: ", 0)
    out += kb("Private_Hugetlb: ", 0, 7)
    out += kb("Swap:           ", 0) + kb("SwapPss:        ", 0) + kb("Locked:         ", 0)
    return out


def test_status_anon_thp() -> None:
    """task_mem() (fs/proc/task_mmu.c): SEQ_PUT_DEC widths of 8 after a tab."""
    expected = (
        "VmPeak:\t    2048 kB\nVmSize:\t    2048 kB\nVmLck:\t       0 kB\nVmPin:\t       0 kB\n"
        "VmHWM:\t    2048 kB\nVmRSS:\t    2048 kB\nRssAnon:\t    2048 kB\nRssFile:\t       0 kB\n"
        "RssShmem:\t       0 kB\nVmData:\t    2048 kB\nVmStk:\t       0 kB\nVmExe:\t       0 kB\n"
        "VmLib:\t       0 kB\nVmPTE:\t       4 kB\nVmSwap:\t       0 kB\n"
        "HugetlbPages:\t       0 kB\n"
    )
    assert proc(A, "status") == expected


def test_smaps_anon_pmd() -> None:
    """show_smap(): header from show_map_vma (anonymous: no name, trailing space), Size,
    KernelPageSize, MMUPageSize, __show_smap, THPeligible (%8u), VmFlags."""
    expected = (
        "7ffff7c00000-7ffff7e00000 rw-p 00000000 00:00 0 \n"
        + kb("Size:           ", 2048)
        + kb("KernelPageSize: ", 4)
        + kb("MMUPageSize:    ", 4)
        + smap_body(2048, 2048, 2048, 0, 0, 0, 2048, 2048, 2048, ahp=2048)
        + "THPeligible:           1\n"
        + "VmFlags: rd wr mr mw me \n"
    )
    assert proc(A, "smaps") == expected


def test_smaps_rollup_after_fork_shares_pss() -> None:
    """show_smaps_rollup(): the [rollup] header padded to column 74; PSS of a THP two mms map
    is halved; copy_huge_pmd made the child's PMD old, so nothing is Referenced there."""
    header = "7ffff7c00000-7ffff7e00000 ---p 00000000 00:00 0"
    expected = (
        header
        + " " * (73 - len(header))
        + "[rollup]\n"
        + smap_body(2048, 1024, 1024, 0, 2048, 0, 0, 0, 2048, ahp=2048, rollup=(1024, 0, 0))
    )
    assert proc(A + "A: fork B\n", "smaps_rollup", "B") == expected


def test_pagemap_anon_pmd_and_huge_zero() -> None:
    """pagemap_pmd_range_thp(): PRESENT|EXCLUSIVE for the THP's pages (PFNs consecutive);
    the huge zero folio is not anonymous, so PM_FILE and never exclusive."""
    text = A + "A: z = mmap 2M r\nA: read z 4K\n"
    expected = (
        "7ffff7a00000-7ffff7c00000 a000000000000400 pfn=0x400 present,file\n"
        "7ffff7c00000-7ffff7e00000 8100000000000200 pfn=0x200 present,exclusive\n"
    )
    assert proc(text, "pagemap") == expected


def test_kpageflags_anon_thp() -> None:
    """stable_page_flags() (fs/proc/page.c): head and tails share the folio's flags;
    UPTODATE 3, LRU 5, MMAP 11, ANON 12, SWAPBACKED 14, HEAD 15 / TAIL 16, THP 22."""
    head = (1 << 3) | (1 << 5) | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15) | (1 << 22)
    tail = head ^ (1 << 15) | (1 << 16)
    names = "uptodate,lru,mmap,anonymous,swapbacked,{},thp"
    expected = (
        f"0x200 {head:#018x} {names.format('compound_head')}\n"
        f"0x201-0x3ff {tail:#018x} {names.format('compound_tail')}\n"
    )
    assert proc(A, "kpageflags") == expected


def test_kpagecount_pte_after_fork() -> None:
    """get_kpage_count(): folio_precise_page_mapcount; pages shared with the child count 2."""
    text = "config thp=never\ntask A\nA: m = mmap 8K\nA: write m 8K\nA: fork B\n"
    assert proc(text, "kpagecount") == "0x1-0x2 2\n"


def test_kpageflags_devdax_reads_zero() -> None:
    """kpage_read(): pfn_to_online_page() is NULL for ZONE_DEVICE, so the entry is 0 (not
    KPF_NOPAGE)."""
    text = "devdax dax0 size=4G align=2M\ntask A\nA: m = mmap 2M rw shared fd=dax0\nA: write m 4K\n"
    assert proc(text, "kpageflags") == "0x1000000-0x10001ff 0x0000000000000000 0\n"
    assert proc(text, "kpagecount") == "0x1000000-0x10001ff 0\n"


def test_smaps_devdax_pmd() -> None:
    """show_smap() of a device-dax VMA: dev_dax_pagesize gives KernelPageSize 2048; a PMD of
    a ZONE_DEVICE folio counts in Rss but in no *PmdMapped field; THPeligible 0 (DAX only
    in page faults); dax_mmap_prepare set VM_HUGEPAGE (hg)."""
    text = "devdax dax0 size=4G align=2M\ntask A\nA: m = mmap 2M rw shared fd=dax0\nA: write m 4K\n"
    prefix = "7ffff7c00000-7ffff7e00000 rw-s 00000000 00:05 2 "
    expected = (
        prefix
        + " " * (73 - len(prefix))
        + "/dev/dax0\n"
        + kb("Size:           ", 2048)
        + kb("KernelPageSize: ", 2048)
        + kb("MMUPageSize:    ", 2048)
        + smap_body(2048, 2048, 2048, 0, 0, 0, 2048, 2048, 0)
        + "THPeligible:           0\n"
        + "VmFlags: rd wr sh mr mw me ms hg \n"
    )
    assert proc(text, "smaps") == expected


def test_vmstat_after_smaps_split_pud() -> None:
    """vmstat_show() (mm/vmstat.c): items in vmstat_text order; THP node items in huge pages.
    Reading smaps over a PUD split it (walk_pud_range): thp_split_pud 1, nothing mapped."""
    text = (
        "devdax dax0 size=4G align=1G\ntask A\nA: m = mmap 1G rw shared fd=dax0\n"
        "A: write m 4K\nA: proc smaps\n"
    )
    out = proc(text, "vmstat", None)
    assert out.splitlines()[0] == "nr_anon_pages 0"
    assert "nr_mapped 0\n" in out
    assert "pgfault 1\n" in out
    assert "thp_split_pmd 0\nthp_scan_exceed_none_pte 0\nthp_split_pud 1\n" in out


def test_meminfo_huge_lines() -> None:
    """meminfo_proc_show() (fs/proc/meminfo.c): show_val_kb of the THP node counters."""
    expected = (
        "AnonHugePages:      2048 kB\nShmemHugePages:        0 kB\n"
        "ShmemPmdMapped:        0 kB\nFileHugePages:         0 kB\n"
        "FilePmdMapped:         0 kB\n"
    )
    assert proc(A, "meminfo", None) == expected


def test_maps_names_and_offsets() -> None:
    """show_map_vma(): file offsets in bytes (vm_pgoff << PAGE_SHIFT), the name at column 74."""
    text = (
        "file f size=64K fs=pagecache\ntask A\nA: a = mmap 8K\n"
        "A: c = mmap 16K r shared fd=f off=16K\n"
    )
    out = proc(text, "maps")
    lines = out.splitlines()
    assert lines[0] == "7ffff7ff9000-7ffff7ffd000 r--s 00004000 00:00 2" + " " * 26 + "/mnt/f"
    assert lines[1] == "7ffff7ffd000-7ffff7fff000 rw-p 00000000 00:00 0 "


def test_thpmaps_style_parse_matches_model() -> None:
    """Parse smaps, pagemap and kpageflags as tools/mm/thpmaps does (VMAList, vma_parse:
    present PFNs, KPF_ANON/COMPOUND_HEAD/THP) and compare with the model's counters."""
    import numpy as np

    from foliosim.procfs import kpage_bytes, pagemap_bytes, split_puds_for_walk

    text = (
        "config thp=always\ntask A\nA: m = mmap 4M\nA: write m 4M\n"
        "A: s = mmap 64K\nA: write s 64K\nA: fork B\nB: write s 4K\n"
    )
    run = run_text(text, check_each=False)
    k = run.kernel
    task = k.tasks["A"]
    split_puds_for_walk(k, task)
    stats: list[dict[str, int]] = []
    vmas = []
    for line in render_proc(k, task, "smaps").splitlines():
        elements = line.split()
        if "-" in elements[0]:
            start, end = (int(x, 16) for x in elements[0].split("-"))
            vmas.append((start, end))
            stats.append({})
        elif elements[0].endswith(":") and len(elements) >= 2 and elements[1].isdigit():
            stats[-1][elements[0][:-1]] = int(elements[1])
    anon_pmd_kb = sum(s["AnonHugePages"] for s in stats)
    assert anon_pmd_kb // 2048 == k.vmstat.counters["nr_anon_transparent_hugepages"] // 512
    assert sum(s["Rss"] for s in stats) // 4 == sum(task.mm.rss)
    assert sum(s["Anonymous"] for s in stats) // 4 == task.mm.rss[1]
    thp_heads = thp_pages = 0
    for start, end in vmas:
        pmes = np.frombuffer(pagemap_bytes(k, task, start, end), dtype=np.uint64)
        present = (pmes & np.uint64(1 << 63)) != 0
        pfns = pmes[present] & np.uint64((1 << 55) - 1)
        for pfn in pfns.tolist():
            flags = int(np.frombuffer(kpage_bytes(k, int(pfn), 1, False), dtype=np.uint64)[0])
            if flags & (1 << 22) and flags & (1 << 12):
                thp_pages += 1
                thp_heads += bool(flags & (1 << 15))
    # Two PMD THPs (heads seen) and every page of them anon THP.
    assert thp_heads == 2
    assert thp_pages == 1024 + 0  # the 64K range has no mTHP under the default policy
    assert thp_pages * 4 == anon_pmd_kb
