"""madvise (mm/madvise.c, mm/khugepaged.c, Linux 7.1.8).

Common rules (madvise_walk_vmas): EINVAL for an unknown advice or unaligned start; length 0
does nothing; holes make the call return ENOMEM after acting on every mapped part; the first
per-VMA error stops the walk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.kernel.huge_memory_split import split_file_folio, split_folio
from foliosim.kernel.memory import anon_vma_prepare
from foliosim.kernel.mm import VM
from foliosim.kernel.mmap import SyscallError, page_align, split_vma_at
from foliosim.kernel.pgtable import PTE_MARKER_GUARD
from foliosim.kernel.rmap import folio_maybe_mapped_shared
from foliosim.kernel.zap import unmap_page_range

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task
    from foliosim.kernel.mm import VMA
    from foliosim.kernel.physmem import Folio

ADVICES = (
    "DONTNEED",
    "HUGEPAGE",
    "NOHUGEPAGE",
    "COLLAPSE",
    "PAGEOUT",
    "FREE",
    "GUARD_INSTALL",
    "GUARD_REMOVE",
    "COLD",
    "WILLNEED",
    "NORMAL",
)


def do_madvise(k: Kernel, task: Task, start: int, length: int, advice: str) -> None:
    """do_madvise() -> madvise_walk_vmas() (mm/madvise.c, 7.1.8)."""
    k.enter("do_madvise")
    if advice not in ADVICES:
        raise SyscallError("EINVAL", f"unknown advice {advice}")
    if advice.startswith("GUARD") and not k.variant.has_guard_regions:
        raise SyscallError("EINVAL", "no guard regions before 6.13 (madvise_behavior_valid)")
    thp_only = ("HUGEPAGE", "NOHUGEPAGE", "COLLAPSE")
    if advice in thp_only and not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        raise SyscallError("EINVAL", "MADV_* needs CONFIG_TRANSPARENT_HUGEPAGE")
    if start & (k.page_size - 1):
        raise SyscallError("EINVAL", "start not page aligned")
    if length == 0:
        return
    end = start + page_align(k, length)
    mm = task.mm
    unmapped = False
    cursor = start
    vmas = mm.vmas_in(start, end)
    if not vmas:
        raise SyscallError("ENOMEM", "no VMA in range")
    # madvise_lock(): since 6.17 a DONTNEED range inside one VMA runs under that VMA's lock
    # only (lock_vma_under_rcu), without mmap_lock.
    k.mmap_locked = not (advice == "DONTNEED" and vmas[0].start <= start and end <= vmas[0].end)
    for vma in vmas:
        if vma.start > cursor:
            unmapped = True
        lo, hi = max(start, vma.start), min(end, vma.end)
        madvise_vma_behavior(k, vma, lo, hi, advice)
        cursor = hi
    if cursor < end or unmapped:
        raise SyscallError("ENOMEM", "range has unmapped parts")


def madvise_vma_behavior(k: Kernel, vma: VMA, start: int, end: int, advice: str) -> None:
    """madvise_vma_behavior() (mm/madvise.c, 7.1.8) for one VMA's part of the range."""
    if advice == "DONTNEED":
        if vma.flags & (VM.LOCKED | VM.PFNMAP):
            raise SyscallError("EINVAL", "MADV_DONTNEED on a locked or pfnmap VMA")
        k.enter("madvise_dontneed_single_vma")
        unmap_page_range(k, vma, start, end)
    elif advice == "FREE":
        if not vma.is_anonymous:
            raise SyscallError("EINVAL", "MADV_FREE on a non-anonymous VMA")
        madvise_free(k, vma, start, end)
    elif advice in ("HUGEPAGE", "NOHUGEPAGE"):
        add = VM.HUGEPAGE if advice == "HUGEPAGE" else VM.NOHUGEPAGE
        remove = VM.NOHUGEPAGE if advice == "HUGEPAGE" else VM.HUGEPAGE
        new_flags = (vma.flags | add) & ~remove
        _update_vma_flags(k, vma, start, end, new_flags)
    elif advice == "COLLAPSE":
        madvise_collapse(k, vma, start, end)
    elif advice in ("PAGEOUT", "COLD"):
        if vma.flags & (VM.LOCKED | VM.PFNMAP):
            raise SyscallError("EINVAL", "MADV_PAGEOUT on a locked or pfnmap VMA")
        if advice == "PAGEOUT":
            madvise_pageout(k, vma, start, end)
    elif advice == "GUARD_INSTALL":
        if vma.flags & (VM.PFNMAP | VM.MIXEDMAP | VM.LOCKED | VM.DONTEXPAND):
            raise SyscallError("EINVAL", "guard regions need a normal VMA")
        madvise_guard_install(k, vma, start, end)
    elif advice == "GUARD_REMOVE":
        if vma.flags & (VM.PFNMAP | VM.MIXEDMAP | VM.DONTEXPAND):
            raise SyscallError("EINVAL", "guard regions need a normal VMA")
        madvise_guard_remove(k, vma, start, end)


