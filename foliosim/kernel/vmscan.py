"""Reclaim of page-cache and shmem folios for MADV_PAGEOUT (mm/vmscan.c, mm/rmap.c, 7.1.8).

try_to_unmap() takes a folio out of every page table that maps it; shrink_file_folio() is
the part of shrink_folio_list() a file or shmem folio goes through when there is no swap:
unmapped first, then a dirty page-cache folio is kept (only kswapd writes back from
reclaim), a dirty shmem folio is kept (shmem_writeout() has no swap to write it to and
redirties it), and a clean folio of either leaves the cache and is freed (__remove_mapping:
a shmem folio nobody wrote holds only zeroes, what the hole reads as anyway). Left out:
writeback, buffers, mlock, the LRU lists and per-CPU LRU batches (a folio still in one
cannot be isolated by the kernel, so it stays mapped there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.mm import mm_counter_file
from foliosim.kernel.pgtable import PTE_DIRTY

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.physmem import Folio


def try_to_unmap(k: Kernel, folio: Folio) -> None:
    """try_to_unmap() (mm/rmap.c, 7.1.8) for a file or shmem folio: every PTE and PMD that
    maps it is cleared, its dirty bit moved into the folio, the rmap, RSS and the entry's
    reference dropped."""
    for ref in k.rmap_walk(folio):
        vma = ref.mm.find_vma(ref.addr)
        assert vma is not None
        if ref.level == "pte":
            assert ref.table is not None
            if ref.table.bits[ref.slot] & PTE_DIRTY:
                folio.dirty = True
            rmap.folio_remove_rmap_ptes(k, folio, ref.page, 1, vma)
            ref.table.clear(ref.slot)
            ref.mm.rss[mm_counter_file(folio)] -= 1
            k.folio_put(folio)
        elif ref.level == "pmd" and ref.leaf is not None:
            if ref.leaf.dirty:
                folio.dirty = True
            rmap.folio_remove_rmap_pmd(k, folio, vma)
            del ref.mm.pgtables.pmd_leaves[ref.addr >> k.geometry.pmd_shift]
            ref.mm.rss[mm_counter_file(folio)] -= k.config.pmd_nr
            k.folio_put(folio)


def shrink_file_folio(k: Kernel, folio: Folio) -> None:
    """shrink_folio_list() (mm/vmscan.c, 7.1.8) for one isolated file or shmem folio, no swap
    (see the module)."""
    from foliosim.kernel.files import BackingFile, filemap_remove_folio

    k.enter("shrink_folio_list")
    try_to_unmap(k, folio)
    folio.referenced = False
    file = folio.mapping
    if folio.dirty or not isinstance(file, BackingFile):
        return  # dirty page cache: activated, not written from here; dirty shmem: no swap
    filemap_remove_folio(k, file, folio)
