"""PMD- and PUD-level huge mappings (mm/huge_memory.c, Linux 7.1.8).

THP policy (thp_vma_allowable_orders, thp_vma_suitable_order), anonymous PMD faults and the
huge zero PMD, write faults on huge entries, file PMD mapping (do_set_pmd), inserting DAX
folios at PMD/PUD (vmf_insert_folio_pmd/pud), splitting, zapping and copying huge entries.
Folio splitting and the deferred-split shrinker are in huge_memory_split.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM_ANONPAGES, VM, mm_counter, mm_counter_file, vma_page_prot_writable
from foliosim.kernel.pgtable import PTE_DIRTY, PTE_SPECIAL, PTE_WRITE, PTE_YOUNG, Leaf
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


# ---- policy --------------------------------------------------------------------------------
def thp_vma_allowable_orders(k: Kernel, vma: VMA, below_pmd: bool = False) -> set[int]:
    """thp_vma_allowable_orders() for anonymous page faults (include/linux/huge_mm.h and
    __thp_vma_allowable_orders in mm/huge_memory.c, 7.1.8).

    Per size: "always" allows it; "madvise" needs VM_HUGEPAGE; "inherit" follows the global
    enabled knob (always, or madvise + VM_HUGEPAGE). The PMD size defaults to inherit, other
    sizes to never. VM_NOHUGEPAGE forbids all. Orders 0 and 1 are never anon THP orders.
    """
    if not k.config.enabled("TRANSPARENT_HUGEPAGE") or vma.flags & VM.NOHUGEPAGE:
        return set()
    hugepage = bool(vma.flags & VM.HUGEPAGE)
    glob = k.policy.enabled
    pmd_order = k.geometry.pmd_order
    settings = dict(k.policy.mthp)
    settings.setdefault(pmd_order, "inherit")
    allowed = set()
    for order, mode in settings.items():
        if order < 2 or order > pmd_order or (below_pmd and order == pmd_order):
            continue
        if mode == "inherit":
            mode = glob
        if mode == "always" or (mode == "madvise" and hugepage):
            allowed.add(order)
    return allowed


def thp_vma_suitable_order(k: Kernel, vma: VMA, addr: int, order: int) -> bool:
    """thp_vma_suitable_order() (include/linux/huge_mm.h, 7.1.8): the naturally aligned range
    of that order around addr lies inside the VMA, and for file VMAs the file offset is
    congruent to the address at that size."""
    nr = 1 << order
    size = k.page_size << order
    if not vma.is_anonymous and ((vma.start >> k.page_shift) - vma.pgoff) % nr:
        return False
    haddr = addr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


def vma_thp_disabled(vma: VMA) -> bool:
    """vma_thp_disabled(): VM_NOHUGEPAGE (prctl PR_SET_THP_DISABLE not modelled)."""
    return bool(vma.flags & VM.NOHUGEPAGE)


# ---- anonymous PMD faults --------------------------------------------------------------------
def create_huge_pmd(k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
    """create_huge_pmd() (mm/memory.c, 7.1.8): anon VMAs with the PMD order allowed go to
    do_huge_pmd_anonymous_page(); DAX VMAs to ->huge_fault(PMD_ORDER); others fall back."""
    if vma.is_anonymous:
        if k.geometry.pmd_order in thp_vma_allowable_orders(k, vma):
            return do_huge_pmd_anonymous_page(k, vma, addr, write)
        return "fallback"
    if vma.is_dax and vma.file is not None and not vma_thp_disabled(vma):
        # __thp_vma_allowable_orders(): DAX is allowed in the fault path unless VM_NOHUGEPAGE.
        return vma.file.huge_fault(k, vma, addr, write, k.geometry.pmd_order)  # type: ignore[attr-defined,no-any-return]
    return "fallback"


def mm_get_huge_zero_folio(k: Kernel, vma: VMA) -> Folio | None:
    """mm_get_huge_zero_folio() (mm/huge_memory.c, 7.1.8): one global reference per mm
    (MMF_HUGE_ZERO_FOLIO); the first ever use allocates it (THP_ZERO_PAGE_ALLOC)."""
    mm = vma.mm
    if k.config.enabled("PERSISTENT_HUGE_ZERO_FOLIO") and k.physmem.huge_zero_folio is not None:
        return k.physmem.huge_zero_folio
    if mm.huge_zero_folio and k.physmem.huge_zero_folio is not None:
        return k.physmem.huge_zero_folio
    try:
        folio, new = k.physmem.get_huge_zero_folio()
    except Exception:
        k.vmstat.count_event("thp_zero_page_alloc_failed")
        return None
    if new:
        k.vmstat.count_event("thp_zero_page_alloc")
        if k.config.enabled("PERSISTENT_HUGE_ZERO_FOLIO"):
            return folio
    mm.huge_zero_folio = True
    return folio


def do_huge_pmd_anonymous_page(k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
    """do_huge_pmd_anonymous_page() (mm/huge_memory.c, 7.1.8).

    An unsuitable range falls back silently. A read fault maps the huge zero PMD (special,
    deposited table, no ref/RSS). A write fault allocates a PMD folio (THP_FAULT_ALLOC, or
    THP_FAULT_FALLBACK and fall back) and maps it with map_anon_folio_pmd().
    """
    from foliosim.kernel.memory import anon_vma_prepare

    k.enter("do_huge_pmd_anonymous_page")
    if not thp_vma_suitable_order(k, vma, addr, k.geometry.pmd_order):
        return "fallback"
    anon_vma_prepare(vma)
    pmd_no = addr >> k.geometry.pmd_shift
    if not write and k.policy.use_zero_page:
        zero = mm_get_huge_zero_folio(k, vma)
        if zero is None:
            k.vmstat.count_event("thp_fault_fallback")
            return "fallback"
        vma.mm.pgtables.pte_tables.pop(pmd_no, None)
        vma.mm.pgtables.pmd_leaves[pmd_no] = Leaf(zero, special=True, deposited=True)
        vma.mm.pgtables.deposits += 1
        return None
    folio = k.alloc_folio(k.geometry.pmd_order)
    if folio is None:
        k.vmstat.count_event("thp_fault_fallback")
        return "fallback"
    vma.mm.pgtables.pte_tables.pop(pmd_no, None)
    map_anon_folio_pmd(k, vma, addr, folio)
    return None


def map_anon_folio_pmd(k: Kernel, vma: VMA, addr: int, folio: Folio) -> None:
    """map_anon_folio_pmd_pf() (mm/huge_memory.c, 7.1.8): exclusive new anon rmap (NR_ANON_THPS),
    deposit, MM_ANONPAGES += HPAGE_PMD_NR, THP_FAULT_ALLOC, and deferred_split_folio(folio,
    false) so the underused-THP shrinker can find it. The refcount stays 1."""
    rmap.folio_add_new_anon_rmap(k, folio, vma, exclusive=True)
    folio.index = vma.linear_page_index(addr & ~(k.geometry.pmd_size - 1), k.page_shift)
    folio.lru = True
    pmd_no = addr >> k.geometry.pmd_shift
    old = vma.mm.pgtables.pmd_leaves.get(pmd_no)
    if old is None or not old.deposited:
        vma.mm.pgtables.deposits += 1  # a huge zero PMD's deposited table is reused
    vma.mm.pgtables.pmd_leaves[pmd_no] = Leaf(
        folio, write=bool(vma.flags & VM.WRITE), dirty=True, young=True, deposited=True
    )
    vma.mm.rss[MM_ANONPAGES] += k.config.pmd_nr
    k.vmstat.count_event("thp_fault_alloc")
    rmap.deferred_split_folio(k, folio, False)


def huge_pmd_set_accessed(leaf: Leaf, write: bool) -> None:
    """huge_pmd_set_accessed()/touch_pmd(): young, and dirty on write."""
    leaf.young = True
    if write:
        leaf.dirty = True


def huge_pud_set_accessed(leaf: Leaf, write: bool) -> None:
    """huge_pud_set_accessed()/touch_pud()."""
    huge_pmd_set_accessed(leaf, write)


def wp_huge_pmd(k: Kernel, vma: VMA, addr: int) -> str | None:
    """wp_huge_pmd() (mm/memory.c, 7.1.8): anon -> do_huge_pmd_wp_page(); shared DAX ->
    ->huge_fault(PMD_ORDER); otherwise split the PMD and fall back to PTE level."""
    if vma.is_anonymous:
        return do_huge_pmd_wp_page(k, vma, addr)
    if vma.flags & (VM.SHARED | VM.MAYSHARE) and vma.is_dax and vma.file is not None:
        result = vma.file.huge_fault(k, vma, addr, True, k.geometry.pmd_order)  # type: ignore[attr-defined]
        if result != "fallback":
            return result  # type: ignore[no-any-return]
    __split_huge_pmd(k, vma, addr)
    return "fallback"


def do_huge_pmd_wp_page(k: Kernel, vma: VMA, addr: int) -> str | None:
    """do_huge_pmd_wp_page() (mm/huge_memory.c, 7.1.8).

    Huge zero PMD: do_huge_zero_wp_pmd() allocates a THP and maps it in place (the deposited
    table is kept); if that fails, split. Anon THP: reuse when the head is AnonExclusive or
    our PMD holds the only reference; otherwise split this mm's PMD and let the PTE level
    copy just the faulting page.
    """
    k.enter("do_huge_pmd_wp_page")
    pmd_no = addr >> k.geometry.pmd_shift
    leaf = vma.mm.pgtables.pmd_leaves[pmd_no]
    folio = leaf.folio
    if folio.kind == "huge_zero":
        new = k.alloc_folio(k.geometry.pmd_order)
        if new is not None:
            map_anon_folio_pmd(k, vma, addr, new)
            return None
        k.vmstat.count_event("thp_fault_fallback")
    elif folio.page_exclusive(0) or folio.refcount == 1:
        folio.set_exclusive(True)
        leaf.write = leaf.dirty = leaf.young = True
        return None
    __split_huge_pmd(k, vma, addr)
    return "fallback"


def wp_huge_pud(k: Kernel, vma: VMA, addr: int) -> str | None:
    """wp_huge_pud() (mm/memory.c, 7.1.8): shared DAX -> ->huge_fault(PUD_ORDER); otherwise
    (or on fallback) split the PUD."""
    if vma.flags & (VM.SHARED | VM.MAYSHARE) and vma.is_dax and vma.file is not None:
        result = vma.file.huge_fault(k, vma, addr, True, k.geometry.pud_order)  # type: ignore[attr-defined]
        if result != "fallback":
            return result  # type: ignore[no-any-return]
    __split_huge_pud(k, vma, addr)
    return "fallback"


# ---- file PMDs --------------------------------------------------------------------------
def do_set_pmd(k: Kernel, vma: VMA, addr: int, folio: Folio, write: bool) -> bool:
    """do_set_pmd() (mm/memory.c, 7.1.8): map a PMD-sized page-cache/shmem folio with one
    PMD: file rmap (NR_FILE_PMDMAPPED/NR_SHMEM_PMDMAPPED), RSS += HPAGE_PMD_NR,
    THP_FILE_MAPPED. Refused for VM_NOHUGEPAGE, a misaligned range or a folio that does not
    start at the PMD's file offset. The caller's reference becomes the mapping's."""
    geo = k.geometry
    if vma_thp_disabled(vma) or folio.order != geo.pmd_order:
        return False
    if not thp_vma_suitable_order(k, vma, addr, geo.pmd_order):
        return False
    haddr = addr & ~(geo.pmd_size - 1)
    if folio.index != vma.linear_page_index(haddr, k.page_shift):
        return False
    pmd_no = addr >> geo.pmd_shift
    table = vma.mm.pgtables.pte_tables.get(pmd_no)
    if table is not None and not table.all_none():
        return False  # pmd not none: a PTE table (pages or markers) is there
    vma.mm.pgtables.pte_tables.pop(pmd_no, None)
    k.enter("do_set_pmd")
    rmap.folio_add_file_rmap_pmd(k, folio, vma)
    vma.mm.rss[mm_counter_file(folio)] += k.config.pmd_nr
    writable = write or vma_page_prot_writable(vma)
    vma.mm.pgtables.pmd_leaves[pmd_no] = Leaf(folio, write=writable, dirty=write, young=True)
    k.vmstat.count_event("thp_file_mapped")
    return True