def _update_vma_flags(k: Kernel, vma: VMA, start: int, end: int, new_flags: int) -> None:
    """madvise_update_vma() -> vma_modify_flags(): split to the range, set, merge. may_split
    refusals stay EINVAL; ENOMEM from a split would be reported as EAGAIN."""
    if new_flags == vma.flags:
        return
    if start > vma.start:
        vma = split_vma_at(k, vma, start)
    if end < vma.end:
        split_vma_at(k, vma, end)
    vma.flags = new_flags
    vma.mm.try_merge(vma, k.page_shift)


def _large_anon_folios(k: Kernel, vma: VMA, start: int, end: int) -> list[tuple[object, bool]]:
    """The large anon folios mapped in [start, end) and whether the range covers them whole."""
    return _folios_in(k, vma, start, end, anon=True)


def _folios_in(k: Kernel, vma: VMA, start: int, end: int, anon: bool) -> list[tuple[object, bool]]:
    """The folios mapped in [start, end) (anon: the large anonymous ones; else the page-cache
    and shmem ones of any size), each once, with whether the range covers it whole and its
    PTEs map all of it in one batch. Special entries (the zero page) and ZONE_DEVICE folios
    are skipped, as vm_normal_page does."""
    seen: dict[int, tuple[object, bool]] = {}
    geo = k.geometry
    pgt = vma.mm.pgtables

    def note(folio: Folio, first: int, batch: int | None = None) -> None:
        if folio.anon != anon or folio.zone_device or not (folio.large or not anon):
            return
        whole = first >= start and first + (folio.nr_pages << k.page_shift) <= end
        if batch is not None and batch < folio.nr_pages:
            # madvise_folio_pte_batch(): the PTEs from the first one met map fewer pages
            # than the folio has (a hole, or a range starting inside it): it counts as
            # partly covered.
            whole = False
        seen.setdefault(folio.pfn, (folio, whole))

    addr = start
    while addr < end:
        pmd_no = addr >> geo.pmd_shift
        next_pmd = (pmd_no + 1) << geo.pmd_shift
        table = pgt.pte_tables.get(pmd_no)
        if table is None:
            m = k.lookup(vma.mm, addr)  # a PMD or PUD leaf, or nothing
            if m is not None and not m.special:
                first = addr - (m.page << k.page_shift)
                note(m.folio, first)
                addr = max(first + (m.folio.nr_pages << k.page_shift), addr + k.page_size)
            else:
                addr = next_pmd
            continue
        base = pmd_no << geo.pmd_shift
        lo = (addr - base) >> k.page_shift
        hi = (min(end, next_pmd) - base + k.page_size - 1) >> k.page_shift
        # Pages held as arrays are small anonymous ones: never what this looks for.
        for slot, nr, folio, page, special in table.runs(lo, hi, skip_small=True):
            if not special:
                note(folio, base + ((slot - page) << k.page_shift), nr)
        addr = next_pmd
    return list(seen.values())


