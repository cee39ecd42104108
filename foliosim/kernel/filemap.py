"""Page-cache and shmem faults: ->fault, fault-around (->map_pages) and readahead.

Models mm/filemap.c filemap_fault(), do_sync_mmap_readahead(), filemap_map_pages() and
mm/shmem.c shmem_fault()/shmem_get_folio_gfp() of Linux 7.1.8 for what changes counters:

- page cache (a filesystem with large-folio support, like ext4/xfs in 7.1): a miss reads
  around the faulting index (read_ahead_kb=128: ra_pages/2 before it, ra_pages in all) as
  order-0 folios; with VM_HUGEPAGE, readahead caches two PMD-sized folios (ra->order =
  HPAGE_PMD_ORDER), smaller ones towards EOF; a fault reaching a PG_readahead folio reads
  the next window asynchronously with the order raised by two (kernel/readahead.py).
- shmem: a fault on a hole allocates a zeroed folio; PMD-sized when the mount's huge=
  (always, within_size, advise + VM_HUGEPAGE) allows it and the aligned range fits the VMA.
- fault-around maps the pages already cached in the fault_around_bytes window (clipped to
  the VMA and the page table), or the whole PMD if the folio there is PMD-sized.

Left out: the mmap_miss heuristic, mTHP sizes for shmem/page cache
(hugepages-*/shmem_enabled), folio locking and writeback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.files import filemap_add_folio
from foliosim.kernel.mm import VM, mm_counter_file, vma_page_prot_writable
from foliosim.kernel.pgtable import PTE_WRITE, PTE_YOUNG
from foliosim.kernel.physmem import Folio
from foliosim.kernel.readahead import (
    mapping_max_folio_order,
    page_cache_async_ra,
    page_cache_ra_order,
)

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


def filemap_fault(
    k: Kernel, vma: VMA, addr: int, write: bool, allow_retry: bool = False
) -> tuple[Folio, int] | str:
    """->fault for page cache and shmem: the folio caching the page, with one extra
    reference for the caller, and the page's index inside it; or "SIGBUS" beyond EOF.

    filemap_fault() (mm/filemap.c, 7.1.8): a miss starts synchronous readahead and a hit on a
    PG_readahead folio asynchronous readahead; both drop the mmap lock for the I/O
    (maybe_unlock_mmap_for_io) on a first attempt, so the fault returns VM_FAULT_RETRY
    ("retry") and is taken again — when do_read_fault's fault-around now finds the pages.
    """
    file = vma.file
    assert file is not None
    index = vma.linear_page_index(addr, k.page_shift)
    if index >= file.size_pages(k.page_shift):
        return "SIGBUS"
    folio = file.find_folio(index)
    if folio is None:
        if file.kind == "shmem":
            folio = shmem_alloc_and_add_folio(k, file, vma, addr, index)
        else:
            page_cache_sync_readahead(k, file, vma, index)
            if allow_retry:
                return "retry"
            folio = file.find_folio(index)
        if folio is None:
            return "SIGBUS"  # allocation failed: VM_FAULT_OOM
    elif folio.readahead and file.kind != "shmem":
        page_cache_async_ra(k, file, folio, index)
        if allow_retry:
            return "retry"
    k.folio_get(folio)
    return folio, index - folio.index


def page_cache_sync_readahead(k: Kernel, file: BackingFile, vma: VMA, index: int) -> None:
    """do_sync_mmap_readahead() (mm/filemap.c, 7.1.8) for an uncached index. With
    VM_HUGEPAGE (and THP): two PMD-sized folios from the aligned index, the second marked
    PG_readahead (ra->size = 2 * HPAGE_PMD_NR, async_size = HPAGE_PMD_NR, ra->order =
    HPAGE_PMD_ORDER; ra->start is not updated), smaller folios towards EOF. Otherwise mmap
    read-around: ra_pages centred on the fault as order-0 folios, the last quarter async
    (its first page marked).
    Both go through page_cache_ra_order(); VM_RAND_READ, VM_SEQ_READ and VM_EXEC (no
    MADV_RANDOM/SEQUENTIAL in the model) and the mmap_miss heuristic are left out."""
    k.enter("do_sync_mmap_readahead")
    pmd_order = k.geometry.pmd_order
    if (
        vma.flags & VM.HUGEPAGE
        and k.config.enabled("TRANSPARENT_HUGEPAGE")
        and pmd_order <= mapping_max_folio_order(k)
    ):
        nr = 1 << pmd_order
        # ra->start is left as it was: a later async step compares the fault with it.
        page_cache_ra_order(k, file, index & ~(nr - 1), 2 * nr, nr, pmd_order, file.ra_window[0])
        return
    ra = k.policy.read_ahead_pages
    if not ra:
        return
    page_cache_ra_order(k, file, max(0, index - ra // 2), ra, ra // 4, 0)


def shmem_huge_allowed(k: Kernel, file: BackingFile, vma: VMA | None, index: int) -> bool:
    """shmem_allowable_huge_orders() for the PMD order (mm/shmem.c, 7.1.8), global
    shmem_enabled=never (the default) so the mount's huge= option decides."""
    if not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        return False
    if vma is not None and vma.flags & VM.NOHUGEPAGE:
        return False
    nr = 1 << k.geometry.pmd_order
    if file.huge == "always":
        return True
    if file.huge == "within_size":
        aligned_end = (index & ~(nr - 1)) + nr
        return aligned_end <= file.size_pages(k.page_shift)
    if file.huge == "advise":
        return vma is not None and bool(vma.flags & VM.HUGEPAGE)
    return False


