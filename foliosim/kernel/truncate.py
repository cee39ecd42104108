"""truncate and hole punch of page-cache and shmem files (mm/truncate.c, mm/shmem.c, 7.1.8).

truncate_setsize -> truncate_pagecache: unmap_mapping_range(even_cows=1) removes every
mapping of the truncated pages, private COWed copies included, then
truncate_inode_pages_range drops the cached folios. A hole punch unmaps with even_cows=0
(private copies survive). A large folio straddling the boundary is kept whole (as when its
split fails: the kernel zeroes the truncated part) — for page-cache files it is unmapped from
every process, shmem keeps it mapped. Left out: splitting the straddling folio, writeback.
fs-dax files are handled in dax.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel.files import filemap_remove_folio
from foliosim.kernel.zap import unmap_page_range

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel


def unmap_mapping_range(
    k: Kernel, file: BackingFile, first: int, last: int | None, even_cows: bool
) -> None:
    """unmap_mapping_pages() (mm/memory.c, 7.1.8): zap page indices [first, last) (last None =
    to the end) of the file in every VMA that maps it."""
    k.enter("unmap_mapping_range")
    for mm in k.live_mms():
        for vma in list(mm.vmas):
            if vma.file is not file:
                continue
            vma_last = vma.pgoff + ((vma.end - vma.start) >> k.page_shift)
            lo = max(first, vma.pgoff)
            hi = vma_last if last is None else min(last, vma_last)
            if lo >= hi:
                continue
            start = vma.start + ((lo - vma.pgoff) << k.page_shift)
            end = vma.start + ((hi - vma.pgoff) << k.page_shift)
            unmap_page_range(k, vma, start, end, keep_anon=not even_cows)


def truncate_inode_pages_range(k: Kernel, file: BackingFile, first: int, last: int | None) -> None:
    """truncate_inode_pages_range() / shmem_undo_range() (mm/truncate.c, mm/shmem.c, 7.1.8):
    a large folio straddling an end of the range goes through truncate_inode_partial_folio():
    split non-uniformly at the boundary (try_folio_split_to_order); a clean page-cache head
    piece is dropped too, a dirty or shmem one kept. If the split fails (a pin), the folio
    stays whole, unmapped from every process unless it is shmem. Then every folio wholly
    inside the range is removed."""
    from foliosim.kernel.huge_memory_split import split_file_folio

    k.enter("truncate_inode_pages_range")
    for boundary in (first, last):
        if boundary is None:
            continue
        folio = file.find_folio(boundary)
        if folio is None or folio.index == boundary:
            continue
        end = folio.index + folio.nr_pages
        pieces = split_file_folio(k, folio, boundary - folio.index)
        if pieces is None:
            if file.kind != "shmem":
                unmap_mapping_range(k, file, folio.index, end, even_cows=False)
        elif boundary == first and file.kind != "shmem" and not pieces[0].dirty:
            head = pieces[0]
            unmap_mapping_range(k, file, head.index, head.index + head.nr_pages, even_cows=False)
            filemap_remove_folio(k, file, head)
    for index, folio in sorted(file.cache.items()):
        end = index + folio.nr_pages
        if index >= first and (last is None or end <= last):
            filemap_remove_folio(k, file, folio)


def do_truncate(k: Kernel, file: BackingFile, size: int) -> None:
    """truncate(2)/ftruncate(2) on a page-cache or shmem file."""
    old = file.size
    file.size = size
    if size >= old:
        return
    first = (size + k.page_size - 1) >> k.page_shift
    unmap_mapping_range(k, file, first, None, even_cows=True)
    truncate_inode_pages_range(k, file, first, None)


def do_punch_hole(k: Kernel, file: BackingFile, off: int, length: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): only whole pages are dropped."""
    first = (off + k.page_size - 1) >> k.page_shift
    last = (off + length) >> k.page_shift
    if first >= last:
        return
    unmap_mapping_range(k, file, first, last, even_cows=False)
    truncate_inode_pages_range(k, file, first, last)


def release_unused_anon_shmem(k: Kernel) -> None:
    """The last fput() of a MAP_SHARED|MAP_ANONYMOUS object (shmem_zero_setup's unlinked tmpfs
    file) evicts its inode: shmem_evict_inode() (mm/shmem.c, 7.1.8) truncates the whole page
    cache. Run after a VMA goes away (munmap, exit); left out: other holders of the file."""
    live = {id(vma.file) for mm in k.live_mms() for vma in mm.vmas if vma.file is not None}
    for name, file in list(k.files.items()):
        if getattr(file, "anon_shared", False) and id(file) not in live:
            truncate_inode_pages_range(k, file, 0, None)
            del k.files[name]
