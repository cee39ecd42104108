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


def _refuse_split(k: Kernel, folio: Folio, expected_refs: int) -> bool:
    """The reference check of __folio_split() (mm/huge_memory.c, 7.1.8).

    A folio holding references beyond ``expected_refs`` cannot be split; a PMD-order
    folio refused this way counts thp_split_page_failed. True when refused.
    """
    if folio.refcount == expected_refs:
        return False
    if folio.order == k.geometry.pmd_order:
        k.vmstat.count_event("thp_split_page_failed")
    return True


def _unmap_folio_pmds(k: Kernel, folio: Folio) -> None:
    """The TTU_SPLIT_HUGE_PMD part of unmap_folio() (mm/huge_memory.c, 7.1.8).

    Splits every PMD mapping of ``folio`` so that each mapping left is a PTE; the
    kernel then installs migration entries, which the model leaves out (its callers
    remove the PTE mappings themselves).
    """
    from foliosim.kernel.huge_memory import __split_huge_pmd

    for ref in k.rmap_walk(folio):
        if ref.level == "pmd":
            __split_huge_pmd(k, _vma_at(k, ref.mm, ref.addr), ref.addr)


def split_folio(k: Kernel, folio: Folio) -> bool:
    """split_folio() -> __folio_split() to order 0 for an anonymous folio. True on success."""
    k.enter("__folio_split")
    pmd_order = k.geometry.pmd_order
    if not folio.large or folio.zero or not folio.anon:
        return False
    # folio_expected_ref_count() == refcount - 1 (the caller's reference, implicit here).
    if not k.variant.split_ignores_extra_refs and _refuse_split(k, folio, folio.folio_mapcount()):
        return False
    # unmap_folio(): split PMD mappings (freeze) so every mapping is a PTE.
    _unmap_folio_pmds(k, folio)
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
            page.mark_written()
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


def buddy_pieces(order: int, at: int) -> list[tuple[int, int]]:
    """The (first page, order) pieces a non-uniform split of a 2**order folio to order 0 at
    page ``at`` leaves: halve the part holding ``at`` until it is one page (folio_split)."""
    pieces = []
    lo = 0
    o = order
    while o > 0:
        o -= 1
        half = 1 << o
        if at < lo + half:
            pieces.append((lo + half, o))
        else:
            pieces.append((lo, o))
            lo += half
    pieces.append((lo, 0))
    return sorted(pieces)


def split_file_folio(k: Kernel, folio: Folio, at: int, uniform: bool = False) -> list[Folio] | None:
    """try_folio_split_to_order() -> folio_split() (mm/huge_memory.c, 7.1.8) of a page-cache
    or shmem folio at page ``at`` to order 0, non-uniformly (see buddy_pieces); ``uniform``:
    split_folio(), every page its own folio.

    Refused (None, THP_SPLIT_PAGE_FAILED for PMD-sized folios) when the folio holds
    references beyond the page cache's and its mappings' (a pin). Every mapping goes:
    unmap_folio() uses try_to_unmap() on file folios (a dirty PTE dirties the folio, the
    mm's file/shmem RSS drops), and remap_page() restores only anonymous ones, so the new
    folios, each holding its own page-cache references, are refaulted on the next access.
    Left out: writeback, mlock, swapcache.
    """
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.mm import mm_counter_file
    from foliosim.kernel.pgtable import PTE_DIRTY

    k.enter("folio_split")
    file = folio.mapping
    pmd_order = k.geometry.pmd_order
    if (
        not folio.large
        or not isinstance(file, BackingFile)
        or file.cache.get(folio.index) is not folio
    ):
        return None
    if _refuse_split(k, folio, folio.nr_pages + folio.folio_mapcount()):
        return None
    _unmap_folio_pmds(k, folio)
    counter = mm_counter_file(folio)
    for ref in k.rmap_walk(folio):  # try_to_unmap_one() for each PTE mapping
        assert ref.table is not None
        vma = _vma_at(k, ref.mm, ref.addr)
        if ref.table.bits[ref.slot] & PTE_DIRTY:
            folio.dirty = True
        rmap.folio_remove_rmap_ptes(k, folio, ref.page, 1, vma)
        ref.table.clear(ref.slot)
        ref.mm.rss[counter] -= 1
        folio.refcount -= 1
    del file.cache[folio.index]
    if folio.order == pmd_order:
        k.vmstat.mod(
            "nr_shmem_hugepages" if file.kind == "shmem" else "nr_file_hugepages", -folio.nr_pages
        )
    k.physmem.folios.pop(folio.pfn, None)
    folio.freed = True
    folio.refcount = 0
    pieces: list[Folio] = []
    pieces_at = (
        [(i, 0) for i in range(folio.nr_pages)] if uniform else buddy_pieces(folio.order, at)
    )
    for first, order in pieces_at:
        piece = Folio(folio.pfn + first, order)
        piece.refcount = piece.nr_pages  # the page cache's references
        piece.mapping = file
        piece.index = folio.index + first
        piece.swapbacked = folio.swapbacked
        piece.dirty = folio.dirty
        piece.lru = True
        if folio.written is not None and folio.written[first : first + piece.nr_pages].any():
            piece.mark_written_mask_at(0, folio.written[first : first + piece.nr_pages])
        k.physmem._register(piece)
        file.cache[piece.index] = piece
        file.orders.add(order)
        k.touched.add(piece)
        pieces.append(piece)
    if folio.order == pmd_order:
        k.vmstat.count_event("thp_split_page")
    return pieces
