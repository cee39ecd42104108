"""Page faults at PTE level and the fault dispatcher (mm/memory.c, Linux 7.1.8).

handle_mm_fault() walks PUD -> PMD -> PTE as __handle_mm_fault() does, giving huge_fault
handlers (DAX), anonymous THP and file PMD mapping their chance before the PTE level.
Left out: userfaultfd, NUMA hinting, swap-in, KSM, mlock, memcg charging failures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from foliosim.kernel import huge_memory, rmap
from foliosim.kernel.filemap import filemap_fault, filemap_map_pages
from foliosim.kernel.mm import MM_ANONPAGES, VM, mm_counter, mm_counter_file, vma_page_prot_writable
from foliosim.kernel.pgtable import (
    PTE_DIRTY,
    PTE_MARKER_GUARD,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_YOUNG,
    PteTable,
)
from foliosim.kernel.physmem import EXCLUSIVE_ONE, WRITTEN_ONE, Folio
from foliosim.kernel.smallpages import SMALL_EXCLUSIVE, SMALL_WRITTEN

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task
    from foliosim.kernel.mm import VMA

SIGSEGV = "SIGSEGV"
SIGBUS = "SIGBUS"


def handle_mm_fault(k: Kernel, task: Task, vma: VMA, addr: int, write: bool) -> str | None:
    """handle_mm_fault() -> __handle_mm_fault() (mm/memory.c, 7.1.8).

    Returns None when the access can proceed, or the signal the task gets.
    """
    k.enter("handle_mm_fault")
    k.vmstat.count_event("pgfault")
    mm = task.mm
    geo = k.geometry
    if vma.file is not None:
        index = vma.linear_page_index(addr, k.page_shift)
        if vma.file.kind != "devdax" and index >= vma.file.size_pages(k.page_shift):
            return SIGBUS
    pud_no = addr >> geo.pud_shift
    leaf = mm.pgtables.pud_leaves.get(pud_no)
    if leaf is not None:
        if write and not leaf.write:
            result = huge_memory.wp_huge_pud(k, vma, addr)
            if result != "fallback":
                return result
        else:
            huge_memory.huge_pud_set_accessed(leaf, write)
            return None
    elif vma.is_dax and vma.file is not None and not huge_memory.vma_thp_disabled(vma):
        # thp_vma_allowable_order(PUD_ORDER): VM_NOHUGEPAGE skips create_huge_pud.
        result = vma.file.huge_fault(k, vma, addr, write, geo.pud_order)  # type: ignore[attr-defined]
        if result != "fallback":
            return result  # type: ignore[no-any-return]
    pmd_no = addr >> geo.pmd_shift
    leaf = mm.pgtables.pmd_leaves.get(pmd_no)
    if leaf is not None:
        if write and not leaf.write:
            result = huge_memory.wp_huge_pmd(k, vma, addr)
            if result != "fallback":
                return result
        else:
            huge_memory.huge_pmd_set_accessed(leaf, write)
            return None
    elif pmd_no not in mm.pgtables.pte_tables or mm.pgtables.pte_tables[pmd_no].all_none():
        result = huge_memory.create_huge_pmd(k, vma, addr, write)
        if result != "fallback":
            return result
    return handle_pte_fault(k, vma, addr, write)


def handle_pte_fault(k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
    """handle_pte_fault() (mm/memory.c, 7.1.8)."""
    slot = (addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift, create=True)
    assert table is not None
    if table.bits[slot] & PTE_MARKER_GUARD:
        return SIGSEGV  # a PTE_MARKER_GUARD faults with VM_FAULT_SIGSEGV
    if table.pfn[slot] < 0:
        if vma.is_dax and vma.file is not None:
            return vma.file.huge_fault(k, vma, addr, write, 0)  # type: ignore[attr-defined,no-any-return]
        if vma.is_anonymous:
            return do_anonymous_page(k, vma, addr, write)
        return do_fault(k, vma, addr, write)
    if write and not table.bits[slot] & PTE_WRITE:
        return do_wp_page(k, vma, addr)
    table.bits[slot] |= PTE_YOUNG | (PTE_DIRTY if write else 0)
    return None


# ---- anonymous memory -------------------------------------------------------------------
def anon_vma_prepare(vma: VMA) -> None:
    """__anon_vma_prepare() (mm/rmap.c, 7.1.8): give the VMA an anon_vma on its first
    anonymous folio, a neighbour's when find_mergeable_anon_vma() finds one (so a later
    mprotect can merge them again), else a new one. Left out: locking, the anon_vma's
    refcount and degree."""
    if vma.anon_vma is None:
        from foliosim.kernel.mm import AnonVma, find_mergeable_anon_vma

        vma.anon_vma = find_mergeable_anon_vma(vma) or AnonVma()


def do_anonymous_page(k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
    """do_anonymous_page() (mm/memory.c, 7.1.8).

    A read maps the shared zero page (special PTE: no reference, mapcount or RSS). A write
    allocates through alloc_anon_folio(): the largest enabled mTHP order whose naturally
    aligned range fits the VMA and has only empty PTEs, else order 0. The new folio gets one
    reference per PTE, an exclusive anon rmap and MM_ANONPAGES += nr.
    """
    k.enter("do_anonymous_page")
    mm = vma.mm
    table = mm.pgtables.pte_table(addr >> k.geometry.pmd_shift, create=True)
    assert table is not None
    mask = k.geometry.ptrs_per_pte - 1
    if not write:
        slot = (addr >> k.page_shift) & mask
        table.set(slot, k.physmem.zero_folio, 0, PTE_SPECIAL | PTE_YOUNG)
        return None
    anon_vma_prepare(vma)
    folio, start = alloc_anon_folio(k, vma, addr)
    if folio is None:
        return SIGBUS  # VM_FAULT_OOM: the OOM killer would act; report as a fatal signal
    nr = folio.nr_pages
    k.folio_get(folio, nr - 1)
    mm.rss[MM_ANONPAGES] += nr
    rmap.folio_add_new_anon_rmap(k, folio, vma, exclusive=True)
    folio.index = vma.linear_page_index(start, k.page_shift)
    folio.lru = True
    bits = PTE_YOUNG | PTE_DIRTY | (PTE_WRITE if vma.flags & VM.WRITE else 0)
    table.set_run((start >> k.page_shift) & mask, folio, 0, nr, bits)
    if folio.large:
        rmap.deferred_split_folio(k, folio, False)
    return None


def do_anonymous_pages(
    k: Kernel, vma: VMA, addr: int, nr: int, write: bool, written: bool = False
) -> int:
    """``nr`` consecutive do_anonymous_page() calls on empty PTEs of one page table, done as
    one batch: the same entries, folios and counters, without a Python round trip per page.

    Only for the case where every one of those faults takes the order-0 path: no mTHP order
    is allowed below the PMD for this VMA (alloc_anon_folio would try them) and the caller
    has already let the PMD level decline. ``written``: the program stores into each new page
    (page().written). Returns how many pages were mapped (fewer than nr when memory runs out).
    The new pages are held as arrays (smallpages.py) unless the kernel keeps objects.
    """
    k.enter("do_anonymous_page")
    mm = vma.mm
    table = mm.pgtables.pte_table(addr >> k.geometry.pmd_shift, create=True)
    assert table is not None
    first = (addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)
    k.vmstat.count_event("pgfault", nr)
    if not write:
        table.set_same(first, nr, k.physmem.zero_folio, PTE_SPECIAL | PTE_YOUNG)
        return nr
    anon_vma_prepare(vma)
    bits = PTE_YOUNG | PTE_DIRTY | (PTE_WRITE if vma.flags & VM.WRITE else 0)
    if k.small_anon:
        flags = SMALL_EXCLUSIVE | (SMALL_WRITTEN if written else 0)
        pfns = k.physmem.alloc_small_anon(nr, vma.anon_vma, flags)
        if pfns is not None:
            done = int(pfns.shape[0])
            if done:
                table.bump(first, first + done)
                window = table.pfn[first : first + done]
                table.present += done - int(np.count_nonzero(window >= 0))
                window[:] = pfns
                table.bits[first : first + done] = bits
                if k.touched_small is not None:
                    k.touched_small.append(pfns)
            mm.rss[MM_ANONPAGES] += done
            k.vmstat.mod("nr_anon_pages", done)
            return done
    index = vma.linear_page_index(addr, k.page_shift)
    folios = k.physmem.alloc_pages_bulk(nr)
    done = len(folios)
    anon_vma = vma.anon_vma
    for i, folio in enumerate(folios):
        folio.mapcount_small = 1
        folio.anon = folio.swapbacked = folio.lru = True
        folio.mapping = anon_vma
        folio.index = index + i
        folio.anon_exclusive = EXCLUSIVE_ONE
        if written:
            folio.written = WRITTEN_ONE
    k.touched.update(folios)
    if done:
        table.bump(first, first + done)
        window = table.pfn[first : first + done]
        table.present += done - int(np.count_nonzero(window >= 0))
        window[:] = [folio.pfn for folio in folios]
        table.bits[first : first + done] = bits
    mm.rss[MM_ANONPAGES] += done
    k.vmstat.mod("nr_anon_pages", done)  # folio_add_new_anon_rmap: NR_ANON_MAPPED += 1 each
    return done


def alloc_anon_folio(k: Kernel, vma: VMA, addr: int) -> tuple[Folio | None, int]:
    """alloc_anon_folio() (mm/memory.c, 7.1.8): try enabled orders below PMD, highest first.

    Each order needs thp_vma_suitable_order() and an all-none PTE range (pte_range_none; a
    zero-page PTE is not none). A successful large allocation counts the mTHP fault stat.
    """
    orders = huge_memory.thp_vma_allowable_orders(k, vma, below_pmd=True)
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift)
    mask = k.geometry.ptrs_per_pte - 1
    for order in sorted(orders, reverse=True):
        size = k.page_size << order
        start = addr & ~(size - 1)
        if not huge_memory.thp_vma_suitable_order(k, vma, addr, order):
            continue
        first = (start >> k.page_shift) & mask
        window = slice(first, first + (1 << order))
        if table is not None and ((table.pfn[window] >= 0).any() or table.bits[window].any()):
            continue  # not pte_range_none: a page or a marker (a guard region) is there
        folio = k.alloc_folio(order)
        if folio is not None:
            return folio, start
    return k.alloc_folio(0), addr & ~(k.page_size - 1)


# ---- file-backed memory -----------------------------------------------------------------
def do_fault(k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
    """do_fault() (mm/memory.c, 7.1.8): read -> do_read_fault, private write ->
    do_cow_fault, shared write -> do_shared_fault."""
    if not write:
        return do_read_fault(k, vma, addr)
    if not vma.flags & VM.SHARED:
        return do_cow_fault(k, vma, addr)
    return do_shared_fault(k, vma, addr)


def should_fault_around(k: Kernel, vma: VMA) -> bool:
    """should_fault_around(): map_pages exists (page cache, shmem) and the window is > 1 page."""
    return vma.kind in ("pagecache", "shmem") and k.policy.fault_around_bytes > k.page_size


def do_read_fault(k: Kernel, vma: VMA, addr: int) -> str | None:
    """do_read_fault() (mm/memory.c, 7.1.8): fault-around maps what is already cached in the
    aligned fault_around_bytes window; if that did not map addr, ->fault reads the page (with
    read-around into the cache) and finish_fault() maps it."""
    k.enter("do_read_fault")
    # A first attempt may end in VM_FAULT_RETRY after readahead I/O; the retried fault
    # (FAULT_FLAG_TRIED) goes through fault-around again and cannot retry a second time.
    for attempt in (0, 1):
        if should_fault_around(k, vma):
            filemap_map_pages(k, vma, addr)
            if _mapped(k, vma, addr):
                return None
        result = filemap_fault(k, vma, addr, write=False, allow_retry=attempt == 0)
        if result != "retry":
            break
    if isinstance(result, str):
        return result
    folio, page = result
    return finish_fault(k, vma, addr, folio, page, write=False)


def do_shared_fault(k: Kernel, vma: VMA, addr: int) -> str | None:
    """do_shared_fault(): ->fault, ->page_mkwrite (marks dirty), finish_fault writable."""
    k.enter("do_shared_fault")
    result = filemap_fault(k, vma, addr, write=True)
    if isinstance(result, str):
        return result
    folio, page = result
    folio.dirty = True
    return finish_fault(k, vma, addr, folio, page, write=True)


def do_cow_fault(k: Kernel, vma: VMA, addr: int) -> str | None:
    """do_cow_fault(): read the file page, copy it into a new anon page mapped writable;
    the page cache folio is not mapped (its fault reference is dropped)."""
    k.enter("do_cow_fault")
    anon_vma_prepare(vma)
    result = filemap_fault(k, vma, addr, write=False)
    if isinstance(result, str):
        return result
    src, src_page = result
    new = k.alloc_folio(0)
    if new is None:
        k.folio_put(src)
        return SIGBUS
    if src.page_written(src_page):
        new.mark_written()
    _map_new_anon_page(k, vma, addr, new)
    k.folio_put(src)  # the reference ->fault returned
    return None


def finish_fault(
    k: Kernel, vma: VMA, addr: int, folio: Folio, page: int, write: bool
) -> str | None:
    """finish_fault() (mm/memory.c, 7.1.8): a PMD-sized folio on an empty PMD goes to
    do_set_pmd(); otherwise PTEs: the whole large folio when it lies within the VMA and the
    PTE table, within EOF (or is shmem) and every PTE it needs is none, else just the page.
    The reference ->fault took becomes the first mapping's; the others take one each."""
    geo = k.geometry
    pmd_no = addr >> geo.pmd_shift
    table = vma.mm.pgtables.pte_table(pmd_no)
    if folio.order == geo.pmd_order and (table is None or table.all_none()):
        if huge_memory.do_set_pmd(k, vma, addr, folio, write):
            return None
    table = vma.mm.pgtables.pte_table(pmd_no, create=True)
    assert table is not None
    slot = (addr >> k.page_shift) & (geo.ptrs_per_pte - 1)
    first, nr = _whole_folio_slots(k, vma, addr, folio, page, slot, table)
    if nr == 1 and table.pfn[slot] >= 0:
        k.folio_put(folio)  # raced: someone mapped it (fault-around) — drop our reference
        return None
    writable = write or vma_page_prot_writable(vma)
    bits = PTE_YOUNG | (PTE_WRITE | PTE_DIRTY if write else 0) | (PTE_WRITE if writable else 0)
    first_page = page - (slot - first)
    if nr > 1:
        k.folio_get(folio, nr - 1)  # folio_ref_add(nr_pages - 1)
    rmap.folio_add_file_rmap_ptes(k, folio, first_page, nr, vma)
    vma.mm.rss[mm_counter_file(folio)] += nr
    if nr == 1:
        table.set(slot, folio, first_page, bits)
    else:
        table.set_run(first, folio, first_page, nr, bits)
    return None


