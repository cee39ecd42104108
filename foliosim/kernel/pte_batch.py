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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.kernel.memory import anon_vma_prepare
from foliosim.kernel.mm import MM_ANONPAGES, VM
from foliosim.kernel.pgtable import (
    CLEAR_WRITE,
    CLEAR_YOUNG,
    PTE_DIRTY,
    PTE_WRITE,
    PTE_YOUNG,
    PteTable,
)
from foliosim.kernel.smallpages import (
    CLEAR_SMALL_EXCLUSIVE,
    MAX_SMALL_MAPCOUNT,
    PAGE_SMALL_ANON,
    SMALL_EXCLUSIVE,
    SMALL_WRITTEN,
    pfn_span,
)

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA
    from foliosim.kernel.physmem import Folio

# The mmu_gather of a zap: what to put, and how many references of each (an array is pages
# held as arrays, whose references went with their mapcounts: 0).
Gather = tuple[list["Folio | np.ndarray[Any, Any]"], list[int]]

# Fewer tables than this are done one by one (the block costs a few fixed operations).
MIN_BLOCK = 2


@dataclass(slots=True)
class Block:
    """A run of whole tables holding only pages held as arrays, with their pfns and bits as
    2-D arrays (one row a table): views of the tables' own storage (``shared``) when the
    tables were made together in this order, else copies (bits then None)."""

    tables: list[tuple[int, PteTable]]
    pfns: np.ndarray[Any, Any]
    bits: np.ndarray[Any, Any] | None
    shared: bool
    # pfn_span(pfns) when table_blocks() already knows it (a block of all the tables over
    # one range of pfns), else None: then the users work it out.
    span: tuple[int, int] | None = None


Group = tuple[list[tuple[int, PteTable]], Block | None]