def madvise_free(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """madvise_free_single_vma() (mm/madvise.c, mm/huge_memory.c madvise_free_huge_pmd, 7.1.8):
    a large folio only partly covered and not folio_maybe_mapped_shared() is split; covered folios
    become clean lazy-free folios. Nothing is freed until reclaim, so RSS is unchanged."""
    from foliosim.kernel.physmem import Folio

    for folio, whole in _large_anon_folios(k, vma, start, end):
        assert isinstance(folio, Folio)
        if not whole and not folio_maybe_mapped_shared(k, folio):
            split_folio(k, folio)
        elif whole:
            folio.dirty = False


def madvise_pageout(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """madvise_pageout() -> reclaim_pages() -> shrink_folio_list() (mm/vmscan.c, 7.1.8) with
    no swap: anonymous large folios cannot get swap space and are split
    (split_folio_to_list) and kept unless folio_maybe_mapped_shared(); small anon folios stay
    mapped. Page-cache and shmem folios not maybe-mapped-shared are unmapped; clean
    page-cache ones leave the cache (vmscan.shrink_file_folio)."""
    from foliosim.kernel.physmem import Folio
    from foliosim.kernel.vmscan import shrink_file_folio

    if vma.is_anonymous and k.config.swap_bytes == 0:
        for folio, _whole in _large_anon_folios(k, vma, start, end):
            assert isinstance(folio, Folio)
            if not folio_maybe_mapped_shared(k, folio):
                split_folio(k, folio)
    if vma.is_anonymous or vma.is_dax:
        return  # ZONE_DEVICE folios are never reclaimed (folio_is_zone_device: skipped)
    # madvise_cold_or_pageout_pte_range: shared folios are left alone; a large folio the
    # range only partly covers is split (split_folio) first, then the range is walked again.
    for folio, whole in _folios_in(k, vma, start, end, anon=False):
        assert isinstance(folio, Folio)
        if folio.large and not whole and not folio_maybe_mapped_shared(k, folio):
            split_file_folio(k, folio, 0, uniform=True)
    for folio, whole in _folios_in(k, vma, start, end, anon=False):
        assert isinstance(folio, Folio)
        if folio_maybe_mapped_shared(k, folio) or not whole or not folio.lru:
            continue
        shrink_file_folio(k, folio)


def madvise_guard_install(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """madvise_guard_install() (mm/madvise.c, 7.1.8): set VM_MAYBE_GUARD, zap whatever is
    mapped in the range (RSS drops as for DONTNEED), then a PTE_MARKER_GUARD in every PTE."""
    k.enter("madvise_guard_install")
    vma.flags |= VM.MAYBE_GUARD
    if vma.is_anonymous:
        anon_vma_prepare(vma)
    unmap_page_range(k, vma, start, end)
    _set_markers(k, vma, start, end, install=True)


def _set_markers(k: Kernel, vma: VMA, start: int, end: int, install: bool) -> None:
    """Write or clear PTE_MARKER_GUARD over [start, end), a page-table page at a time."""
    geo = k.geometry
    addr = start
    while addr < end:
        pmd_no = addr >> geo.pmd_shift
        table_end = min(end, (pmd_no + 1) << geo.pmd_shift)
        table = vma.mm.pgtables.pte_table(pmd_no, create=install)
        if table is not None:
            lo = (addr >> k.page_shift) & (geo.ptrs_per_pte - 1)
            hi = lo + ((table_end - addr) >> k.page_shift)
            window = table.bits[lo:hi]
            if install:
                window[:] = PTE_MARKER_GUARD
            else:
                window[(window & PTE_MARKER_GUARD) != 0] = 0
        addr = table_end


def madvise_guard_remove(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """madvise_guard_remove(): clear guard markers only; nothing is refaulted."""
    _set_markers(k, vma, start, end, install=False)


def _collapse_allowed(k: Kernel, vma: VMA) -> bool:
    """thp_vma_allowable_order(TVA_FORCED_COLLAPSE, PMD_ORDER) (mm/huge_memory.c, 7.1.8):
    not VM_NOHUGEPAGE, not DAX; anonymous VMAs need an anon_vma; shmem is allowed whatever
    its huge= option (shmem_huge_force; the global shmem_enabled is not "deny" in the
    model); other files only when opened read-only (never here: the model's files are open
    for writing). Like the kernel, it looks at the alignment of the VMA's last PMD-sized
    range only; each PMD is checked again by the caller."""
    if vma.flags & VM.NOHUGEPAGE or vma.is_dax:
        return False
    geo = k.geometry
    if not huge_memory.thp_vma_suitable_order(k, vma, vma.end - geo.pmd_size, geo.pmd_order):
        return False  # not even the VMA's last 2M can take a PMD (alignment, size)
    if vma.is_anonymous:
        return vma.anon_vma is not None
    return vma.file is not None and vma.file.kind == "shmem"


def madvise_collapse(k: Kernel, vma: VMA, start: int, end: int) -> None:
    """madvise_collapse() (mm/khugepaged.c, 7.1.8) for one VMA's part of the range (the
    madvise walk calls it per VMA), anonymous memory and shmem (khugepaged.collapse_shmem_pmd).

    Each whole PMD-aligned chunk in the range is collapsed into a new PMD THP
    (THP_COLLAPSE_ALLOC): present small pages are copied, empty and zero-page PTEs become
    zero-filled pages (max_ptes_none is not applied), old folios lose their mapping and
    reference; MM_ANONPAGES grows by the pages that were not mapped before. EINVAL when the
    VMA cannot have a PMD THP (VM_NOHUGEPAGE, no anon_vma, DAX) or a chunk has no page
    table; EAGAIN when an old folio holds extra references (a pin).
    """
    from foliosim.kernel.khugepaged import collapse_anon_pmd, collapse_shmem_pmd

    k.enter("madvise_collapse")
    geo = k.geometry
    hstart = (start + geo.pmd_size - 1) & ~(geo.pmd_size - 1)
    hend = end & ~(geo.pmd_size - 1)
    if not _collapse_allowed(k, vma):
        raise SyscallError("EINVAL", "VMA not eligible for collapse")
    if hstart > hend:
        # (hend - hstart) wraps as an unsigned long: never the 0 PMDs collapsed -> SCAN_FAIL
        raise SyscallError("EINVAL", "range holds no aligned PMD")
    if hstart == hend:
        return  # no PMD to collapse: 0 of 0 succeeded
    last_error: str | None = None
    for addr in range(hstart, hend, geo.pmd_size):
        if not huge_memory.thp_vma_suitable_order(k, vma, addr, geo.pmd_order):
            last_error = "EINVAL"
            continue
        if vma.is_anonymous:
            error = collapse_anon_pmd(k, vma, addr)
        else:
            error = collapse_shmem_pmd(k, vma, addr)
        if error:
            last_error = error
            if error == "ENOMEM" or (error == "EINVAL" and not vma.is_anonymous):
                break  # scan results madvise_collapse() does not go on after
    if last_error:
        raise SyscallError(last_error, "collapse failed")