def _whole_folio_slots(
    k: Kernel, vma: VMA, addr: int, folio: Folio, page: int, slot: int, table: PteTable
) -> tuple[int, int]:
    """finish_fault()'s choice: (first slot, pages) — the whole folio, or the faulting page
    when the folio is small, would leave the VMA or the table, lies past EOF (not shmem:
    needs_fallback), or some PTE it needs is taken."""
    if not folio.large:
        return slot, 1
    file = vma.file
    is_shmem = file is not None and file.kind == "shmem"
    if not is_shmem and file is not None:
        if file.size_pages(k.page_shift) < folio.index + folio.nr_pages:
            return slot, 1
    vma_off = (addr - vma.start) >> k.page_shift
    vma_pages = (vma.end - vma.start) >> k.page_shift
    after = folio.nr_pages - page
    if (
        vma_off < page
        or vma_off + after > vma_pages
        or slot < page
        or slot + after > k.geometry.ptrs_per_pte
    ):
        return slot, 1
    first = slot - page
    window = slice(first, first + folio.nr_pages)
    if (table.pfn[window] >= 0).any() or table.bits[window].any():
        return slot, 1  # !pte_range_none(): fall back to the one page
    return first, folio.nr_pages


def _mapped(k: Kernel, vma: VMA, addr: int) -> bool:
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift)
    if table is None:
        return (addr >> k.geometry.pmd_shift) in vma.mm.pgtables.pmd_leaves
    return bool(table.pfn[(addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)] >= 0)


