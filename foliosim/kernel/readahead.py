"""Page-cache readahead: which folios, of which orders, a fault's readahead caches.

Models mm/readahead.c of Linux 7.1.8 for a filesystem whose mappings take large folios up to
the PMD order (ext4 with 4K blocks: EXT4_MAX_PAGECACHE_ORDER = min(MAX_PAGECACHE_ORDER,
11 + blkbits - PAGE_SHIFT) = 9 on x86-64; xfs alike). What matters for accounting is the
folio sizes: synchronous mmap read-around caches order-0 folios, each asynchronous step
(a fault reaching a PG_readahead folio) raises the file's ra->order by two, capped by the
window (ilog2(size)) and the mapping's maximum, so a sequential fault stream over an ext4
file moves to order-2, order-4 and then order-5 folios (ra_pages = 32: read_ahead_kb=128).

Left out: the I/O itself (every folio is uptodate at once), bdi io_pages above ra_pages,
blk_cgroup congestion, writeback folios, the mmap_miss heuristic, memory-pressure order
reduction. Where the kernel allocates a folio and frees it again because a page of its
range is cached already (filemap_add_folio() -EEXIST), the model looks first and allocates
nothing: the outcome in the cache is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel.files import filemap_add_folio
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel


def mapping_max_folio_order(k: Kernel) -> int:
    """mapping_max_folio_order() of the model's page-cache files (include/linux/pagemap.h,
    7.1.8): MAX_PAGECACHE_ORDER = min(MAX_XAS_ORDER = 11, HPAGE_PMD_ORDER); without
    CONFIG_TRANSPARENT_HUGEPAGE mapping_set_folio_order_range() sets nothing, so 0."""
    if not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        return 0
    return min(11, k.geometry.pmd_order)


def get_next_ra_size(size: int, max_pages: int) -> int:
    """get_next_ra_size() (mm/readahead.c, 7.1.8): quadruple small windows, double medium
    ones, else the maximum."""
    if size < max_pages // 16:
        return 4 * size
    if size <= max_pages // 2:
        return 2 * size
    return max_pages


def page_cache_ra_order(
    k: Kernel,
    file: BackingFile,
    start: int,
    size: int,
    async_size: int,
    order: int,
    ra_start: int | None = None,
) -> None:
    """page_cache_ra_order() (mm/readahead.c, 7.1.8): cache [start, start+size) below EOF as
    folios of the window's order (at most the mapping's maximum and ilog2(size)), smaller
    where the index is not aligned to it or EOF is nearer; the folio holding ``start + size
    - async_size`` is marked PG_readahead. A cached page in a folio's range (-EEXIST) or a
    failed allocation ends the loop and do_page_cache_ra() reads the rest as order-0 folios.
    The window, and the order used, are kept in the file's ra state, whose start is
    ``ra_start`` when the caller left ra->start alone (``start`` is the readahead_control's
    index, where reading begins)."""
    file.ra_window = (start if ra_start is None else ra_start, size, async_size)
    eof = file.size_pages(k.page_shift)
    if not eof or size <= 0:
        return
    max_order = mapping_max_folio_order(k)
    if not max_order:  # !mapping_large_folio_support(): ra->order = 0, straight to fallback
        file.ra_order = 0
        do_page_cache_ra(k, file, start, size, async_size)
        return
    limit = min(eof - 1, start + size - 1)
    mark = start + size - async_size
    new_order = max(min(max_order, order, size.bit_length() - 1), 0)
    file.ra_order = new_order
    index = start
    failed = False
    while index <= limit:
        folio_order = new_order
        if index & ((1 << folio_order) - 1):
            folio_order = (index & -index).bit_length() - 1  # __ffs(index)
        while folio_order > 0 and index + (1 << folio_order) - 1 > limit:
            folio_order -= 1
        nr = 1 << folio_order
        if file.range_cached(index, nr):
            failed = True
            break
        folio = k.alloc_folio(folio_order)
        if folio is None:
            failed = True
            break
        folio.refcount -= 1  # the allocation reference becomes the page cache's
        if index == mark & ~(nr - 1):
            folio.readahead = True
        filemap_add_folio(k, file, folio, index)
        index += nr
    if failed and size > index - start:
        do_page_cache_ra(k, file, index, size - (index - start), async_size)


def do_page_cache_ra(
    k: Kernel, file: BackingFile, index: int, nr_to_read: int, lookahead: int
) -> None:
    """do_page_cache_ra() -> page_cache_ra_unbounded() (mm/readahead.c, 7.1.8): order-0
    folios for the uncached pages of [index, index+nr_to_read), clipped at the page holding
    the last byte; the page ``lookahead`` pages before the end is marked PG_readahead if this
    call caches it."""
    eof = file.size_pages(k.page_shift)
    if not eof or index > eof - 1:
        return
    if nr_to_read > eof - 1 - index:
        nr_to_read = eof - index
    mark = nr_to_read - lookahead if lookahead <= nr_to_read else -1
    for i in range(nr_to_read):
        if file.find_folio(index + i) is not None:
            continue
        folio = k.alloc_folio(0)
        if folio is None:
            return
        folio.refcount -= 1
        if i == mark:
            folio.readahead = True
        filemap_add_folio(k, file, folio, index + i)


def page_cache_next_miss(file: BackingFile, index: int, max_scan: int) -> int:
    """page_cache_next_miss() (mm/filemap.c, 7.1.8): the first uncached index in
    [index, index+max_scan), else index + max_scan."""
    for i in range(index, index + max_scan):
        if file.find_folio(i) is None:
            return i
    return index + max_scan


def page_cache_async_ra(k: Kernel, file: BackingFile, folio: Folio, index: int) -> None:
    """do_async_mmap_readahead() -> page_cache_async_ra() (mm/filemap.c, mm/readahead.c,
    7.1.8), for a fault at page ``index`` that found the PG_readahead ``folio``: clear the
    mark; if the fault is where the last window expected it (its async start, rounded down
    to the folio), the next window follows the last one, else the window starts at the next
    uncached page; the order rises by two, the window end is aligned to it (at most to
    ffs(ra_pages) - 1), and the whole window is async (its first folio is marked)."""
    k.enter("page_cache_async_ra")
    folio.readahead = False
    max_pages = k.policy.read_ahead_pages  # ractl_max_pages(ra_pages): the request is ra_pages
    if not max_pages:
        return
    start, size, async_size = file.ra_window
    expected = (start + size - async_size) & ~(folio.nr_pages - 1)
    if index == expected:
        start += size
        size = max(size, get_next_ra_size(size, max_pages))
    else:
        miss = page_cache_next_miss(file, index + 1, max_pages)
        if not miss or miss - index > max_pages:
            return
        start = miss
        size = get_next_ra_size(miss - index + max_pages, max_pages)
    order = file.ra_order + 2
    align = 1 << min(order, (max_pages & -max_pages).bit_length() - 1)
    end = start + size
    aligned_end = end & ~(align - 1)
    if aligned_end > start:
        size -= end - aligned_end
    page_cache_ra_order(k, file, start, size, size, order)