def shmem_alloc_and_add_folio(
    k: Kernel, file: BackingFile, vma: VMA | None, addr: int, index: int
) -> Folio | None:
    """shmem_alloc_and_add_folio() (mm/shmem.c, 7.1.8): a PMD-sized folio when allowed and
    its aligned range fits the VMA and holds no cached page (THP_FILE_ALLOC, or
    THP_FILE_FALLBACK when allocation fails), else one page; zeroed and added to the cache."""
    pmd_order = k.geometry.pmd_order
    nr = 1 << pmd_order
    if shmem_huge_allowed(k, file, vma, index):
        start = index & ~(nr - 1)
        fits = vma is None or _huge_range_fits(k, vma, addr, pmd_order)
        if fits and not file.range_cached(start, nr):
            folio = k.alloc_folio(pmd_order)
            if folio is not None:
                k.vmstat.count_event("thp_file_alloc")
                folio.refcount -= 1
                filemap_add_folio(k, file, folio, start)
                return folio
            k.vmstat.count_event("thp_file_fallback")
    folio = k.alloc_folio(0)
    if folio is None:
        return None
    folio.refcount -= 1
    filemap_add_folio(k, file, folio, index)
    return folio


def _huge_range_fits(k: Kernel, vma: VMA, addr: int, order: int) -> bool:
    from foliosim.kernel.huge_memory import thp_vma_suitable_order

    return thp_vma_suitable_order(k, vma, addr, order)


def filemap_map_pages(k: Kernel, vma: VMA, addr: int) -> None:
    """do_fault_around() + filemap_map_pages() (mm/memory.c, mm/filemap.c, 7.1.8).

    The window is fault_around_bytes aligned, clipped to the VMA and the PTE table. A
    PMD-sized folio at an empty PMD is mapped by do_set_pmd() when the file goes on past it
    (_ends_before_eof; if it does not, nothing is mapped at an empty PMD); otherwise every
    cached page in the window with an empty PTE is mapped read-only (one reference per PTE,
    file rmap, MM_FILEPAGES/MM_SHMEMPAGES), and a large folio that fits the VMA and one PMD
    range is mapped whole (_maps_whole_folio).
    """
    from foliosim.kernel.huge_memory import do_set_pmd

    k.enter("filemap_map_pages")
    file = vma.file
    assert file is not None
    geo = k.geometry
    nr_window = max(k.policy.fault_around_bytes >> k.page_shift, 1)
    ptrs = geo.ptrs_per_pte
    pte_off = (addr >> k.page_shift) & (ptrs - 1)
    vma_off = (addr - vma.start) >> k.page_shift
    vma_pages = (vma.end - vma.start) >> k.page_shift
    from_pte = max(pte_off & ~(nr_window - 1), pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + nr_window, ptrs, pte_off + vma_pages - vma_off)
    base = addr - (pte_off << k.page_shift)
    pmd_no = addr >> geo.pmd_shift
    mm = vma.mm
    eof = file.size_pages(k.page_shift)
    table = mm.pgtables.pte_table(pmd_no)
    if table is None or table.all_none():
        # The first uptodate folio of the window decides (next_uptodate_folio); the table is
        # installed by filemap_map_pmd(), which 7.1.8 calls only when the file goes on past
        # that folio. Otherwise pte_offset_map_lock() finds no table and nothing is mapped
        # here: the fault goes on to ->fault and finish_fault(), whose EOF test lets a PMD
        # folio ending at EOF be mapped with a PMD after all.
        folio = _first_uptodate_folio(k, vma, file, base, from_pte, to_pte, eof)
        if folio is None or not _ends_before_eof(k, file, folio):
            return
        if folio.order == geo.pmd_order:
            k.folio_get(folio)
            if do_set_pmd(k, vma, addr, folio, write=False):
                return
            k.folio_put(folio)
    table = mm.pgtables.pte_table(pmd_no, create=True)
    assert table is not None
    writable = vma_page_prot_writable(vma)
    # set_pte_range(): prefaulted entries are young unless arch_wants_old_prefaulted_pte()
    # (false on x86-64, mm/memory.c 7.1.8).
    bits = (PTE_WRITE if writable else 0) | PTE_YOUNG
    slot = from_pte
    while slot < to_pte:
        if table.pfn[slot] >= 0 or table.bits[slot]:
            slot += 1
            continue
        page_addr = base + (slot << k.page_shift)
        index = vma.linear_page_index(page_addr, k.page_shift)
        if index >= eof:
            break
        folio = file.find_folio(index)
        if folio is None or folio.readahead:
            slot += 1
            continue  # next_uptodate_folio() skips PG_readahead folios
        page = index - folio.index
        first, last = slot, slot + 1
        if folio.large and _maps_whole_folio(
            k, vma, file, folio, page_addr - (page << k.page_shift)
        ):
            first = slot - page  # filemap_map_folio_range(): the whole folio, not the window
            last = first + folio.nr_pages
        for s in range(first, last):
            if table.pfn[s] < 0 and not table.bits[s]:
                k.folio_get(folio)
                rmap.folio_add_file_rmap_ptes(k, folio, page + s - slot, 1, vma)
                mm.rss[mm_counter_file(folio)] += 1
                table.set(s, folio, page + s - slot, bits)
        slot = max(last, slot + 1)