def _map_new_anon_page(k: Kernel, vma: VMA, addr: int, new: Folio) -> None:
    """The mapping half of wp_page_copy()/do_cow_fault(): exclusive anon rmap, RSS, PTE."""
    rmap.folio_add_new_anon_rmap(k, new, vma, exclusive=True)
    new.index = vma.linear_page_index(addr, k.page_shift)
    new.lru = True
    vma.mm.rss[MM_ANONPAGES] += 1
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift, create=True)
    assert table is not None
    slot = (addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)
    table.set(slot, new, 0, PTE_WRITE | PTE_DIRTY | PTE_YOUNG)


# ---- write-protect faults ---------------------------------------------------------------
def do_wp_page(k: Kernel, vma: VMA, addr: int) -> str | None:
    """do_wp_page() (mm/memory.c, 7.1.8).

    Shared mappings: page_mkwrite then make the PTE writable (wp_page_shared). Private:
    reuse an exclusive anon page (or one wp_can_reuse_anon_folio() allows), else copy it
    (wp_page_copy). The zero page and file pages are always copied.
    """
    k.enter("do_wp_page")
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift)
    assert table is not None
    slot = (addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)
    entry = table.entry(slot)
    assert entry is not None
    folio, page = entry
    if vma.flags & VM.SHARED:
        if not table.bits[slot] & PTE_SPECIAL:
            folio.dirty = True
        table.bits[slot] |= PTE_WRITE | PTE_DIRTY | PTE_YOUNG
        return None
    if folio.anon and not table.bits[slot] & PTE_SPECIAL:
        if folio.page_exclusive(page) or wp_can_reuse_anon_folio(k, folio, vma):
            folio.set_exclusive(True, page)
            table.bits[slot] |= PTE_WRITE | PTE_DIRTY | PTE_YOUNG
            return None
    return wp_page_copy(k, vma, addr, folio, page)