# ---- splitting huge entries ------------------------------------------------------------------
def __split_huge_pmd(k: Kernel, vma: VMA, addr: int) -> None:
    """__split_huge_pmd() -> __split_huge_pmd_locked() (mm/huge_memory.c, 7.1.8).

    Counts THP_SPLIT_PMD. Non-anonymous VMAs: the PMD is cleared; a mapped folio moves
    dirty/young into its flags, loses the PMD rmap, RSS and its reference (refault later).
    Anonymous huge zero PMD: 512 special zero-page PTEs in the deposited table. Anonymous
    THP: 512 PTEs with the PMD's bits, refcount +511, per-page mapcounts +1, AnonExclusive
    copied from the head to every page, then the PMD rmap is removed.
    """
    geo = k.geometry
    pmd_no = addr >> geo.pmd_shift
    leaf = vma.mm.pgtables.pmd_leaves.pop(pmd_no, None)
    if leaf is None:
        return
    if leaf.deposited:
        vma.mm.pgtables.deposits -= 1  # withdrawn: it becomes the PTE table (or is freed)
    k.enter("__split_huge_pmd_locked")
    k.vmstat.count_event("thp_split_pmd")
    folio = leaf.folio
    if not vma.is_anonymous:
        if leaf.special or folio.zero:
            return
        if leaf.dirty:
            folio.dirty = True
        if leaf.young:
            folio.referenced = True
        if k.variant.dax_mapcount or not folio.zone_device:
            rmap.folio_remove_rmap_pmd(k, folio, vma)
        vma.mm.rss[mm_counter_file(folio)] -= k.config.pmd_nr
        if not k.variant.split_pmd_forgets_ref:
            k.folio_put(folio)
        return
    table = vma.mm.pgtables.pte_table(pmd_no, create=True)
    assert table is not None
    nr = k.config.pmd_nr
    if folio.zero:
        table.set_same(0, nr, k.physmem.zero_folio, PTE_SPECIAL | PTE_YOUNG)
        return
    exclusive = folio.page_exclusive(0)
    k.folio_get(folio, nr - 1)
    bits = (PTE_WRITE if leaf.write else 0) | (PTE_DIRTY if leaf.dirty else 0)
    bits |= PTE_YOUNG if leaf.young else 0
    rmap.folio_add_anon_rmap_ptes(k, folio, 0, nr, vma, exclusive)
    table.set_run(0, folio, 0, nr, bits)
    rmap.folio_remove_rmap_pmd(k, folio, vma)


