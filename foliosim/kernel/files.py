"""Files and their page cache: regular page-cache files and shmem/tmpfs files.

Models the parts of mm/filemap.c and mm/shmem.c (Linux 7.1.8) that decide which folios a file
has cached and of which size: filemap_add_folio() (the cache holds one reference per page,
NR_FILE_PAGES/NR_SHMEM and NR_FILE_THPS/NR_SHMEM_THPS for PMD-sized folios) and
filemap_remove_folio(). DAX files and devices live in dax.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel


@dataclass(eq=False)
class BackingFile:
    """What a VMA maps: a file, a shmem object or a device. ``size`` is i_size in bytes."""

    name: str
    size: int
    kind: str  # "pagecache", "shmem", "fsdax", "devdax"
    huge: str = "never"  # shmem/tmpfs huge= (never|always|within_size|advise)
    cache: dict[int, Folio] = field(default_factory=dict)  # head index -> folio
    orders: set[int] = field(default_factory=set)
    # Whether the filesystem has ->page_mkwrite, so shared writable mappings are write-notify
    # (vma_wants_writenotify): a read fault maps read-only and the first write faults again.
    page_mkwrite: bool = True
    # file_ra_state of the (single) opener: start, size, async_size of the last window.
    ra_window: tuple[int, int, int] = (0, 0, 0)
    ra_order: int = 0  # file_ra_state.order: the folio order the last window used

    def size_pages(self, page_shift: int) -> int:
        return (self.size + (1 << page_shift) - 1) >> page_shift

    def find_folio(self, index: int) -> Folio | None:
        """filemap_get_entry() for a present folio: the folio caching page ``index``."""
        folio = self.cache.get(index)
        if folio is not None:  # a folio whose first page is ``index`` (any order)
            return folio
        for order in self.orders:  # at most one folio contains the page: any order first
            folio = self.cache.get(index & ~((1 << order) - 1))
            if folio is not None and folio.order == order:
                return folio
        return None

    def range_cached(self, index: int, nr: int) -> bool:
        """Whether any page of [index, index+nr) is cached (what makes filemap_add_folio()
        of a folio over that range fail with -EEXIST)."""
        return any(self.find_folio(i) is not None for i in range(index, index + nr))


def filemap_add_folio(k: Kernel, file: BackingFile, folio: Folio, index: int) -> None:
    """filemap_add_folio()/shmem_add_to_page_cache() (7.1.8): the cache takes nr_pages
    references; NR_FILE_PAGES (and NR_SHMEM, NR_*_THPS for PMD-sized folios) go up."""
    folio.mapping = file
    folio.index = index
    folio.refcount += folio.nr_pages
    folio.lru = True
    file.cache[index] = folio
    file.orders.add(folio.order)
    nr = folio.nr_pages
    k.vmstat.mod("nr_file_pages", nr)
    if file.kind == "shmem":
        folio.swapbacked = True
        k.vmstat.mod("nr_shmem", nr)
    if folio.order == k.config.geometry.pmd_order and folio.order > 0:
        k.vmstat.mod("nr_shmem_hugepages" if file.kind == "shmem" else "nr_file_hugepages", nr)


def filemap_remove_folio(k: Kernel, file: BackingFile, folio: Folio) -> None:
    """filemap_remove_folio() + folio_put_refs(nr): drop the cache's references (7.1.8)."""
    if file.cache.get(folio.index) is not folio:
        return
    nr = folio.nr_pages
    with k.ownership.context("truncate_inode_folio") as ctx:
        del file.cache[folio.index]
        ctx.get(folio, nr)  # the cache's references pass to the remover
        if k.variant.truncate_put_early:
            k.folio_put(folio, nr)  # mutant: dropped before the last use
            ctx.put(folio, nr)
        ctx.touch(folio, "__filemap_remove_folio: counters and folio->mapping")
        k.vmstat.mod("nr_file_pages", -nr)
        if file.kind == "shmem":
            k.vmstat.mod("nr_shmem", -nr)
        if folio.order == k.config.geometry.pmd_order and folio.order > 0:
            item = "nr_shmem_hugepages" if file.kind == "shmem" else "nr_file_hugepages"
            k.vmstat.mod(item, -nr)
        folio.mapping = None
        if not k.variant.truncate_put_early:
            k.folio_put(folio, nr)
            ctx.put(folio, nr)
