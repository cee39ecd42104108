"""fs-dax: files on a DAX filesystem over persistent memory (fs/dax.c, Linux 7.1.8).

A file's blocks are device PFNs; the DAX "page cache" is the mapping's xarray of entries (an
order-0 or PMD entry per range, or a zero entry for a read hole). dax_iomap_fault():

- PMD (CONFIG_FS_DAX_PMD): the 2M range must lie in the VMA with matching file alignment and
  inside i_size; a read of a whole hole maps the huge zero PMD (special, no deposited table); a
  write of a hole allocates a 2M-aligned extent; an extent that is not one aligned 2M run, or
  PTE entries already in the range, fall back to PTEs. No PUD path exists.
- PTE: a read hole maps the shared zero page; otherwise the page (inside a PMD folio when the
  range has a PMD entry) is inserted with vmf_insert_page_mkwrite.

dax_associate_entry()/dax_folio_init() make the folio of the entry's order the first time a
range is mapped (WARN if a page still holds a reference); dax_disassociate_entry() /
dax_folio_reset_order() turn it back into order-0 pages when the entry is deleted. Each
mapping adds one reference; idle fs-dax folios sit at refcount 0 (legacy: 1, no references).
Truncate and punch break the layout: unmap every mapping of the range, then wait until no page
holds an extra (GUP) reference; the model records the wait (global errno EBUSY) and finishes the
operation when the last pin goes. Reflink sharing (folio->share) is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foliosim.kernel.dax import DevPagemap, vmf_insert_folio_pmd, vmf_insert_page_mkwrite
from foliosim.kernel.files import BackingFile
from foliosim.kernel.mmap import SyscallError
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA

ZERO = -1  # a zero (hole) entry


@dataclass(eq=False)
class FsdaxFs:
    """An fs-dax filesystem (ext4/xfs -o dax) on a pmem namespace in fsdax mode."""

    name: str
    size: int
    pgmap: DevPagemap
    page_shift: int
    pmd_order: int
    free_blocks: list[int] = field(default_factory=list)  # free order-0 pfns
    next_pfn: int = 0
    files: dict[str, FsdaxFile] = field(default_factory=dict)

    def free_pages(self) -> int:
        return self.pgmap.nr_pages - self.pgmap.busy_pages()

    def alloc(self, nr: int, aligned: bool) -> int | None:
        """Allocate nr contiguous blocks (2M-aligned extents for PMD-sized requests)."""
        if nr == 1 and self.free_blocks:
            return self.free_blocks.pop()
        start = self.next_pfn
        if aligned:
            start = (start + nr - 1) & ~(nr - 1)
        if start + nr > self.pgmap.nr_pages:
            return None
        self.free_blocks.extend(self.pgmap.start_pfn + p for p in range(self.next_pfn, start))
        self.next_pfn = start + nr
        return self.pgmap.start_pfn + start

    def create_file(self, k: Kernel, name: str, size: int, filled: bool) -> FsdaxFile:
        file = FsdaxFile(name=name, size=size, kind="fsdax", fs=self)
        self.files[name] = file
        if filled:
            nr = file.size_pages(self.page_shift)
            chunk = 1 << self.pmd_order
            index = 0
            while index < nr:
                if index % chunk == 0 and index + chunk <= nr:
                    pfn = self.alloc(chunk, aligned=True)
                    if pfn is None:
                        raise SyscallError("ENOSPC", "filesystem full")
                    for i in range(chunk):
                        file.blocks[index + i] = pfn + i
                    index += chunk
                else:
                    pfn = self.alloc(1, aligned=False)
                    if pfn is None:
                        raise SyscallError("ENOSPC", "filesystem full")
                    file.blocks[index] = pfn
                    index += 1
        return file


@dataclass(eq=False)
class FsdaxFile(BackingFile):
    fs: FsdaxFs | None = None
    blocks: dict[int, int] = field(default_factory=dict)  # page index -> pfn
    # head index -> (order, pfn or ZERO)
    entries: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Layout breaks waiting for a page: (first, last, new size, the folio waited on).
    pending: list[tuple[int, int | None, int | None, Folio]] = field(default_factory=list)

    def entry_at(self, index: int) -> tuple[int, int, int] | None:
        """The xarray entry covering index: (head index, order, pfn or ZERO)."""
        for order in (self.fs.pmd_order if self.fs else 9, 0):
            head = index & ~((1 << order) - 1)
            entry = self.entries.get(head)
            if entry is not None and entry[0] == order:
                return head, entry[0], entry[1]
        return None

    def huge_fault(self, k: Kernel, vma: VMA, addr: int, write: bool, order: int) -> str | None:
        """dax_iomap_fault() (fs/dax.c, 7.1.8) through ext4_dax_huge_fault()."""
        if k.trace_log is not None:  # (no string built when not tracing)
            k.enter(f"dax_iomap_fault(order={order})")
        geo = k.geometry
        # No check of pending layout breaks here: the breaker sleeps with the invalidate
        # lock dropped (ext4_wait_dax_page), so a fault during the wait maps the blocks as
        # usual, and the breaker unmaps them again on its next turn.
        if order == geo.pud_order:
            return "fallback"
        if order == geo.pmd_order:
            return self._pmd_fault(k, vma, addr, write)
        return self._pte_fault(k, vma, addr, write)

    def _folio(self, k: Kernel, head_pfn: int, order: int, index: int) -> Folio:
        """dax_associate_entry() -> dax_folio_init(): the entry's folio with mapping/index."""
        assert self.fs is not None
        pgmap = self.fs.pgmap
        if not k.variant.dax_refcounted:
            order = 0  # before the series fs-dax pages were never compound
        folio = pgmap.folios.get(head_pfn)
        if folio is None or folio.order != order:
            # The pages' old folios go: those inside the range, and a larger one around it
            # (page-table entries hold pfns, so no stale folio may still cover them).
            olds = [pgmap.folios.pop(pfn, None) for pfn in range(head_pfn, head_pfn + (1 << order))]
            around = pgmap.folio_containing(head_pfn)
            if around is not None:
                olds.append(pgmap.folios.pop(around.pfn, None))
            for old in olds:
                if old is not None and old.refcount != pgmap.idle_refcount:
                    k.reports.warn("dax_folio_init", "folio still referenced", once=True)
            folio = pgmap._new_folio(head_pfn, order)
        if folio.mapping is None:
            folio.mapping = self
            folio.index = index
        return folio

    def _pmd_fault(self, k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
        from foliosim.kernel.huge_memory import mm_get_huge_zero_folio, thp_vma_suitable_order
        from foliosim.kernel.truncate import unmap_mapping_range

        geo = k.geometry
        if not k.config.enabled("FS_DAX_PMD"):
            return "fallback"
        if not thp_vma_suitable_order(k, vma, addr, geo.pmd_order):
            return "fallback"
        nr = 1 << geo.pmd_order
        head = vma.linear_page_index(addr, k.page_shift) & ~(nr - 1)
        max_pgoff = self.size_pages(k.page_shift)
        if head >= max_pgoff:
            return "SIGBUS"
        if head + nr > max_pgoff:
            return "fallback"
        if any(self.entries.get(i, (nr, 0))[0] == 0 for i in range(head, head + nr)):
            return "fallback"  # PTE entries in the range
        haddr = addr & ~(geo.pmd_size - 1)
        blocks = [self.blocks.get(i) for i in range(head, head + nr)]
        if all(b is None for b in blocks):
            if not write:
                zero = mm_get_huge_zero_folio(k, vma)
                if zero is None:
                    return "fallback"
                self.entries[head] = (geo.pmd_order, ZERO)
                return vmf_insert_folio_pmd(k, vma, haddr, zero, False)
            assert self.fs is not None
            pfn = self.fs.alloc(nr, aligned=True)
            if pfn is None:
                return "fallback"
            for i in range(nr):
                self.blocks[head + i] = pfn + i
            blocks = [pfn + i for i in range(nr)]
        first = blocks[0]
        if first is None or first % nr or blocks != list(range(first, first + nr)):
            return "fallback"
        entry = self.entries.get(head)
        if entry is not None and entry[1] == ZERO:
            # dax_insert_entry(): a zero entry becomes a real one; unmap the zero PMDs.
            unmap_mapping_range(k, self, head, head + nr, even_cows=False)
        self.entries[head] = (geo.pmd_order, first)
        folio = self._folio(k, first, geo.pmd_order, head)
        return vmf_insert_folio_pmd(k, vma, haddr, folio, write)

    def _pte_fault(self, k: Kernel, vma: VMA, addr: int, write: bool) -> str | None:
        from foliosim.kernel.truncate import unmap_mapping_range

        index = vma.linear_page_index(addr, k.page_shift)
        if index >= self.size_pages(k.page_shift):
            return "SIGBUS"
        entry = self.entry_at(index)
        if entry is not None and entry[1] > 0 and entry[2] != ZERO:
            head, order, pfn = entry
            folio = self._folio(k, pfn, order, head)
            return vmf_insert_page_mkwrite(k, vma, addr, folio, index - head, write)
        block = self.blocks.get(index)
        if block is None:
            if not write:
                self.entries.setdefault(index, (0, ZERO))
                return vmf_insert_page_mkwrite(k, vma, addr, k.physmem.zero_folio, 0, False)
            assert self.fs is not None
            block = self.fs.alloc(1, aligned=False)
            if block is None:
                return "SIGBUS"
            self.blocks[index] = block
        pfn = block
        if entry is not None and entry[2] == ZERO:
            # Downgrade/replace the zero entry and unmap its zero-page mappings first.
            lo = entry[0]
            unmap_mapping_range(k, self, lo, lo + (1 << entry[1]), even_cows=False)
            del self.entries[lo]
        self.entries[index] = (0, pfn)
        folio = self._folio(k, pfn, 0, index)
        return vmf_insert_page_mkwrite(k, vma, addr, folio, 0, write)

    # ---- layout breaks -------------------------------------------------------------------
    def busy_folios(self, k: Kernel, first: int, last: int | None) -> list[Folio]:
        """dax_layout_busy_page_range(): folios of entries in range with extra references."""
        assert self.fs is not None
        idle = self.fs.pgmap.idle_refcount
        busy = []
        for head, (order, pfn) in sorted(self.entries.items()):  # the xarray's index order
            if pfn == ZERO or head + (1 << order) <= first or (last is not None and head >= last):
                continue
            folio = self.fs.pgmap.folios.get(pfn)
            if folio is not None and folio.refcount - folio.folio_mapcount() > idle:
                busy.append(folio)
        return busy

    def delete_range(self, k: Kernel, first: int, last: int | None) -> None:
        """After a layout break: dax_delete_mapping_range(mapping, 0, LLONG_MAX) from
        dax_break_layout() (fs/dax.c, 7.1.8) deletes *every* entry of the file, each folio
        disassociated and reset to order 0 (dax_folio_reset_order); then the punched or
        truncated blocks [first, last) return to the filesystem (ext4 removes the extents).
        An entry covering blocks outside the range goes too: its next fault maps it anew."""
        assert self.fs is not None
        pgmap = self.fs.pgmap
        for _head, (_order, pfn) in list(self.entries.items()):
            if pfn == ZERO:
                continue
            folio = pgmap.folios.get(pfn)
            if folio is not None:
                if folio.refcount != pgmap.idle_refcount:
                    k.reports.warn("dax_folio_reset_order", "page still referenced", once=True)
                pgmap.folios.pop(pfn, None)
                folio.mapping = None
        self.entries.clear()
        for index in [i for i in self.blocks if i >= first and (last is None or i < last)]:
            self.fs.free_blocks.append(self.blocks.pop(index))

    def wake(self, k: Kernel, idled: list[Folio]) -> None:
        """Pages went idle: a layout break waiting on one of them takes its next turn of the
        dax_break_layout() loop (fs/dax.c, 7.1.8). It waits on one page (wait_page_idle, woken
        by wake_up_var of that page, the condition re-checked: refcount back to the idle
        value); then dax_layout_busy_page_range() unmaps the whole file again (faults during
        the wait mapped pages anew) and looks for a busy page, in index order: the next one
        to wait on. With none, every entry is deleted and the operation completes (a truncate
        drops private COW copies of the truncated part too: truncate_pagecache)."""
        from foliosim.kernel.truncate import unmap_mapping_range

        assert self.fs is not None
        idle = self.fs.pgmap.idle_refcount
        for op in list(self.pending):
            first, last, new_size, waited = op
            if not any(folio is waited for folio in idled) or waited.refcount != idle:
                continue  # still asleep
            self.pending.remove(op)
            unmap_mapping_range(k, self, 0, None, even_cows=False)
            busy = self.busy_folios(k, 0, None)
            if busy:
                self.pending.append((first, last, new_size, busy[0]))
                continue
            if new_size is not None:
                unmap_mapping_range(k, self, first, last, even_cows=True)
            self.delete_range(k, first, last)
            if new_size is not None:
                self.size = new_size
        if not self.pending and self in k.dax_waiters:
            k.dax_waiters.remove(self)


def _break_layout(
    k: Kernel, file: FsdaxFile, first: int, last: int | None, new_size: int | None, even_cows: bool
) -> None:
    """ext4_break_layouts() -> dax_break_layout_inode() (fs/ext4/inode.c, include/linux/dax.h,
    7.1.8), then the truncate or punch of [first, last).

    ext4 breaks the layout of the *whole file* (0 to LLONG_MAX) before any truncate, punch,
    collapse or zero range: every mapping of the file is unmapped (unmap_mapping_pages with
    even_cows 0) and the operation waits until no page of the file holds an extra reference.
    Only then are the range's entries deleted (truncate also drops private COW copies of the
    truncated part, even_cows 1)."""
    from foliosim.kernel.truncate import unmap_mapping_range

    k.enter("dax_break_layout")
    unmap_mapping_range(k, file, 0, None, even_cows=False)
    if even_cows:
        unmap_mapping_range(k, file, first, last, even_cows=True)
    busy = file.busy_folios(k, 0, None)
    if busy and not k.variant.truncate_ignores_pins:
        file.pending.append((first, last, new_size, busy[0]))
        if file not in k.dax_waiters:
            k.dax_waiters.append(file)
        raise SyscallError("EBUSY", "waiting for pinned DAX pages (dax_break_layout)")
    file.delete_range(k, first, last)
    if new_size is not None:
        file.size = new_size


def fsdax_truncate(k: Kernel, file: BackingFile, size: int) -> None:
    assert isinstance(file, FsdaxFile)
    if size >= file.size:
        file.size = size
        return
    first = (size + k.page_size - 1) >> k.page_shift
    _break_layout(k, file, first, None, size, even_cows=True)


def fsdax_punch(k: Kernel, file: BackingFile, off: int, length: int) -> None:
    assert isinstance(file, FsdaxFile)
    first = (off + k.page_size - 1) >> k.page_shift
    last = (off + length) >> k.page_shift
    if first < last:
        _break_layout(k, file, first, last, None, even_cows=False)


def make_fsdax(k: Kernel, name: str, size: int) -> FsdaxFs:
    """A pmem namespace in fsdax mode with a DAX filesystem: MEMORY_DEVICE_FS_DAX pgmap,
    order-0 pages, idle refcount 0 (legacy: 1)."""
    if not k.config.enabled("FS_DAX"):
        raise SyscallError("ENODEV", "CONFIG_FS_DAX is not set")
    nr = size >> k.page_shift
    idle = k.variant.fsdax_idle_refcount
    pgmap = DevPagemap("fsdax", k.next_device_pfn(nr), nr, 0, idle, k.page_shift)
    k.physmem.device_regions.append((pgmap.start_pfn, pgmap.start_pfn + nr, pgmap))
    fs = FsdaxFs(name, size, pgmap, k.page_shift, k.geometry.pmd_order)
    k.devices[name] = fs  # type: ignore[assignment]
    return fs
