"""Collapsing small pages into a PMD THP (mm/khugepaged.c collapse_huge_page, Linux 7.1.8).

Only the MADV_COLLAPSE path for anonymous memory is modelled (the khugepaged daemon is not:
the model, like a test that wants stable numbers, runs with khugepaged idle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM_ANONPAGES, VM
from foliosim.kernel.pgtable import PTE_MARKER_GUARD, PTE_SPECIAL, Leaf
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
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
        folio = table.folios[slot]
        if folio is None or table.bits[slot] & PTE_SPECIAL:
            continue
        if not folio.anon:
            return "EINVAL"
        olds.append((slot, folio, int(table.index[slot])))
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
