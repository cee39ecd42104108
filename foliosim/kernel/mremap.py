"""mremap: shrink, grow in place, move (mm/mremap.c, Linux 7.1.8).

Moving page tables never changes references, mapcounts or RSS within one mm: PMD leaves move
whole when the extent is a whole aligned PMD (move_huge_pmd), otherwise they are split first
(anon: PTEs, which move; file/DAX: dropped and refaulted). PUD leaves: move_page_tables()
looks at the old PUD with get_old_pud(), which runs pud_none_or_clear_bad() before checking
pud_trans_huge(); on x86-64 pud_bad() is true for any leaf PUD, so a huge PUD is reported as
"bad pud" and cleared without touching its rmap, RSS or reference. That is the model's
explanation of the "bad pud" + "BUG: Bad rss-counter" seen on 6.18/7.3 for a 1 GiB
device-dax mremap (a reading of the source, see docs/kernel-findings.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.kernel.mm import VMA, mm_counter_file
from foliosim.kernel.mmap import (
    SyscallError,
    check_splits,
    do_munmap,
    get_unmapped_area,
    page_align,
    split_vma_at,
)

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task


def do_mremap(
    k: Kernel,
    task: Task,
    addr: int,
    old_len: int,
    new_len: int,
    maymove: bool,
    fixed: int | None,
) -> int:
    """do_mremap() (mm/mremap.c, 7.1.8). Returns the new address."""
    k.enter("do_mremap")
    if addr & (k.page_size - 1):
        raise SyscallError("EINVAL", "address not page aligned")
    old_len = page_align(k, old_len)
    new_len = page_align(k, new_len)
    if new_len == 0:
        raise SyscallError("EINVAL", "new length 0")
    if fixed is not None:
        if not maymove:
            raise SyscallError("EINVAL", "MREMAP_FIXED needs MREMAP_MAYMOVE")
        if fixed & (k.page_size - 1):
            raise SyscallError("EINVAL", "new address not page aligned")
        if fixed < addr + old_len and addr < fixed + new_len:
            raise SyscallError("EINVAL", "source and destination overlap")
    mm = task.mm
    vma = mm.find_vma(addr)
    if vma is None:
        raise SyscallError("EFAULT", "no VMA at address")
    if fixed is None and new_len <= old_len:
        if new_len < old_len:
            do_munmap(k, task, addr + new_len, old_len - new_len)
        return addr
    if old_len == 0 and not vma.shared:
        raise SyscallError("EINVAL", "old_len 0 needs a shared mapping")
    if addr + old_len > vma.end:
        raise SyscallError("EFAULT", "range not inside one VMA")
    if fixed is None and addr + old_len == vma.end:
        following = mm.vmas_in(vma.end, addr + new_len)
        if not following and addr + new_len <= mm.mmap_base:
            vma.end = addr + new_len  # vma_merge_extend in place
            return addr
    if not maymove:
        raise SyscallError("ENOMEM", "cannot grow in place")
    return move_vma(k, task, vma, addr, old_len, new_len, fixed)


def move_vma(
    k: Kernel, task: Task, vma: VMA, addr: int, old_len: int, new_len: int, fixed: int | None
) -> int:
    """move_vma() (mm/mremap.c, 7.1.8): may_split is asked at both ends first; a new VMA is
    placed (get_unmapped_area with the VMA's file), the page tables moved, the old range
    unmapped."""
    check_splits(k, task, addr, addr + old_len)
    mm = task.mm
    pgoff = vma.linear_page_index(addr, k.page_shift)
    if fixed is not None:
        do_munmap(k, task, fixed, new_len)
        new_addr = fixed
        # mremap_to() (mm/mremap.c, 7.1.8): unmapping the destination may split or merge-break
        # the source VMA, so it is looked up again (vma_lookup) before the move.
        found = mm.find_vma(addr)
        if found is None:
            raise SyscallError("EFAULT", "source VMA gone after unmapping the destination")
        vma = found
    else:
        file_off = pgoff << k.page_shift if vma.file is not None else 0
        new_addr = get_unmapped_area(k, task, new_len, vma.file, file_off, vma.shared, None)
    if vma.start < addr:
        vma = split_vma_at(k, vma, addr)
    if vma.end > addr + old_len:
        split_vma_at(k, vma, addr + old_len)
    new = VMA(
        mm, new_addr, new_addr + new_len, vma.flags, vma.file, pgoff, vma.anon_vma, vma.fork_child
    )
    move_page_tables(k, vma, addr, new, new_addr, old_len)
    mm.remove_vma(vma)
    mm.insert_vma(new)
    mm.try_merge(new, k.page_shift)
    return new_addr


def move_huge_pud(k: Kernel, vma: VMA, pud_no: int, delta: int, end: int) -> None:
    """move_huge_pud() (mm/mremap.c, 7.1.8), as the fixed variant reaches it: a whole aligned
    PUD moves with no reference, rmap or RSS change; a partial extent splits it first."""
    geo = k.geometry
    lo = pud_no << geo.pud_shift
    pgt = vma.mm.pgtables
    if lo + geo.pud_size <= end and not (lo + delta) & (geo.pud_size - 1):
        leaf = pgt.pud_leaves.pop(pud_no)
        pgt.pud_leaves[(lo + delta) >> geo.pud_shift] = leaf
        if k.variant.mremap_pud_drops_rss and not leaf.special:
            vma.mm.rss[mm_counter_file(leaf.folio)] -= k.config.pud_nr
    else:
        huge_memory.__split_huge_pud(k, vma, lo)


def move_page_tables(
    k: Kernel, old: VMA, old_addr: int, new: VMA, new_addr: int, length: int
) -> None:
    """move_page_tables() (mm/mremap.c, 7.1.8; 6.1 has the same PUD order).

    PUD leaves: get_old_pud() runs pud_none_or_clear_bad() before the pud_trans_huge() ->
    move_huge_pud() case, so on x86-64 a leaf PUD is printed as "bad pud" and cleared with its
    rmap, RSS and reference left behind (huge_memory.pud_clear_bad). PMD leaves move whole when
    the extent is an aligned PMD (move_huge_pmd), otherwise they are split; PTEs move one by
    one. Leaves out: HAVE_MOVE_PUD/HAVE_MOVE_PMD table moves, rmap locks, soft-dirty, uffd.
    """
    geo = k.geometry
    pgt = old.mm.pgtables
    end = old_addr + length
    delta = new_addr - old_addr
    # PUD leaves: get_old_pud() clears them as bad before the trans-huge check (x86-64).
    for pud_no in [n for n in pgt.pud_leaves if old_addr <= (n << geo.pud_shift) < end]:
        if k.variant.mremap_checks_huge_pud_first:
            move_huge_pud(k, old, pud_no, delta, end)
        else:
            huge_memory.pud_clear_bad(k, old, pud_no, "get_old_pud")
    # PMD leaves: move whole ones when both ends are aligned, else split (anon -> PTEs).
    for pmd_no in [n for n in pgt.pmd_leaves if old_addr <= (n << geo.pmd_shift) < end]:
        lo = pmd_no << geo.pmd_shift
        whole = lo + geo.pmd_size <= end and not (lo + delta) & (geo.pmd_size - 1)
        if whole:
            pgt.pmd_leaves[(lo + delta) >> geo.pmd_shift] = pgt.pmd_leaves.pop(pmd_no)
        else:
            huge_memory.__split_huge_pmd(k, old, lo)
    lo_pmd, hi_pmd = old_addr >> geo.pmd_shift, (end - 1) >> geo.pmd_shift
    for pmd_no in sorted(n for n in pgt.pte_tables if lo_pmd <= n <= hi_pmd):
        table = pgt.pte_tables[pmd_no]
        base = pmd_no << geo.pmd_shift
        for slot in range(geo.ptrs_per_pte):
            src = base + (slot << k.page_shift)
            if not old_addr <= src < end or (table.pfn[slot] < 0 and not table.bits[slot]):
                continue
            dst = src + delta
            dtable = pgt.pte_table(dst >> geo.pmd_shift, create=True)
            assert dtable is not None
            dslot = (dst >> k.page_shift) & (geo.ptrs_per_pte - 1)
            entry = table.entry(slot)
            bits = int(table.bits[slot])
            if entry is not None:
                dtable.set(dslot, entry[0], entry[1], bits)
            else:
                dtable.bits[dslot] = bits
            table.clear(slot)
            table.bits[slot] = 0
