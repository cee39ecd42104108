"""Whole page-table pages of order-0 anonymous pages held as arrays, many at a time.

A large anonymous range faulted with 4K pages fills page-table page after page-table page
with order-0 pages held as arrays (smallpages.py). For such a run of full tables, the
per-table paths of fault (do_anonymous_page), zap (zap_pte_range) and fork (copy_pte_range)
do the same thing to every entry, so this module does it to all the tables' entries in one
NumPy operation, and keeps a Python step per table only for the table object itself. The
results are exactly those of the per-table paths (the tests run the scenario suites both
ways); what is left out is only the per-table cost.

Pages held as arrays are mapped at most once per mm (fork maps them in another mm; paths
that could map a page twice in one mm, such as mremap, make it an object first), so a
block's pfns are distinct. When they are also one range of pfns — what the allocator hands
out for a fresh range — the per-page counters are updated through one slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.kernel.mm import MM_ANONPAGES
from foliosim.kernel.pgtable import CLEAR_WRITE, CLEAR_YOUNG, PteTable
from foliosim.kernel.smallpages import (
    CLEAR_SMALL_EXCLUSIVE,
    MAX_SMALL_MAPCOUNT,
    PAGE_SMALL_ANON,
)

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA
    from foliosim.kernel.physmem import Folio

# Fewer tables than this are done one by one (the block costs a few fixed operations).
MIN_BLOCK = 2


def table_blocks(
    k: Kernel, full: list[tuple[int, PteTable]]
) -> list[tuple[list[tuple[int, PteTable]], bool]]:
    """Consecutive tables every slot of which maps a page, cut into groups in order: each
    run of at least MIN_BLOCK tables holding only pages held as arrays is a block (True),
    the tables between them go one by one (False)."""
    if len(full) < MIN_BLOCK:
        return [(full, False)]
    pfns = np.stack([t.pfn for _, t in full])
    mask = np.take(k.physmem.state, pfns, mode="clip") & PAGE_SMALL_ANON
    held: list[bool] = np.asarray(mask.all(axis=1)).tolist()
    groups: list[tuple[list[tuple[int, PteTable]], bool]] = []
    start = 0
    for i in range(1, len(full) + 1):
        if i < len(full) and held[i] == held[start]:
            continue
        run = full[start:i]
        block = bool(held[start]) and len(run) >= MIN_BLOCK
        if groups and not block and not groups[-1][1]:
            groups[-1][0].extend(run)
        else:
            groups.append((run, block))
        start = i
    return groups


def _span(pfns: np.ndarray[Any, Any]) -> tuple[int, int] | None:
    """(lo, hi) when these distinct pfns are exactly the range [lo, hi), else None."""
    lo = int(pfns.min())
    hi = int(pfns.max()) + 1
    return (lo, hi) if hi - lo == pfns.shape[0] else None


def zap_small_tables(
    k: Kernel,
    vma: VMA,
    block: list[tuple[int, PteTable]],
    batch: tuple[list[Folio | np.ndarray[Any, Any]], list[int]],
    drop_markers: bool,
) -> None:
    """zap_pte_range() over whole tables holding only pages held as arrays: each page
    loses a mapcount (its reference with it), MM_ANONPAGES drops by the entries, the pages
    whose last mapping this was go into the mmu_gather ``batch`` in table and slot order,
    NR_ANON_MAPPED drops by them. munmap/exit free the tables; MADV_DONTNEED empties them."""
    pfns = np.stack([t.pfn for _, t in block]).ravel()
    mapcount = k.physmem.small.mapcount
    span = _span(pfns)
    if span is not None:
        counts = mapcount[span[0] : span[1]]
        counts -= 1
        if not counts.any():
            gone = pfns
        elif counts.all():
            gone = pfns[:0]
        else:
            gone = pfns[mapcount[pfns] == 0]
    else:
        after = mapcount[pfns] - 1
        mapcount[pfns] = after
        gone = pfns[after == 0]
    n = int(pfns.shape[0])
    if not k.variant.zap_small_forgets_rss:
        vma.mm.rss[MM_ANONPAGES] -= n
    if gone.shape[0]:
        k.vmstat.mod("nr_anon_pages", -int(gone.shape[0]))
        puts, refs = batch
        puts.append(gone)
        refs.append(0)  # their references went with their mapcounts
    if k.touched_small is not None:
        k.touched_small.append(pfns)
    tables = vma.mm.pgtables.pte_tables
    for pmd_no, table in block:
        if drop_markers:  # full tables have no markers: nothing is left, the table goes
            del tables[pmd_no]
        else:
            table.clear_range(0, table.nr_slots)


def copy_small_tables(
    k: Kernel, dst: VMA, src: VMA, block: list[tuple[int, PteTable]], keep_exclusive: bool
) -> bool:
    """copy_pte_range() for whole tables of ``src`` holding only pages held as arrays, into
    a child that has no table there yet: every page gains a mapcount (and reference) and
    loses AnonExclusive, the child's MM_ANONPAGES grows, a COW mapping's entries lose the
    write bit on both sides, the child's entries are old. False, with nothing done, when a
    page has no room for another mapcount (the per-table path makes it an object)."""
    pfns = np.stack([t.pfn for _, t in block])
    flat = pfns.ravel()
    mem = k.physmem
    span = _span(flat)
    counts = mem.small.mapcount[span[0] : span[1]] if span is not None else mem.small.mapcount[flat]
    if int(counts.max()) >= MAX_SMALL_MAPCOUNT:
        return False
    if k.variant.fork_pte_skips_dup:  # mutant: no folio_try_dup_anon_rmap_pte, no folio_get
        pass
    elif span is not None:
        mem.small.mapcount[span[0] : span[1]] += 1
        if not keep_exclusive:
            mem.state[span[0] : span[1]] &= CLEAR_SMALL_EXCLUSIVE
    else:
        mem.small.mapcount[flat] += 1
        if not keep_exclusive:
            mem.state[flat] &= CLEAR_SMALL_EXCLUSIVE
    if src.is_cow_mapping:
        for _, table in block:
            table.bits &= CLEAR_WRITE
    bits = np.stack([t.bits for _, t in block])
    bits &= CLEAR_YOUNG
    if k.touched_small is not None:
        k.touched_small.append(flat)
    dpgt = dst.mm.pgtables
    nr = pfns.shape[1]
    for i, (pmd_no, _) in enumerate(block):
        dpgt.pte_tables[pmd_no] = PteTable.from_arrays(
            mem, dpgt.changed, pmd_no, dpgt.mm, pfns[i], bits[i], nr
        )
    dst.mm.rss[MM_ANONPAGES] += int(flat.shape[0])
    return True


def fault_small_tables(k: Kernel, vma: VMA, first_pmd: int, count: int, written: bool) -> int:
    """``count`` tables' worth of do_anonymous_page() write faults on PMD ranges that have
    no table yet, each taking the order-0 path (the caller checked that no THP order may be
    used): new pages held as arrays, exclusive, mapped young, dirty and (if the VMA is)
    writable; MM_ANONPAGES and NR_ANON_MAPPED grow. Returns the pages mapped: 0 when memory
    or anon_vma indexes run short (the caller then faults table by table and meets it)."""
    from foliosim.kernel.memory import anon_vma_prepare
    from foliosim.kernel.mm import VM
    from foliosim.kernel.pgtable import PTE_DIRTY, PTE_WRITE, PTE_YOUNG
    from foliosim.kernel.smallpages import SMALL_EXCLUSIVE, SMALL_WRITTEN

    nr = k.geometry.ptrs_per_pte
    total = count * nr
    mem = k.physmem
    if mem.order0_available() < total:
        return 0
    anon_vma_prepare(vma)
    flags = SMALL_EXCLUSIVE | (SMALL_WRITTEN if written else 0)
    pfns = mem.alloc_small_anon(total, vma.anon_vma, flags)
    if pfns is None:
        return 0
    assert pfns.shape[0] == total
    bits = np.full(
        (count, nr),
        PTE_YOUNG | PTE_DIRTY | (PTE_WRITE if vma.flags & VM.WRITE else 0),
        dtype=np.uint8,
    )
    rows = pfns.reshape(count, nr)
    pgt = vma.mm.pgtables
    for i in range(count):
        k.enter("do_anonymous_page")  # once per table, as the per-table path
        pmd_no = first_pmd + i
        pgt.pte_tables[pmd_no] = PteTable.from_arrays(
            mem, pgt.changed, pmd_no, pgt.mm, rows[i], bits[i], nr
        )
    if k.touched_small is not None:
        k.touched_small.append(pfns)
    k.vmstat.count_event("pgfault", total)
    vma.mm.rss[MM_ANONPAGES] += total
    k.vmstat.mod("nr_anon_pages", total)
    return total