def wp_can_reuse_anon_folio(k: Kernel, folio: Folio, vma: VMA) -> bool:
    """wp_can_reuse_anon_folio() (mm/memory.c, 7.1.8).

    Small folio: reusable when our mapping holds the only reference. Large folio
    (__wp_can_reuse_large_anon_folio, CONFIG_MM_ID): never when at most one page is mapped
    (copy it so the large folio can be freed), nor when the MM-id "maybe mapped shared" bit
    is set; otherwise reusable when every reference is a mapping (the bit clear means they
    are all in one mm: ours). Its VM_WARN_ON_ONCEs are recorded. Left out: swapcache.
    """
    if not folio.large:
        return folio.refcount == 1
    slots = folio.mm_ids
    if folio.large_mapcount <= 1 or slots is None or slots.shared:
        return False
    if folio.large_mapcount != folio.refcount:
        return False
    site = "__wp_can_reuse_large_anon_folio"
    if folio.large_mapcount > folio.nr_pages:
        k.reports.vm_warn(site, f"large mapcount above nr_pages: {folio!r}", once=True)
    if folio.entire_mapcount:
        k.reports.vm_warn(site, f"PTE write fault on an entire-mapped {folio!r}", once=True)
    if vma.mm.id not in slots.ids:
        k.reports.vm_warn(site, f"mm {vma.mm.id} holds no MM-id slot of {folio!r}", once=True)
    return True


