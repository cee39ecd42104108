"""Collapsing small pages into a PMD THP (mm/khugepaged.c, Linux 7.1.8).

The MADV_COLLAPSE paths are modelled: collapse_huge_page for anonymous memory and
collapse_file for shmem. The khugepaged daemon is not (the model, like a test that wants
stable numbers, runs with khugepaged idle), nor collapse of read-only regular files
(CONFIG_READ_ONLY_THP_FOR_FS: the model's files are open for writing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM_ANONPAGES, VM, mm_counter_file
from foliosim.kernel.pgtable import PTE_MARKER_GUARD, PTE_SPECIAL, Leaf
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


def collapse_anon_pmd(k: Kernel, vma: VMA, haddr: int) -> str | None:
    """hpage_collapse_scan_pmd() + collapse_huge_page() for one aligned PMD range.

    Returns None on success (or when already PMD-mapped), else the errno MADV_COLLAPSE maps
    the scan result to: EINVAL (no page table, guard marker), EAGAIN (a folio with references
    beyond its mappings), ENOMEM (no THP could be allocated: THP_COLLAPSE_ALLOC_FAILED).
    """
    geo = k.geometry
    pmd_no = haddr >> geo.pmd_shift
    pgt = vma.mm.pgtables
    if pmd_no in pgt.pmd_leaves:
        return None  # SCAN_PMD_MAPPED
    table = pgt.pte_tables.get(pmd_no)
    if table is None:
        return "EINVAL"  # SCAN_PMD_NULL
    if (table.bits & PTE_MARKER_GUARD).any():
        return "EINVAL"
    olds: list[tuple[int, Folio, int]] = []
    counted: dict[int, Folio] = {}
    for slot in range(geo.ptrs_per_pte):
        entry = table.entry(slot)
        if entry is None or table.bits[slot] & PTE_SPECIAL:
            continue
        folio, page = entry
        if not folio.anon:
            return "EINVAL"
        olds.append((slot, folio, page))
        counted[folio.pfn] = folio
    for folio in counted.values():
        # is_refcount_suitable(): refcount == mapcount (+ swapcache); a pin adds more.
        if folio.refcount != folio.folio_mapcount():
            return "EAGAIN"
    new = k.alloc_folio(geo.pmd_order)
    if new is None:
        k.vmstat.count_event("thp_collapse_alloc_failed")
        return "ENOMEM"
    k.enter("collapse_huge_page")
    k.vmstat.count_event("thp_collapse_alloc")
    for slot, folio, page in olds:
        if folio.page_written(page):
            new.mark_written(slot)
    mapped_before = len(olds)
    for slot, folio, page in olds:
        rmap.folio_remove_rmap_ptes(k, folio, page, 1, vma)
        table.clear(slot)
    for _, folio, _ in olds:
        if not k.variant.collapse_forgets_old_ref:
            k.folio_put(folio)
    del pgt.pte_tables[pmd_no]
    rmap.folio_add_new_anon_rmap(k, new, vma, exclusive=True)
    new.index = vma.linear_page_index(haddr, k.page_shift)
    new.lru = True
    pgt.pmd_leaves[pmd_no] = Leaf(
        new, write=bool(vma.flags & VM.WRITE), dirty=True, young=True, deposited=True
    )
    pgt.deposits += 1  # the old PTE table is deposited behind the new PMD
    vma.mm.rss[MM_ANONPAGES] += k.config.pmd_nr - mapped_before
    rmap.deferred_split_folio(k, new, False)
    return None


# ---- shmem: collapse_file (mm/khugepaged.c, 7.1.8) --------------------------------------------
def collapse_shmem_pmd(k: Kernel, vma: VMA, haddr: int) -> str | None:
    """collapse_single_pmd() for a shmem VMA with MADV_COLLAPSE: collapse_scan_file(), then
    collapse_file() and try_collapse_pte_mapped_thp(install_pmd=true).

    Works on the page cache, not on one mm's page tables: the small (or mTHP) folios caching
    the PMD-aligned file range are unmapped from every mm (try_to_unmap) and replaced in the
    cache by one new PMD-sized folio (THP_COLLAPSE_ALLOC; holes are zero-filled), empty PTE
    tables of other mappings are retracted (they refault the PMD), and the caller's range is
    mapped by a PMD (do_set_pmd). Returns None on success or the errno madvise_collapse_errno()
    gives the scan result: EINVAL (nothing cached in the range), EAGAIN (a folio off the LRU
    or holding references beyond the cache and its mappings, e.g. a pin), ENOMEM (no THP).
    Left out: swapped-out entries, writeback, userfaultfd, mlock, the node-load heuristics.
    """
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.vmscan import try_to_unmap

    geo = k.geometry
    file = vma.file
    assert isinstance(file, BackingFile)
    pmd_no = haddr >> geo.pmd_shift
    if pmd_no in vma.mm.pgtables.pmd_leaves:
        return None  # SCAN_PMD_MAPPED
    start = vma.linear_page_index(haddr, k.page_shift)
    nr = 1 << geo.pmd_order
    olds: list[Folio] = []
    index = start
    while index < start + nr:  # collapse_scan_file()
        folio = file.find_folio(index)
        if folio is None:
            index += 1
            continue
        if folio.order == geo.pmd_order:
            return _map_collapsed_folio(k, vma, haddr, folio)  # SCAN_PTE_MAPPED_HUGEPAGE
        if not folio.lru:
            return "EAGAIN"  # SCAN_PAGE_LRU
        expected = folio.nr_pages + folio.folio_mapcount()  # folio_expected_ref_count()
        if folio.refcount != expected:
            return "EAGAIN"  # SCAN_PAGE_COUNT
        olds.append(folio)
        index = folio.index + folio.nr_pages
    if not olds:
        return "EINVAL"  # SCAN_TRUNCATED: the range caches nothing
    new = k.alloc_folio(geo.pmd_order)  # alloc_charge_folio()
    if new is None:
        k.vmstat.count_event("thp_collapse_alloc_failed")
        return "ENOMEM"
    k.enter("collapse_file")
    k.vmstat.count_event("thp_collapse_alloc")
    for old in olds:
        try_to_unmap(k, old)  # every PTE of every mm mapping the old folio goes
        if old.written is not None:
            first = old.index - start
            new.mark_written_mask_at(first, old.written)
    _replace_in_cache(k, file, olds, new, start)
    _retract_page_tables(k, file, start, vma)
    return _map_collapsed_folio(k, vma, haddr, new)


def _replace_in_cache(
    k: Kernel, file: BackingFile, olds: list[Folio], new: Folio, start: int
) -> None:
    """collapse_file()'s commit: the new folio takes the range in the cache (its references,
    NR_SHMEM_THPS, NR_SHMEM, NR_FILE_PAGES; dirty), the old ones leave it and are freed."""
    nr = new.nr_pages
    new.refcount = nr  # folio_ref_add(HPAGE_PMD_NR - 1) on the allocation's reference
    new.mapping = file
    new.index = start
    new.swapbacked = True
    new.dirty = True
    new.lru = True
    k.vmstat.mod("nr_shmem_hugepages", nr)
    k.vmstat.mod("nr_shmem", nr)
    k.vmstat.mod("nr_file_pages", nr)
    for old in olds:
        del file.cache[old.index]
        k.vmstat.mod("nr_file_pages", -old.nr_pages)
        k.vmstat.mod("nr_shmem", -old.nr_pages)
        old.mapping = None
        k.folio_put(old, old.nr_pages)  # the cache's references: the folio is freed
    file.cache[start] = new
    file.orders.add(new.order)


def _retract_page_tables(k: Kernel, file: BackingFile, pgoff: int, caller: VMA) -> None:
    """retract_page_tables(): every other mapping of the range whose PMD-aligned PTE table is
    now empty loses it (mm_dec_nr_ptes), unless its VMA has an anon_vma or guard regions;
    such mappings refault the new folio with a PMD."""
    geo = k.geometry
    for mm in k.live_mms():
        for vma in mm.vmas:
            if vma.file is not file or vma.anon_vma is not None or vma.flags & VM.MAYBE_GUARD:
                continue
            if not vma.pgoff <= pgoff < vma.pgoff + ((vma.end - vma.start) >> k.page_shift):
                continue
            addr = vma.start + ((pgoff - vma.pgoff) << k.page_shift)
            if addr & (geo.pmd_size - 1) or vma.end < addr + geo.pmd_size:
                continue
            if vma is caller:
                continue  # try_collapse_pte_mapped_thp() handles the caller's table
            table = mm.pgtables.pte_tables.get(addr >> geo.pmd_shift)
            if table is not None and table.all_none():
                del mm.pgtables.pte_tables[addr >> geo.pmd_shift]


def _map_collapsed_folio(k: Kernel, vma: VMA, haddr: int, folio: Folio) -> str | None:
    """try_collapse_pte_mapped_thp(install_pmd=true): the caller's PTEs in the range may
    only be none or map the matching pages of the PMD-sized folio; those are removed with
    their table, then do_set_pmd() maps the folio with one PMD."""
    from foliosim.kernel.huge_memory import do_set_pmd

    geo = k.geometry
    pmd_no = haddr >> geo.pmd_shift
    if pmd_no in vma.mm.pgtables.pmd_leaves:
        return None  # SCAN_PMD_MAPPED
    table = vma.mm.pgtables.pte_tables.get(pmd_no)
    if table is not None:
        if (table.bits & PTE_MARKER_GUARD).any():
            return "EINVAL"  # SCAN_PTE_NON_PRESENT
        runs = table.runs()
        if any(f is not folio or page != slot for slot, _, f, page, _ in runs):
            return "EINVAL"  # a PTE maps something else: SCAN_FAIL
        mapped = sum(n for _, n, _, _, _ in runs)
        if mapped:
            for _slot, n, _, page, _ in runs:
                rmap.folio_remove_rmap_ptes(k, folio, page, n, vma)
            table.clear_range(0, geo.ptrs_per_pte)
            k.folio_put(folio, mapped)  # folio_ref_sub(nr_mapped_ptes)
            vma.mm.rss[mm_counter_file(folio)] -= mapped
        del vma.mm.pgtables.pte_tables[pmd_no]
    k.folio_get(folio)  # the reference do_set_pmd() turns into the PMD's
    if not do_set_pmd(k, vma, haddr, folio, write=False):
        k.folio_put(folio)
        return "EINVAL"
    return None
