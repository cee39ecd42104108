"""mprotect: do_mprotect_pkey, mprotect_fixup, change_protection (mm/mprotect.c, 7.1.8).

Huge leaves only partly inside the range are split (at VMA split time by
vma_adjust_trans_huge, or by change_pmd_range/change_pud_range); whole leaves are changed in
place (change_huge_pmd/change_huge_pud: no reference, mapcount or RSS change). Removing write
permission write-protects entries; adding it leaves entries read-only (the next write faults)
except exclusive anon pages (can_change_pte_writable, MM_CP_TRY_CHANGE_WRITABLE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.kernel.mm import VM, vma_page_prot_writable
from foliosim.kernel.mmap import SyscallError, page_align, prot_flags, split_vma_at
from foliosim.kernel.pgtable import CLEAR_WRITE, PTE_DIRTY, PTE_WRITE, PteTable
from foliosim.kernel.smallpages import SMALL_EXCLUSIVE

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task
    from foliosim.kernel.mm import VMA

PROT_BITS = VM.READ | VM.WRITE | VM.EXEC


def do_mprotect(k: Kernel, task: Task, start: int, length: int, prot: str) -> None:
    """do_mprotect_pkey() (mm/mprotect.c, 7.1.8): EINVAL for an unaligned start; length 0 is
    a no-op; a hole gives ENOMEM after the VMAs before it were changed; a shared mapping may
    not gain write without VM_MAYWRITE (EACCES)."""
    k.enter("do_mprotect_pkey")
    if start & (k.page_size - 1):
        raise SyscallError("EINVAL", "start not page aligned")
    if length == 0:
        return
    end = start + page_align(k, length)
    mm = task.mm
    first = mm.find_vma(start)
    if first is None:
        raise SyscallError("ENOMEM", "no VMA at start")
    new_prot = prot_flags(prot)
    cursor = start
    for vma in mm.vmas_in(start, end):
        if vma.start > cursor:
            raise SyscallError("ENOMEM", "hole in range")
        if new_prot & VM.WRITE and not vma.flags & VM.MAYWRITE:
            raise SyscallError("EACCES", "no VM_MAYWRITE")
        vma_end = vma.end  # mprotect_fixup may split vma: it keeps only the part below start
        mprotect_fixup(k, vma, max(start, vma.start), min(end, vma_end), new_prot)
        cursor = min(end, vma_end)
    if cursor < end:
        raise SyscallError("ENOMEM", "hole at end of range")


def mprotect_fixup(k: Kernel, vma: VMA, start: int, end: int, new_prot: int) -> None:
    """mprotect_fixup() (mm/mprotect.c, 7.1.8): split the VMA to [start, end), set the flags,
    change the entries, then merge with compatible neighbours."""
    if (vma.flags & PROT_BITS) == new_prot:
        return
    if start > vma.start:
        vma = split_vma_at(k, vma, start)
    if end < vma.end:
        split_vma_at(k, vma, end)
    old = vma.flags
    vma.flags = (vma.flags & ~PROT_BITS) | new_prot
    change_protection(k, vma, old)
    vma.mm.try_merge(vma, k.page_shift)


def change_protection(k: Kernel, vma: VMA, old: int) -> None:
    """change_protection() over the whole VMA (mm/mprotect.c, 7.1.8): entries lose write when
    VM_WRITE is removed; when it is added, entries that need no write fault get it back
    (MM_CP_TRY_CHANGE_WRITABLE: exclusive anon pages of a private mapping, dirty entries of a
    write-notify shared one; everything when vm_page_prot itself is writable)."""
    geo = k.geometry
    pgt = vma.mm.pgtables
    huge_memory.split_huge_pmd_range(k, vma, vma.start, vma.end)
    removing_write = bool(old & VM.WRITE) and not vma.flags & VM.WRITE
    adding_write = not old & VM.WRITE and bool(vma.flags & VM.WRITE)
    lo_pmd, hi_pmd = vma.start >> geo.pmd_shift, (vma.end - 1) >> geo.pmd_shift
    lo_pud, hi_pud = vma.start >> geo.pud_shift, (vma.end - 1) >> geo.pud_shift
    if k.variant.mprotect_pud_clears_bad:
        # 6.1 change_pud_range(): pud_none_or_clear_bad() before any huge-PUD case.
        for pud_no in [n for n in pgt.pud_leaves if lo_pud <= n <= hi_pud]:
            huge_memory.pud_clear_bad(k, vma, pud_no, "change_pud_range")
    # vm_page_prot itself writable (shared, no write-notify): pte/pmd/pud_modify with the new
    # protection makes every present entry writable.
    shared_writable = adding_write and vma_page_prot_writable(vma)
    for pud_no, leaf in pgt.pud_leaves.items():
        if lo_pud <= pud_no <= hi_pud:
            if removing_write:
                leaf.write = False
            elif shared_writable:  # change_huge_pud: pud_modify only, no try-writable
                leaf.write = True
    for pmd_no, leaf in pgt.pmd_leaves.items():
        if not lo_pmd <= pmd_no <= hi_pmd:
            continue
        if removing_write:
            leaf.write = False
        elif shared_writable:
            leaf.write = True
        elif adding_write and vma.shared:  # can_change_pmd_writable: dirty ones
            leaf.write = leaf.write or leaf.dirty
        elif adding_write and leaf.folio.anon and leaf.folio.page_exclusive(0):
            leaf.write = True  # can_change_pmd_writable: an exclusive anon THP
    for pmd_no, table in pgt.pte_tables.items():
        if not lo_pmd <= pmd_no <= hi_pmd:
            continue
        base = pmd_no << geo.pmd_shift
        first = max(vma.start - base, 0) >> k.page_shift
        last = min(vma.end - base, geo.pmd_size) >> k.page_shift
        if removing_write:
            # Guard markers and empty slots carry no write bit: the slice is exact.
            table.bits[first:last] &= CLEAR_WRITE
        elif adding_write:
            _pte_range_add_write(table, first, last, vma, shared_writable)


def _pte_range_add_write(
    table: PteTable, first: int, last: int, vma: VMA, shared_writable: bool
) -> None:
    """change_pte_range() (mm/mprotect.c, 7.1.8) when VM_WRITE is added, over whole runs.

    Shared mapping whose vm_page_prot is writable (no write-notify): every present entry
    takes the new protection (pte_modify), so becomes writable. Shared with write-notify
    (can_change_shared_pte_writable): only dirty entries; clean ones still need a write fault
    for ->page_mkwrite. Private (can_change_private_pte_writable): only PageAnonExclusive
    pages of anonymous folios (vm_normal_page: never a special entry such as the zero page).
    Left out: soft-dirty and uffd-wp write protection (VM_SOFTDIRTY is set on new VMAs).
    """
    bits = table.bits[first:last]
    present = table.present_mask(first, last)
    if vma.shared:
        mask = present if shared_writable else present & ((bits & PTE_DIRTY) != 0)
        bits[mask] |= PTE_WRITE
        return
    slots, pfns = table.small_anon_slots(first, last)
    if slots.shape[0]:  # order-0 anonymous pages held as arrays (smallpages.py)
        exclusive_pages = (table.mem.state[pfns] & SMALL_EXCLUSIVE) != 0
        table.bits[slots[exclusive_pages]] |= PTE_WRITE
    for slot, nr, folio, page, special in table.runs(first, last, skip_small=True):
        exclusive = folio.anon_exclusive
        if special or not folio.anon or exclusive is None:
            continue
        if nr == 1:
            if exclusive[page]:
                table.bits[slot] |= PTE_WRITE
        else:
            run = table.bits[slot : slot + nr]
            run[exclusive[page : page + nr]] |= PTE_WRITE
