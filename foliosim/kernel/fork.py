"""fork(): dup_mmap (kernel/fork.c) and copy_page_range (mm/memory.c, mm/huge_memory.c), 7.1.8.

Page tables are copied only where vma_needs_copy() says so: the child VMA has
VM_COPY_ON_FORK (VM_PFNMAP | VM_MIXEDMAP | VM_UFFD_WP | VM_MAYBE_GUARD) or the parent VMA has
an anon_vma. Shared file, shmem and DAX mappings are refaulted by the child instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM, MM_ANONPAGES, VM, VMA, AnonVma, mm_counter
from foliosim.kernel.pgtable import (
    CLEAR_WRITE,
    CLEAR_WRITE_YOUNG,
    CLEAR_YOUNG,
    PTE_MARKER_GUARD,
    PTE_SPECIAL,
    PTE_WRITE,
    Leaf,
    PteTable,
)
from foliosim.kernel.physmem import NOT_EXCLUSIVE_ONE, Folio
from foliosim.kernel.pte_batch import copy_small_tables, table_blocks
from foliosim.kernel.smallpages import CLEAR_SMALL_EXCLUSIVE, MAX_SMALL_MAPCOUNT

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel

VM_COPY_ON_FORK = VM.PFNMAP | VM.MIXEDMAP | VM.MAYBE_GUARD


def dup_mmap(k: Kernel, parent: MM, child: MM) -> None:
    """dup_mmap() (kernel/fork.c, 7.1.8): copy every VMA except VM_DONTCOPY ones. A VMA whose
    parent has an anon_vma gets one of its own, linked to the parent's (anon_vma_fork,
    mm/rmap.c): one per VMA, so two child VMAs from one split parent VMA do not share one,
    and the child VMA is a fork child (VMA.fork_child). Left out: anon_vma_clone()'s reuse
    of an anon_vma in the chain with no VMA left and under two children."""
    k.enter("dup_mmap")
    for vma in parent.vmas:
        if vma.flags & VM.DONTCOPY:
            continue
        forked = vma.anon_vma is not None
        anon = AnonVma() if forked else None
        new = VMA(child, vma.start, vma.end, vma.flags, vma.file, vma.pgoff, anon, forked)
        child.insert_vma(new)
        if vma_needs_copy(new, vma):
            copy_page_range(k, new, vma)
    child.has_pinned = False


def vma_needs_copy(dst: VMA, src: VMA) -> bool:
    """vma_needs_copy() (mm/memory.c, 7.1.8)."""
    return bool(dst.flags & VM_COPY_ON_FORK) or src.anon_vma is not None


def copy_page_range(k: Kernel, dst: VMA, src: VMA) -> None:
    """copy_page_range() (mm/memory.c, 7.1.8): PUD and PMD leaves, then PTE tables."""
    geo = k.geometry
    spt = src.mm.pgtables
    lo_pud, hi_pud = src.start >> geo.pud_shift, (src.end - 1) >> geo.pud_shift
    for pud_no in [n for n in spt.pud_leaves if lo_pud <= n <= hi_pud]:
        copy_huge_pud(k, dst, src, pud_no)
    lo, hi = src.start >> geo.pmd_shift, (src.end - 1) >> geo.pmd_shift
    for pmd_no in [n for n in spt.pmd_leaves if lo <= n <= hi]:
        if not copy_huge_pmd(k, dst, src, pmd_no):
            # -EAGAIN: the source PMD was split; copy at PTE level below.
            pass
    # Whole tables full of order-0 anonymous pages held as arrays are copied as blocks
    # (pte_batch.copy_small_tables); ``full`` gathers consecutive candidates.
    full: list[int] = []
    blocks = k.small_anon and k.physmem.small.live
    nr_slots = geo.ptrs_per_pte
    dtables = dst.mm.pgtables.pte_tables
    for pmd_no in sorted(n for n in spt.pte_tables if lo <= n <= hi):
        table = spt.pte_tables[pmd_no]
        base = pmd_no << geo.pmd_shift
        if (
            blocks
            and table.present == nr_slots
            and src.start <= base
            and base + geo.pmd_size <= src.end
            and pmd_no not in dtables
        ):
            full.append(pmd_no)
            continue
        if full:
            _copy_full_tables(k, dst, src, full)
            full = []
        copy_pte_range(k, dst, src, pmd_no)
    if full:
        _copy_full_tables(k, dst, src, full)


def _copy_full_tables(k: Kernel, dst: VMA, src: VMA, full: list[int]) -> None:
    """copy_pte_range() (mm/memory.c, 7.1.8) for consecutive tables every slot of which
    maps a page, in order:
    runs of tables holding only pages held as arrays as blocks, the others one by one."""
    spt = src.mm.pgtables.pte_tables
    keep_exclusive = k.variant.cow_keeps_exclusive
    for group, block in table_blocks(k, [(n, spt[n]) for n in full]):
        if block is not None and copy_small_tables(k, dst, src, block, keep_exclusive):
            continue
        for pmd_no, _ in group:
            copy_pte_range(k, dst, src, pmd_no)


def copy_huge_pmd(k: Kernel, dst: VMA, src: VMA, pmd_no: int) -> bool:
    """copy_huge_pmd() (mm/huge_memory.c, 7.1.8).

    Non-anonymous destination: nothing copied (refault), unless the PMD is special. Huge zero
    PMD: the child takes its own huge-zero reference, a deposited table, both wrprotected.
    Anon THP: +1 reference, entire/large mapcount +1, head AnonExclusive cleared, child
    MM_ANONPAGES += HPAGE_PMD_NR, both wrprotected, the child's entry old. If the folio may be
    DMA-pinned and is exclusive, the source PMD is split instead (-EAGAIN).
    """
    from foliosim.kernel.huge_memory import __split_huge_pmd, mm_get_huge_zero_folio

    leaf = src.mm.pgtables.pmd_leaves[pmd_no]
    folio = leaf.folio
    if leaf.special and not folio.zero:
        dst.mm.pgtables.pmd_leaves[pmd_no] = Leaf(folio, leaf.write, leaf.dirty, False, True)
        return True
    if not dst.is_anonymous:
        return True
    cow = src.is_cow_mapping
    if folio.zero:
        mm_get_huge_zero_folio(k, dst)
        leaf.write = False
        dst.mm.pgtables.pmd_leaves[pmd_no] = Leaf(folio, False, False, False, True, True)
        dst.mm.pgtables.deposits += 1
        return True
    maybe_pinned = src.mm.has_pinned and folio.maybe_dma_pinned()
    if k.variant.fork_skips_pmd_dup:
        ok = True
    else:
        ok = rmap.folio_try_dup_anon_rmap_pmd(k, folio, dst, maybe_pinned)
    if not ok:
        __split_huge_pmd(k, src, pmd_no << k.geometry.pmd_shift)
        return False
    k.folio_get(folio)
    dst.mm.rss[MM_ANONPAGES] += k.config.pmd_nr
    if cow:
        leaf.write = False
    dst.mm.pgtables.pmd_leaves[pmd_no] = Leaf(
        folio, write=leaf.write, dirty=leaf.dirty, young=False, deposited=True
    )
    dst.mm.pgtables.deposits += 1
    return True


def copy_huge_pud(k: Kernel, dst: VMA, src: VMA, pud_no: int) -> None:
    """copy_huge_pud() (mm/huge_memory.c, 7.1.8): copies the entry (wrprotected if COW) with
    no reference, rmap or RSS: written for special pfnmap PUDs. A refcounted DAX PUD copied
    this way (only possible when the VMA has VM_MAYBE_GUARD) is unaccounted in the child,
    the latent gap noted in research section 3: the invariants report it, the kernel is
    silent."""
    leaf = src.mm.pgtables.pud_leaves[pud_no]
    if k.variant.copy_huge_pud_skips_refcounted and not leaf.special:
        return  # a fix (variant mainline-fixed): the child faults the PUD in itself
    if src.is_cow_mapping:
        leaf.write = False
    dst.mm.pgtables.pud_leaves[pud_no] = Leaf(
        leaf.folio, leaf.write, leaf.dirty, False, leaf.special
    )


def copy_pte_range(k: Kernel, dst: VMA, src: VMA, pmd_no: int) -> None:
    """copy_pte_range() -> copy_present_ptes() (mm/memory.c, 7.1.8) for one PTE table.

    Runs of one folio are duplicated together: +nr references, mapcounts +nr (anon:
    AnonExclusive cleared), child RSS +nr; COW mappings lose the write bit in parent and
    child; child entries are old. Guard markers are copied. An exclusive anon page that may
    be DMA-pinned is copied into a new page for the child at once (copy_present_page).
    """
    geo = k.geometry
    stable = src.mm.pgtables.pte_tables[pmd_no]
    lo = pmd_no << geo.pmd_shift
    first = max(src.start - lo, 0) >> k.page_shift
    last = min(src.end - lo, geo.pmd_size) >> k.page_shift
    dtable = dst.mm.pgtables.pte_table(pmd_no, create=True)
    assert dtable is not None
    cow = src.is_cow_mapping
    markers = np.flatnonzero(stable.bits[first:last] & PTE_MARKER_GUARD) + first
    dtable.bits[markers] = PTE_MARKER_GUARD
    pinned = src.mm.has_pinned
    # Order-0 anonymous folios that cannot be DMA-pinned, inline: what _copy_run does to
    # each (folio_try_dup_anon_rmap_pte clears AnonExclusive and adds a mapcount, folio_get),
    # with the child's RSS, the touched set and the entries (both wrprotected when COW, the
    # child's old) updated once per table below.
    keep_exclusive = k.variant.cow_keeps_exclusive
    get = not k.variant.fork_pte_skips_ref
    skips_dup = k.variant.fork_pte_skips_dup
    others = True
    if k.small_anon:
        others = _copy_small_anon_arrays(k, dst, stable, dtable, first, last, cow, keep_exclusive)
    small_slots: list[int] = []
    small: list[Folio] = []
    runs = stable.runs(first, last, skip_small=True) if others else []
    for slot, nr, folio, page, special in runs:
        if (
            not special
            and folio.order == 0
            and folio.anon
            and folio.pgmap is None
            and not (pinned and folio.maybe_dma_pinned())
        ):
            if not skips_dup:
                if folio.anon_exclusive is not None and not keep_exclusive:
                    folio.anon_exclusive = NOT_EXCLUSIVE_ONE
                folio.mapcount_small += 1
                if get:
                    folio.refcount += 1
            small_slots.append(slot)
            small.append(folio)
            continue
        _copy_run(k, dst, src, stable, dtable, slot, folio, page, nr, cow)
    if small:
        if get:
            k.touched.update(small)
        dst.mm.rss[MM_ANONPAGES] += len(small)
        idx = np.array(small_slots, dtype=np.intp)
        if cow:
            stable.bits[idx] &= CLEAR_WRITE
        dtable.bump(small_slots[0], small_slots[-1] + 1)  # runs() yields slots in order
        dtable.present += len(small) - int(np.count_nonzero(dtable.pfn[idx] >= 0))
        dtable.pfn[idx] = stable.pfn[idx]
        dtable.bits[idx] = stable.bits[idx] & CLEAR_YOUNG


def _copy_small_anon_arrays(
    k: Kernel,
    dst: VMA,
    stable: PteTable,
    dtable: PteTable,
    first: int,
    last: int,
    cow: bool,
    keep_exclusive: bool,
) -> bool:
    """copy_present_ptes() for the order-0 anonymous pages held as arrays in slots
    [first, last) (smallpages.py), all at once: folio_try_dup_anon_rmap_pte() clears
    AnonExclusive and adds a mapcount (and with it the reference), the child's MM_ANONPAGES
    grows, a COW mapping loses the write bit in parent and child, the child's entries are
    old. Such a page is never DMA-pinned (a pin makes it an object), so none is copied.
    Returns whether other entries map pages in the range."""
    slots, pfns, others = stable.split_small(first, last)
    n = int(slots.shape[0])
    if not n:
        return others
    mem = k.physmem
    if k.variant.fork_pte_skips_dup:  # mutant: no folio_try_dup_anon_rmap_pte, no folio_get
        keep_exclusive = True
    crowded = mem.small.mapcount[pfns] >= MAX_SMALL_MAPCOUNT
    if crowded.any():  # no room for one more mapcount in an int16: make them objects
        for slot in slots[crowded].tolist():
            stable.entry(slot)
        keep = ~crowded
        slots, pfns, others = slots[keep], pfns[keep], True
        n = int(slots.shape[0])
        if not n:
            return others
    if not k.variant.fork_pte_skips_dup:
        mem.small.mapcount[pfns] += 1  # one entry per page in one mm: no repeated pfns
    if not keep_exclusive:
        mem.state[pfns] &= CLEAR_SMALL_EXCLUSIVE
    if k.touched_small is not None:
        k.touched_small.append(pfns)
    dst.mm.rss[MM_ANONPAGES] += n
    if cow:
        stable.bits[slots] &= CLEAR_WRITE
    dtable.bump(int(slots[0]), int(slots[-1]) + 1)
    dtable.present += n - int(np.count_nonzero(dtable.pfn[slots] >= 0))
    dtable.pfn[slots] = pfns
    dtable.bits[slots] = stable.bits[slots] & CLEAR_YOUNG
    return others


def _copy_run(
    k: Kernel,
    dst: VMA,
    src: VMA,
    stable: object,
    dtable: object,
    slot: int,
    folio: Folio,
    page: int,
    nr: int,
    cow: bool,
) -> None:
    assert isinstance(stable, PteTable) and isinstance(dtable, PteTable)
    bits = stable.bits[slot : slot + nr].copy()
    if bits[0] & PTE_SPECIAL:
        if cow:
            stable.bits[slot : slot + nr] &= CLEAR_WRITE
        dtable.bump(slot, slot + nr)
        window = dtable.pfn[slot : slot + nr]
        dtable.present += nr - int(np.count_nonzero(window >= 0))
        window[:] = stable.pfn[slot : slot + nr]
        dtable.bits[slot : slot + nr] = bits & (CLEAR_WRITE_YOUNG if cow else CLEAR_YOUNG)
        return
    if folio.anon:
        maybe_pinned = src.mm.has_pinned and folio.maybe_dma_pinned()
        if not rmap.folio_try_dup_anon_rmap_ptes(k, folio, page, nr, dst, maybe_pinned):
            # copy_present_page(): copy each page for the child now, parent untouched.
            for off in range(nr):
                _copy_present_page(k, dst, dtable, slot + off, folio, page + off)
            return
    elif k.variant.dax_mapcount or not folio.zone_device:
        rmap.folio_dup_file_rmap_ptes(k, folio, page, nr, dst)
    if not k.variant.fork_pte_skips_ref:
        k.folio_get(folio, nr)
    dst.mm.rss[mm_counter(folio)] += nr
    if cow:
        stable.bits[slot : slot + nr] &= CLEAR_WRITE
        bits &= CLEAR_WRITE
    dtable.set_run(slot, folio, page, nr, 0)
    dtable.bits[slot : slot + nr] = bits & CLEAR_YOUNG


def _copy_present_page(
    k: Kernel, dst: VMA, dtable: object, slot: int, src_folio: Folio, page: int
) -> None:
    from foliosim.kernel.pgtable import PTE_DIRTY

    assert isinstance(dtable, PteTable)
    new = k.alloc_folio(0)
    if new is None:
        return
    if src_folio.page_written(page):
        new.mark_written()
    rmap.folio_add_new_anon_rmap(k, new, dst, exclusive=True)
    new.lru = True
    dst.mm.rss[MM_ANONPAGES] += 1
    bits = PTE_DIRTY | (PTE_WRITE if dst.flags & VM.WRITE else 0)
    dtable.set(slot, new, 0, bits)