def wp_page_copy(k: Kernel, vma: VMA, addr: int, old: Folio, page: int) -> str | None:
    """wp_page_copy() (mm/memory.c, 7.1.8): allocate (zeroed for the zero page), copy, map
    the new page exclusive and writable, move RSS from file to anon if the old page was a
    file page, remove the old page's rmap and drop the PTE's reference to it."""
    k.enter("wp_page_copy")
    anon_vma_prepare(vma)
    new = k.alloc_folio(0)
    if new is None:
        return SIGBUS
    table = vma.mm.pgtables.pte_table(addr >> k.geometry.pmd_shift)
    assert table is not None
    slot = (addr >> k.page_shift) & (k.geometry.ptrs_per_pte - 1)
    special = bool(table.bits[slot] & PTE_SPECIAL)
    if special:  # the zero page: a zeroed new page, nothing to give back
        table.clear(slot)
        _map_new_anon_page(k, vma, addr, new)
        return None
    with k.ownership.context("wp_page_copy") as ctx:
        # do_wp_page took a temporary reference (folio_get) before calling us.
        k.folio_get(old)
        ctx.get(old)
        if k.variant.cow_put_early:
            k.folio_put(old, 2)  # mutant: both references dropped before the copy
            table.clear(slot)
            ctx.entry_cleared(old)
            ctx.put(old, 2)
        ctx.touch(old, "copy_mc_user_highpage(old)")
        if old.page_written(page):
            new.mark_written()
        if not k.variant.cow_put_early:
            table.clear(slot)  # ptep_clear_flush: the PTE's reference is ours
            ctx.entry_cleared(old)
        ctx.touch(old, "mm_counter(old) / folio_remove_rmap_pte(old)")
        vma.mm.rss[mm_counter(old)] -= 1
        if not k.variant.cow_forgets_old_rmap and (k.variant.dax_mapcount or not old.zone_device):
            rmap.folio_remove_rmap_ptes(k, old, page, 1, vma)
        _map_new_anon_page(k, vma, addr, new)
        if not k.variant.cow_put_early:
            k.folio_put(old, 2)  # the PTE's reference and do_wp_page's temporary one
            ctx.put(old, 2)
    return None