def _first_uptodate_folio(
    k: Kernel, vma: VMA, file: BackingFile, base: int, from_pte: int, to_pte: int, eof: int
) -> Folio | None:
    """next_uptodate_folio() (mm/filemap.c, 7.1.8) from the window's start: the first cached
    folio below EOF that is not marked PG_readahead."""
    for slot in range(from_pte, to_pte):
        index = vma.linear_page_index(base + (slot << k.page_shift), k.page_shift)
        if index >= eof:
            return None
        folio = file.find_folio(index)
        if folio is not None and not folio.readahead:
            return folio
    return None


def _ends_before_eof(k: Kernel, file: BackingFile, folio: Folio) -> bool:
    """The EOF test of filemap_map_pages() and filemap_map_folio_range() (mm/filemap.c,
    7.1.8) before they map a large folio whole (a PMD, or all of its PTEs):
    `file_end >= folio_next_index(folio)`, with file_end the index of the file's *last* page,
    so the file must go on past the folio (shmem is exempt). finish_fault() tests against
    the page count instead, and a fault whose fault-around could not map the page goes on
    there. The variants of kernels before that test (seed, legacy) take any folio within
    EOF."""
    if file.kind == "shmem":
        return True
    end = folio.index + folio.nr_pages
    pages = file.size_pages(k.page_shift)
    return end <= pages if k.variant.fault_around_maps_to_eof else end <= pages - 1


def _maps_whole_folio(k: Kernel, vma: VMA, file: BackingFile, folio: Folio, addr0: int) -> bool:
    """filemap_map_folio_range() (mm/filemap.c, 7.1.8) maps every empty PTE of a large folio,
    not just the fault-around window, when the file goes on past the folio (or is shmem:
    _ends_before_eof), and the folio lies within the VMA and one PMD range (``addr0``: where
    its first page would be mapped)."""
    end0 = addr0 + (folio.nr_pages << k.page_shift)
    in_eof = _ends_before_eof(k, file, folio)
    same_pmd = addr0 >> k.geometry.pmd_shift == (end0 - 1) >> k.geometry.pmd_shift
    return in_eof and addr0 >= vma.start and end0 <= vma.end and same_pmd


def fill_file(k: Kernel, file: BackingFile) -> None:
    """Write the whole file with write(2) (the scenario's `filled`): every page cached and
    dirty. shmem allocates through shmem_alloc_and_add_folio (PMD-sized where huge= allows,
    no VMA); the page-cache model caches order-0 folios, or PMD-sized ones with huge=always
    (a large-folio filesystem after sequential writes)."""
    nr = file.size_pages(k.page_shift)
    pmd_nr = 1 << k.geometry.pmd_order
    index = 0
    cached_before = bool(file.cache)  # folios added below lie behind ``index``
    if not cached_before and file.kind == "pagecache" and file.huge != "always":
        _fill_small(k, file, nr)
        return
    while index < nr:
        if cached_before and file.find_folio(index) is not None:
            index += 1
            continue
        if file.kind == "shmem":
            folio = shmem_alloc_and_add_folio(k, file, None, 0, index)
        else:
            order = (
                k.geometry.pmd_order
                if (file.huge == "always" and index % pmd_nr == 0 and index + pmd_nr <= nr)
                else 0
            )
            folio = k.alloc_folio(order)
            if folio is not None:
                folio.refcount -= 1
                filemap_add_folio(k, file, folio, index)
        if folio is None:
            return
        folio.dirty = True
        folio.mark_written(0, folio.nr_pages)
        index = folio.index + folio.nr_pages


def _fill_small(k: Kernel, file: BackingFile, nr: int) -> None:
    """fill_file() of an empty page-cache file that caches order-0 folios, allocating in one
    batch (alloc_pages_bulk hands out the pfns nr alloc_folio(0) calls would); stops where
    memory runs out, as the page-by-page loop does."""
    folios = k.physmem.alloc_pages_bulk(nr)
    k.touched.update(folios)
    for index, folio in enumerate(folios):
        folio.refcount -= 1  # the cache's reference (filemap_add_folio) replaces it
        filemap_add_folio(k, file, folio, index)
        folio.dirty = True
        folio.mark_written()
