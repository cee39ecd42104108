"""Unmapping page ranges: zap_page_range_single / unmap_vmas (mm/memory.c, Linux 7.1.8).

zap_pud_range -> zap_pmd_range -> zap_pte_range: a huge leaf fully inside the range is
zapped whole, a partly covered one is split first (PUD: dropped entirely; anon PMD: remapped
by PTEs, then only the covered PTEs go). PTEs are handled a page-table page at a time, in runs
of consecutive entries of one folio (folio_pte_batch), each run one rmap update.
Folio references are dropped after the rmap updates, as tlb_finish_mmu frees the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.kernel import huge_memory, rmap
from foliosim.kernel.mm import MM_ANONPAGES, mm_counter
from foliosim.kernel.pgtable import PTE_DIRTY, PTE_MARKER_GUARD, PTE_YOUNG, PteTable
from foliosim.kernel.physmem import Folio
from foliosim.kernel.pte_batch import Gather, table_blocks, zap_small_tables

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


def unmap_page_range(
    k: Kernel,
    vma: VMA,
    start: int,
    end: int,
    *,
    drop_markers: bool = False,
    keep_anon: bool = False,
) -> None:
    """unmap_page_range() over [start, end) of one VMA.

    ``drop_markers`` removes guard markers too (munmap/exit tear the tables down);
    MADV_DONTNEED leaves them. ``keep_anon`` spares anonymous (COWed) pages of a private
    file mapping, as unmap_mapping_range() does for a hole punch (even_cows == 0).
    """
    k.enter("unmap_page_range")
    geo = k.geometry
    start = max(start, vma.start)
    end = min(end, vma.end)
    if start >= end:
        return
    pgt = vma.mm.pgtables
    # PUD level: zap whole leaves, split partial ones (zap_pud_range).
    for pud_no in _keys_in(pgt.pud_leaves, start >> geo.pud_shift, (end - 1) >> geo.pud_shift):
        lo = pud_no << geo.pud_shift
        if start <= lo and lo + geo.pud_size <= end:
            huge_memory.zap_huge_pud(k, vma, pud_no)
        else:
            if k.variant.zap_pud_asserts_mmap_lock and not k.mmap_locked:
                # 6.18's zap_pud_range: mmap_assert_locked() before split_huge_pud(), which a
                # per-VMA-locked MADV_DONTNEED does not hold (rwsem_assert_held_nolockdep).
                k.reports.warn(
                    "include/linux/rwsem.h:80",
                    "unmap_page_range: mmap_assert_locked in zap_pud_range",
                )
            huge_memory.__split_huge_pud(k, vma, max(start, lo))
    # PMD level (zap_pmd_range).
    for pmd_no in _keys_in(pgt.pmd_leaves, start >> geo.pmd_shift, (end - 1) >> geo.pmd_shift):
        lo = pmd_no << geo.pmd_shift
        if start <= lo and lo + geo.pmd_size <= end:
            huge_memory.zap_huge_pmd(k, vma, pmd_no)
        else:
            huge_memory.__split_huge_pmd(k, vma, max(start, lo))
    # PTE level (zap_pte_range).
    # The mmu_gather batch: folios and the references to drop; an array is pages held as
    # arrays whose last reference went with their last mapping (zap_pte_range).
    puts: list[Folio | np.ndarray[Any, Any]] = []
    refs: list[int] = []
    batch = (puts, refs)
    nr_slots = geo.ptrs_per_pte
    # Whole tables full of order-0 anonymous pages held as arrays go through one block
    # operation (pte_batch.zap_small_tables); ``full`` gathers consecutive candidates.
    full: list[tuple[int, PteTable]] = []
    blocks = k.small_anon and not keep_anon and k.physmem.small.live
    for pmd_no in _keys_in(pgt.pte_tables, start >> geo.pmd_shift, (end - 1) >> geo.pmd_shift):
        table = pgt.pte_tables[pmd_no]
        lo = pmd_no << geo.pmd_shift
        if blocks and table.present == nr_slots and start <= lo and lo + geo.pmd_size <= end:
            full.append((pmd_no, table))
            continue
        if full:
            _zap_full_tables(k, vma, full, batch, drop_markers)
            full = []
        first = max(start - lo, 0) >> k.page_shift
        last = min(end - lo, geo.pmd_size) >> k.page_shift
        _zap_table(k, vma, pmd_no, table, first, last, batch, drop_markers, keep_anon)
    if full:
        _zap_full_tables(k, vma, full, batch, drop_markers)
    k.folios_put_refs(puts, refs)


def _zap_full_tables(
    k: Kernel,
    vma: VMA,
    full: list[tuple[int, PteTable]],
    batch: Gather,
    drop_markers: bool,
) -> None:
    """zap_pte_range() (mm/memory.c, 7.1.8) over consecutive tables every slot of which
    maps a page, in order:
    runs of tables holding only pages held as arrays as blocks, the others one by one."""
    for group, block in table_blocks(k, full):
        if block is not None:
            zap_small_tables(k, vma, block, batch, drop_markers)
            continue
        for pmd_no, table in group:
            _zap_table(k, vma, pmd_no, table, 0, table.nr_slots, batch, drop_markers)


def _zap_table(
    k: Kernel,
    vma: VMA,
    pmd_no: int,
    table: PteTable,
    first: int,
    last: int,
    batch: Gather,
    drop_markers: bool,
    keep_anon: bool = False,
) -> None:
    zap_pte_range(k, vma, table, first, last, batch, drop_markers, keep_anon)
    if drop_markers and table.all_none():
        del vma.mm.pgtables.pte_tables[pmd_no]


_NONE: np.ndarray[Any, Any] = np.empty(0, dtype=np.int64)


def _keys_in(table: Mapping[int, object], lo: int, hi: int) -> list[int]:
    if hi - lo < len(table):
        return [n for n in range(lo, hi + 1) if n in table]
    return sorted(n for n in table if lo <= n <= hi)


def _queue_gone(
    puts: list[Folio | np.ndarray[Any, Any]],
    refs: list[int],
    gone: np.ndarray[Any, Any],
    gone_slots: np.ndarray[Any, Any],
    queued: int,
    before: int,
) -> int:
    """Queue the pages held as arrays of ``gone`` from ``queued`` on whose slots come before
    slot ``before``, as one batch entry; returns how many of ``gone`` are queued now."""
    upto = int(np.searchsorted(gone_slots, before))
    if upto > queued:
        puts.append(gone[queued:upto])
        refs.append(0)  # their references went with their mapcounts (refcount == mapcount)
    return upto


def zap_pte_range(
    k: Kernel,
    vma: VMA,
    table: PteTable,
    first: int,
    last: int,
    batch: Gather,
    drop_markers: bool,
    keep_anon: bool = False,
) -> None:
    """zap_pte_range() -> zap_present_ptes() (mm/memory.c, 7.1.8) over slots [first, last).

    Per run of one folio: RSS -= nr (MM_ANONPAGES / mm_counter_file), dirty/young PTE bits go
    into the folio (file folios), folio_remove_rmap_ptes(nr), and nr references queued for
    the mmu_gather ``batch`` (folios, refs). Special entries (zero page, devmap/pfnmap) only
    clear. Order-0 anonymous folios take an inline path whose RSS and vmstat updates are
    summed per table.
    """
    bits = table.bits
    kept_markers = None
    if drop_markers:
        markers = np.flatnonzero(bits[first:last] & PTE_MARKER_GUARD) + first
        bits[markers] = 0
    elif not keep_anon:
        kept_markers = np.flatnonzero(bits[first:last] & PTE_MARKER_GUARD) + first
    variant = k.variant
    rss = vma.mm.rss
    puts, refs = batch
    cleared: list[tuple[int, int]] = []  # only needed when anon entries stay
    small = unmapped = 0  # order-0 anonymous folios mapped by one PTE each: inline
    forgets_rmap = variant.zap_pte_forgets_rmap
    # Order-0 anonymous pages held as arrays (smallpages.py; a hole punch keeps them all):
    # folio_remove_rmap_pte() on each at once, and the ones whose last mapping (so last
    # reference) this was queued, in slot order among the other folios of the batch.
    gone_slots = gone = _NONE
    array_pages = 0
    others = True
    if not keep_anon:
        slots, pfns, others = table.split_small(first, last)
        array_pages = int(slots.shape[0])
        if array_pages:
            mapcount = k.physmem.small.mapcount
            after = mapcount[pfns] - 1
            mapcount[pfns] = after  # one entry per page in one mm: no repeated pfns
            last_map = after == 0
            gone_slots, gone = slots[last_map], pfns[last_map]
            unmapped += int(gone.shape[0])
            small += array_pages
            if k.touched_small is not None:
                k.touched_small.append(pfns)
    runs = table.runs(first, last, skip_small=True) if others else []
    queued = 0  # pages held as arrays already in the batch
    for slot, nr, folio, page, special in runs:
        if queued < gone.shape[0] and gone_slots[queued] < slot:
            queued = _queue_gone(puts, refs, gone, gone_slots, queued, slot)
        if keep_anon:
            if folio.anon:
                continue
            cleared.append((slot, nr))
        if special:
            continue
        if folio.order == 0 and folio.anon and not folio.zero and folio.pgmap is None:
            # folio_remove_rmap_pte() of a small folio: mapcount - 1, NR_ANON_MAPPED - 1 at
            # zero (summed below), one reference queued; MM_ANONPAGES - 1 (summed below).
            small += 1
            if not forgets_rmap:
                folio.mapcount_small -= 1
                if not folio.mapcount_small:
                    unmapped += 1
            puts.append(folio)
            refs.append(1)
            continue
        if not folio.anon:
            # The bits any entry of the run has (one reduction instead of a test per bit).
            run_bits = (
                int(bits[slot]) if nr == 1 else int(np.bitwise_or.reduce(bits[slot : slot + nr]))
            )
            if run_bits & PTE_DIRTY:
                folio.dirty = True
            if run_bits & PTE_YOUNG:
                folio.referenced = True
        rss[mm_counter(folio)] -= nr
        if not forgets_rmap and (variant.dax_mapcount or not folio.zone_device):
            rmap.folio_remove_rmap_ptes(k, folio, page, nr, vma)
        puts.append(folio)
        refs.append(nr)
    if queued < gone.shape[0]:
        _queue_gone(puts, refs, gone, gone_slots, queued, last)
    if small:
        if not variant.zap_small_forgets_rss:
            rss[MM_ANONPAGES] -= small
        if unmapped:
            k.vmstat.mod("nr_anon_pages", -unmapped)
    if not keep_anon:
        if runs or array_pages:
            table.clear_range(first, last)
        if kept_markers is not None and kept_markers.size:
            bits[kept_markers] = PTE_MARKER_GUARD
    else:
        for slot, nr in cleared:
            table.clear_range(slot, slot + nr)
