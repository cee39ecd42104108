"""Splitting large anonymous folios and the deferred-split shrinker (mm/huge_memory.c, 7.1.8).

split_folio(): __folio_split() to order 0 — refuse when references other than the mappings
(and the caller's) exist (a GUP pin or get: -EAGAIN, THP_SPLIT_PAGE_FAILED); otherwise unmap
every mapping to migration entries (PMDs split first: THP_SPLIT_PMD each), cut the folio into
order-0 folios, and remap: pages whose contents are all zero go to the shared zero page
(TTU_USE_SHARED_ZEROPAGE: MM_ANONPAGES -1 each, no rmap), the others get a PTE and a reference
each; pages no one maps are freed. THP_SPLIT_PAGE for PMD-order folios.

deferred_split_scan(): every queued folio is taken off the queue; partially mapped ones are
split; with khugepaged max_ptes_none at its default (511) thp_underused() is false, so the
others are just dropped from the queue. A failed split of a partially mapped folio is requeued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM_ANONPAGES
from foliosim.kernel.pgtable import PTE_DIRTY, PTE_SPECIAL, PTE_WRITE, PTE_YOUNG
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


def _vma_at(k: Kernel, mm: object, addr: int) -> VMA:
    from foliosim.kernel.mm import MM

    assert isinstance(mm, MM)
    vma = mm.find_vma(addr)
    assert vma is not None, f"mapping at {addr:#x} outside any VMA"
    return vma


def split_folio(k: Kernel, folio: Folio) -> bool:
    """split_folio() -> __folio_split() to order 0 for an anonymous folio. True on success."""
    from foliosim.kernel.huge_memory import __split_huge_pmd

    k.enter("__folio_split")
    pmd_order = k.geometry.pmd_order
    if not folio.large or folio.zero or not folio.anon:
        return False
    # folio_expected_ref_count() == refcount - 1 (the caller's reference, implicit here).
    if folio.refcount != folio.folio_mapcount() and not k.variant.split_ignores_extra_refs:
        if folio.order == pmd_order:
            k.vmstat.count_event("thp_split_page_failed")
        return False
    # unmap_folio(): split PMD mappings (freeze) so every mapping is a PTE.
    for ref in k.rmap_walk(folio):
        if ref.level == "pmd":
            __split_huge_pmd(k, _vma_at(k, ref.mm, ref.addr), ref.addr)
    refs = [r for r in k.rmap_walk(folio) if r.level == "pte"]
    saved = []
    for ref in refs:
        assert ref.table is not None
        bits = int(ref.table.bits[ref.slot])
        vma = _vma_at(k, ref.mm, ref.addr)
        exclusive = folio.page_exclusive(ref.page)
        rmap.folio_remove_rmap_ptes(k, folio, ref.page, 1, vma)
        ref.table.clear(ref.slot)
        saved.append((ref, vma, bits, exclusive))
    folio.refcount -= len(refs)
    # __split_unmapped_folio(): order-0 folios inheriting per-page state.
    k.physmem.deferred_split_queue.pop(folio.pfn, None)
    folio.deferred = False
    folio.partially_mapped = False
    pages = k.physmem.replace_with_pages(folio)
    for i, page in enumerate(pages):
        page.anon = True
        page.swapbacked = True
        page.mapping = folio.mapping
        page.index = folio.index + i
        page.lru = True
        page.dirty = folio.dirty
        page.refcount = 0
        if folio.page_written(i):
            page.written_array()[0] = True
    # remap_page() with TTU_USE_SHARED_ZEROPAGE.
    for ref, vma, bits, exclusive in saved:
        page = pages[ref.page]
        assert ref.table is not None
        if not page.page_written(0):
            ref.table.set(ref.slot, k.physmem.zero_folio, 0, PTE_SPECIAL | (bits & PTE_YOUNG))
            ref.mm.rss[MM_ANONPAGES] -= 1
            continue
        page.refcount += 1
        rmap.folio_add_anon_rmap_ptes(k, page, 0, 1, vma, exclusive)
        ref.table.set(ref.slot, page, 0, bits & (PTE_WRITE | PTE_DIRTY | PTE_YOUNG))
    folio.freed = True
    for page in pages:
        k.touched.add(page)
        if page.refcount == 0:
            page.anon = False
            k.physmem.free_folio(page)
    if folio.order == pmd_order:
        k.vmstat.count_event("thp_split_page")
    return True


def deferred_split_scan(k: Kernel) -> int:
    """deferred_split_scan() (mm/huge_memory.c, 7.1.8): returns how many folios were split."""
    k.enter("deferred_split_scan")
    queue = k.physmem.deferred_split_queue
    taken = list(queue.values())
    queue.clear()
    split = 0
    for folio in taken:
        folio.deferred = False
        if folio.freed:
            continue
        if not folio.partially_mapped and not k.variant.shrinker_splits_mapped_whole:
            if not thp_underused(k, folio):
                continue
        if split_folio(k, folio):
            split += 1
            if not folio.partially_mapped and folio.order == k.geometry.pmd_order:
                k.vmstat.count_event("thp_underused_split_page")
        elif folio.partially_mapped and not k.variant.deferred_split_skips_unqueue:
            folio.deferred = True
            queue[folio.pfn] = folio
    return split


def thp_underused(k: Kernel, folio: Folio) -> bool:
    """thp_underused() (mm/huge_memory.c, 7.1.8): false when max_ptes_none is 511 (default);
    else more than max_ptes_none zero-filled pages."""
    limit = k.policy.max_ptes_none
    if limit == k.config.pmd_nr - 1:
        return False
    written = 0 if folio.written is None else int(folio.written.sum())
    return folio.nr_pages - written > limit