def _rows_view(
    tables: list[PteTable],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """The tables' pfns and bits as 2-D views, when they are consecutive rows of one block
    made together (fault_small_tables, copy_small_tables): no copy needed then."""
    block = tables[0].block
    if block is None:
        return None
    first = tables[0].row
    for i, table in enumerate(tables):
        if table.block is not block or table.row != first + i:
            return None
    last = first + len(tables)
    return block[0][first:last], block[1][first:last]


def table_blocks(k: Kernel, full: list[tuple[int, PteTable]]) -> list[Group]:
    """Consecutive tables every slot of which maps a page, cut into groups in order: each
    run of at least MIN_BLOCK tables holding only pages held as arrays is a Block; the
    tables between blocks come with None and go one by one."""
    if len(full) < MIN_BLOCK:
        return [(full, None)]
    view = _rows_view([t for _, t in full])
    if view is not None:
        pfns, bits = view
    else:
        pfns, bits = np.stack([t.pfn for _, t in full]), None
    state = k.physmem.state
    lo, hi = int(pfns.min()), int(pfns.max()) + 1
    held: list[bool]
    whole: tuple[int, int] | None = None  # pfn_span() of a block of all the tables
    if hi - lo <= pfns.size and hi <= state.shape[0] and (state[lo:hi] & PAGE_SMALL_ANON).all():
        # Every entry's pfn lies in [lo, hi) and every page there is held as arrays (what a
        # block faulted at once leaves): all tables qualify, without gathering the states.
        held = [True] * len(full)
        if hi - lo == pfns.size:  # distinct pfns (one mapping per mm) filling the range
            whole = (lo, hi)
    else:
        mask = np.take(state, pfns, mode="clip") & PAGE_SMALL_ANON
        held = np.asarray(mask.all(axis=1)).tolist()
    groups: list[Group] = []
    start = 0
    for i in range(1, len(full) + 1):
        if i < len(full) and held[i] == held[start]:
            continue
        run = full[start:i]
        if held[start] and len(run) >= MIN_BLOCK:
            rows_bits = None if bits is None else bits[start:i]
            span = whole if len(run) == len(full) else None
            groups.append((run, Block(run, pfns[start:i], rows_bits, view is not None, span)))
        elif groups and groups[-1][1] is None:
            groups[-1][0].extend(run)
        else:
            groups.append((run, None))
        start = i
    return groups


def zap_small_tables(
    k: Kernel,
    vma: VMA,
    block: Block,
    batch: Gather,
    drop_markers: bool,
) -> None:
    """zap_pte_range() (mm/memory.c, 7.1.8) over whole tables holding only pages held as
    arrays, leaving out nothing the per-table path does for them: each page loses a
    mapcount (its reference with it), MM_ANONPAGES drops by the entries, the pages whose
    last mapping this was go into the mmu_gather ``batch`` in table and slot order,
    NR_ANON_MAPPED drops by them. munmap/exit free the tables; MADV_DONTNEED empties them."""
    pfns = block.pfns.ravel()
    if block.shared and not drop_markers:
        pfns = pfns.copy()  # the tables are cleared below; the batch keeps these
    mapcount = k.physmem.small.mapcount
    span = block.span or pfn_span(pfns)
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
        puts.append(gone)  # the free list takes it: nothing writes these arrays again
        refs.append(0)  # their references went with their mapcounts
    if k.touched_small is not None:
        k.touched_small.append(pfns)
    tables = vma.mm.pgtables.pte_tables
    for pmd_no, table in block.tables:
        if drop_markers:  # full tables have no markers: nothing is left, the table goes
            del tables[pmd_no]
        else:
            table.clear_range(0, table.nr_slots)


def copy_small_tables(k: Kernel, dst: VMA, src: VMA, block: Block, keep_exclusive: bool) -> bool:
    """copy_pte_range() -> copy_present_ptes() (mm/memory.c, 7.1.8) for whole tables of
    ``src`` holding only pages held as arrays (none pinned: they have no pins), into a
    child that has no table there yet: every page gains a mapcount (and reference) and
    loses AnonExclusive, the child's MM_ANONPAGES grows, a COW mapping's entries lose the
    write bit on both sides, the child's entries are old. False, with nothing done, when a
    page has no room for another mapcount (the per-table path makes it an object)."""
    pfns = block.pfns.copy() if block.shared else block.pfns  # the child's own entries
    flat = pfns.ravel()
    mem = k.physmem
    span = block.span or pfn_span(flat)
    pages: slice | np.ndarray[Any, Any] = flat if span is None else slice(*span)
    if int(mem.small.mapcount[pages].max()) >= MAX_SMALL_MAPCOUNT:
        return False
    if not k.variant.fork_pte_skips_dup:  # (mutant: no folio_try_dup_anon_rmap_pte, no get)
        mem.small.mapcount[pages] += 1
        if not keep_exclusive:
            mem.state[pages] &= CLEAR_SMALL_EXCLUSIVE
    parent_bits = block.bits
    if src.is_cow_mapping:
        if parent_bits is not None:
            parent_bits &= CLEAR_WRITE  # the parent tables' own rows, in one operation
        else:
            for _, table in block.tables:
                table.bits &= CLEAR_WRITE
    if parent_bits is None:
        parent_bits = np.stack([t.bits for _, t in block.tables])
    bits = parent_bits & CLEAR_YOUNG
    if k.touched_small is not None:
        k.touched_small.append(flat)
    PteTable.rows_of_block(mem, dst.mm.pgtables, [n for n, _ in block.tables], (pfns, bits))
    dst.mm.rss[MM_ANONPAGES] += int(flat.shape[0])
    return True


def fault_small_tables(k: Kernel, vma: VMA, first_pmd: int, count: int, written: bool) -> int:
    """``count`` tables' worth of do_anonymous_page() (mm/memory.c, 7.1.8) write faults,
    one per page as the kernel takes them, on PMD ranges that have no table yet, each taking
    the order-0 path (the caller checked that no THP order may be used): new pages held as
    arrays, exclusive, mapped young, dirty and (if the VMA is) writable; MM_ANONPAGES and
    NR_ANON_MAPPED grow. Returns the pages mapped: 0 when memory or anon_vma indexes run
    short (the caller then faults table by table and meets it)."""

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
    for _ in range(count):
        k.enter("do_anonymous_page")  # once per table, as the per-table path
    pmd_nos = list(range(first_pmd, first_pmd + count))
    PteTable.rows_of_block(mem, vma.mm.pgtables, pmd_nos, (pfns.reshape(count, nr), bits))
    if k.touched_small is not None:
        k.touched_small.append(pfns)
    k.vmstat.count_event("pgfault", total)
    vma.mm.rss[MM_ANONPAGES] += total
    k.vmstat.mod("nr_anon_pages", total)
    return total