def split_huge_pmd_range(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """Split every PMD leaf that [start, end) covers only partially (zap_pmd_range and
    change_pmd_range do this; vma_adjust_trans_huge does it at VMA split points)."""
    geo = k.geometry
    for addr in (start, end):
        pmd_no = addr >> geo.pmd_shift
        if addr & (geo.pmd_size - 1) and pmd_no in vma.mm.pgtables.pmd_leaves:
            __split_huge_pmd(k, vma, addr)
    for addr in (start, end):
        pud_no = addr >> geo.pud_shift
        if addr & (geo.pud_size - 1) and pud_no in vma.mm.pgtables.pud_leaves:
            __split_huge_pud(k, vma, addr)


def __split_huge_pud(k: Kernel, vma: VMA, addr: int) -> None:
    """__split_huge_pud() -> __split_huge_pud_locked() (mm/huge_memory.c, 7.1.8; seed patch 07).

    Counts THP_SPLIT_PUD and clears the PUD: no smaller entries are created, accesses
    refault. For a DAX VMA the entry's dirty/young move into the folio, the PUD rmap goes,
    RSS drops by HPAGE_PUD_NR and the mapping's reference is put. Mainline (after
    40990c87a26e) updates RSS before folio_put; the seed did folio_put first and then read
    the folio to choose the counter (mm_counter_file), a use-after-put the ownership checker
    reports. Non-DAX (pfnmap special) PUDs carry no accounting.
    """
    pud_no = addr >> k.geometry.pud_shift
    leaf = vma.mm.pgtables.pud_leaves.pop(pud_no, None)
    if leaf is None:
        return
    k.enter("__split_huge_pud_locked")
    k.vmstat.count_event("thp_split_pud")
    if not vma.is_dax or leaf.special:
        return
    folio = leaf.folio
    variant = k.variant
    with k.ownership.context("__split_huge_pud_locked") as ctx:
        ctx.entry_cleared(folio)  # pudp_huge_clear_flush: the PUD's reference is ours now
        ctx.touch(folio, "folio_mark_dirty/folio_set_referenced")
        if leaf.dirty:
            folio.dirty = True
        if leaf.young:
            folio.referenced = True
        if not variant.split_pud_forgets_rmap and variant.dax_mapcount:
            ctx.touch(folio, "folio_remove_rmap_pud")
            rmap.folio_remove_rmap_pud(k, folio, vma)
        if variant.split_pud_put_before_rss:
            if not variant.split_pud_forgets_put:
                k.folio_put(folio)
                ctx.put(folio)
            ctx.touch(folio, "mm_counter_file(folio)")
            vma.mm.rss[mm_counter_file(folio)] -= k.config.pud_nr
        else:
            ctx.touch(folio, "mm_counter_file(folio)")
            vma.mm.rss[mm_counter_file(folio)] -= k.config.pud_nr
            if not variant.split_pud_forgets_put:
                k.folio_put(folio)
                ctx.put(folio)


def pud_clear_bad(k: Kernel, vma: VMA, pud_no: int, site: str) -> None:
    """pud_none_or_clear_bad() -> pud_clear_bad() (include/linux/pgtable.h, 7.1.8 and 6.1).

    On x86-64 pud_bad() is true for any leaf PUD (flags beyond _KERNPG_TABLE|_PAGE_USER: PSE,
    and before 6.17 DEVMAP), so a walker that asks pud_none_or_clear_bad() before looking for a
    huge PUD prints "bad pud" (pud_ERROR) and clears the entry as if it were a corrupt table
    pointer: no rmap removal, no RSS update, no folio_put. Leaves out the TLB flush.
    """
    leaf = vma.mm.pgtables.pud_leaves.pop(pud_no, None)
    if leaf is None:
        return
    k.enter("pud_clear_bad")
    k.reports.add(
        "ERROR",
        site,
        # pud_ERROR() as 6.18/7.3 print it from mm/pgtable-generic.c (pud_clear_bad).
        f"mm/pgtable-generic.c: bad pud {leaf.folio.pfn << k.page_shift:016x} "
        f"(pfn {leaf.folio.pfn:#x}; {site}: pud_none_or_clear_bad on a leaf PUD)",
    )
    if k.variant.mremap_pud_drops_rss and site == "get_old_pud" and not leaf.special:
        vma.mm.rss[mm_counter_file(leaf.folio)] -= k.config.pud_nr


# ---- zapping ---------------------------------------------------------------------------------
def zap_huge_pmd(k: Kernel, vma: VMA, pmd_no: int) -> None:
    """zap_huge_pmd() (mm/huge_memory.c, 7.1.8).

    The deposited table goes with anon THP and anonymous huge zero PMDs (never for DAX zero
    PMDs: the seed's rule). A mapped folio loses the PMD rmap and HPAGE_PMD_NR of RSS; its
    reference is dropped through the mmu_gather (here: at once).
    """
    leaf = vma.mm.pgtables.pmd_leaves.pop(pmd_no, None)
    if leaf is None:
        return
    k.enter("zap_huge_pmd")
    folio = leaf.folio
    if leaf.deposited:
        vma.mm.pgtables.deposits -= 1  # zap_deposited_table: pte_free + mm_dec_nr_ptes
    elif folio.zero and vma.is_dax and k.variant.dax_zero_pmd_withdraws_deposit:
        vma.mm.pgtables.deposits -= 1  # mutant: withdraws a table a DAX zero PMD never had
    if leaf.special:
        return
    if folio.zone_device and not k.variant.dax_refcounted:
        return
    with k.ownership.context("zap_huge_pmd") as ctx:
        ctx.entry_cleared(folio)  # pmdp_huge_get_and_clear_full: the entry's reference
        ctx.touch(folio, "folio_remove_rmap_pmd")
        if folio.anon or k.variant.dax_mapcount or not folio.zone_device:
            rmap.folio_remove_rmap_pmd(k, folio, vma)
        if not folio.anon:
            if leaf.dirty:
                folio.dirty = True
            if leaf.young:
                folio.referenced = True
        if k.variant.zap_pmd_put_early:
            k.folio_put(folio)  # mutant: the reference goes before the last use
            ctx.put(folio)
        if not k.variant.zap_pmd_forgets_rss:
            ctx.touch(folio, "mm_counter(folio)")
            vma.mm.rss[mm_counter(folio)] -= k.config.pmd_nr
        if not k.variant.zap_pmd_put_early:
            ctx.hand_over(folio, to="mmu_gather")  # tlb_remove_page_size
            k.folio_put(folio)


def zap_huge_pud(k: Kernel, vma: VMA, pud_no: int) -> None:
    """zap_huge_pud() (mm/huge_memory.c, 7.1.8; seed patch 07).

    Special (pfnmap, legacy devmap) PUDs: just cleared. Otherwise: an anonymous VMA is a BUG
    (seed: BUG_ON; mainline: VM_WARN_ON_ONCE); the PUD rmap is removed, HPAGE_PUD_NR of file
    RSS dropped, and the page freed through the mmu_gather at PUD size (the reference put).
    """
    leaf = vma.mm.pgtables.pud_leaves.pop(pud_no, None)
    if leaf is None:
        return
    k.enter("zap_huge_pud")
    if leaf.special:
        return
    folio = leaf.folio
    if vma.is_anonymous:
        if k.variant.anon_pud_zap_is_bug:
            k.reports.bug("zap_huge_pud", "BUG_ON(vma_is_anonymous(vma))")
        else:
            k.reports.vm_warn("zap_huge_pud", "anonymous VMA with a PUD leaf", once=True)
    with k.ownership.context("zap_huge_pud") as ctx:
        ctx.entry_cleared(folio)  # pudp_huge_get_and_clear_full
        if k.variant.dax_mapcount or not folio.zone_device:
            ctx.touch(folio, "folio_remove_rmap_pud")
            rmap.folio_remove_rmap_pud(k, folio, vma)
        if not k.variant.zap_pud_forgets_rss:
            ctx.touch(folio, "mm_counter_file(folio)")
            vma.mm.rss[mm_counter_file(folio)] -= k.config.pud_nr
        ctx.hand_over(folio, to="mmu_gather")  # tlb_remove_page_size
    k.folio_put(folio)  # tlb_finish_mmu frees the batch
