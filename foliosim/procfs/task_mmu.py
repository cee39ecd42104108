"""/proc/PID/{status,maps,smaps,smaps_rollup,pagemap} as fs/proc/task_mmu.c (7.1.8) prints them.

Values come from the model; what the model does not have is printed as the kernel would print
it for a process that has none of it (no hugetlb, no swap entries, no KSM, no mlock, no pkeys,
hiwater marks equal to the current values). Files have no real device and inode: the model
uses device 00:00 (device-dax 00:05, devtmpfs; shmem 00:01) and inode numbers counted from
the scenario's files, and names device-dax instances /dev/NAME, shmem files /dev/shm/NAME,
page-cache files /mnt/NAME, fs-dax files /mnt/dax/NAME and MAP_SHARED|MAP_ANONYMOUS objects
"/dev/zero (deleted)".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from foliosim.kernel import huge_memory
from foliosim.kernel.mm import MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, VM, VMA
from foliosim.kernel.pgtable import (
    PTE_DIRTY,
    PTE_MARKER_GUARD,
    PTE_SOFT_DIRTY,
    PTE_SPECIAL,
    PTE_YOUNG,
)
from foliosim.kernel.rmap import folio_maybe_mapped_shared

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task
    from foliosim.kernel.physmem import Folio

PSS_SHIFT = 12  # fs/proc/task_mmu.c

# pagemap entry bits (fs/proc/task_mmu.c, 7.1.8)
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
PM_NAMES = (
    (PM_PRESENT, "present"),
    (PM_SWAP, "swap"),
    (PM_FILE, "file"),
    (PM_GUARD_REGION, "guard"),
    (PM_UFFD_WP, "uffd-wp"),
    (PM_MMAP_EXCLUSIVE, "exclusive"),
    (PM_SOFT_DIRTY, "soft-dirty"),
)

# show_smap_vma_flags() mnemonics for the vm_flags bits the model has (bit -> mnemonic).
VM_MNEMONICS = (
    (VM.READ, "rd"),
    (VM.WRITE, "wr"),
    (VM.EXEC, "ex"),
    (VM.SHARED, "sh"),
    (VM.MAYREAD, "mr"),
    (VM.MAYWRITE, "mw"),
    (VM.MAYEXEC, "me"),
    (VM.MAYSHARE, "ms"),
    (VM.PFNMAP, "pf"),
    (VM.LOCKED, "lo"),
    (VM.DONTCOPY, "dc"),
    (VM.DONTEXPAND, "de"),
    (VM.ACCOUNT, "ac"),
    (VM.MIXEDMAP, "mm"),
    (VM.HUGEPAGE, "hg"),
    (VM.NOHUGEPAGE, "nh"),
    (VM.MAYBE_GUARD, "gu"),
)


# ---- helpers ----------------------------------------------------------------------------------
def _put_dec(label: str, value: int, width: int = 8) -> str:
    """seq_put_decimal_ull_width(): the label, then the number right-aligned in ``width``."""
    return f"{label}{value:>{width}}"


def file_identity(k: Kernel, vma: VMA) -> tuple[int, int, int, str]:
    """(major, minor, inode, path) the model gives a VMA's file (see the module docstring)."""
    file = vma.file
    if file is None:
        return 0, 0, 0, ""
    names = list(k.files) + [n for n in k.devices if n not in k.files]
    ino = (names.index(file.name) + 2) if file.name in names else 1
    if getattr(file, "anon_shared", False):
        return 0, 1, ino, "/dev/zero (deleted)"
    if file.kind == "devdax":
        return 0, 5, ino, f"/dev/{file.name}"
    if file.kind == "shmem":
        return 0, 1, ino, f"/dev/shm/{file.name}"
    if file.kind == "fsdax":
        return 0, 0, ino, f"/mnt/dax/{file.name}"
    return 0, 0, ino, f"/mnt/{file.name}"


def show_vma_header_prefix(
    start: int, end: int, flags: int, pgoff: int, major: int, minor: int, ino: int
) -> str:
    """show_vma_header_prefix() (fs/proc/task_mmu.c, 7.1.8): hex range, permissions, offset,
    device and inode, with a trailing space (the caller pads to 73 columns before a name)."""
    perms = (
        ("r" if flags & VM.READ else "-")
        + ("w" if flags & VM.WRITE else "-")
        + ("x" if flags & VM.EXEC else "-")
        + ("s" if flags & VM.MAYSHARE else "p")
    )
    return f"{start:08x}-{end:08x} {perms} {pgoff:08x} {major:02x}:{minor:02x} {ino} "


def _pad_name(prefix: str, name: str) -> str:
    """seq_setwidth(25 + sizeof(void *) * 6 - 1) then seq_pad(m, ' '): the name starts at
    column 74 (or one space after a longer prefix)."""
    width = 25 + 8 * 6 - 1
    return prefix + " " * max(width - len(prefix), 0) + " " + name


def show_map_vma(k: Kernel, vma: VMA) -> str:
    """show_map_vma() (fs/proc/task_mmu.c, 7.1.8): one line of /proc/PID/maps."""
    major, minor, ino, path = file_identity(k, vma)
    pgoff = (vma.pgoff << k.page_shift) if vma.file is not None else 0
    prefix = show_vma_header_prefix(vma.start, vma.end, vma.flags, pgoff, major, minor, ino)
    return _pad_name(prefix, path) if path else prefix


def render_maps(k: Kernel, task: Task) -> str:
    """/proc/PID/maps: show_map() for each VMA (fs/proc/task_mmu.c, 7.1.8)."""
    return "".join(show_map_vma(k, v) + "\n" for v in task.mm.vmas)


# ---- status -----------------------------------------------------------------------------------
def task_mem(k: Kernel, task: Task) -> str:
    """task_mem() (fs/proc/task_mmu.c, 7.1.8): the memory lines of /proc/PID/status, then
    hugetlb_report_usage() (mm/hugetlb.c). The model keeps no hiwater marks (VmPeak = VmSize,
    VmHWM = VmRSS), no mlock or pinned_vm, no stack or code; VmPTE counts the lowest-level
    page tables (PageTables.nr_ptes, deposited tables included)."""
    mm = task.mm
    shift = k.page_shift - 10
    anon, file, shmem = mm.rss[MM_ANONPAGES], mm.rss[MM_FILEPAGES], mm.rss[MM_SHMEMPAGES]
    total_vm = sum(v.end - v.start for v in mm.vmas) >> k.page_shift
    data_vm = (
        sum(v.end - v.start for v in mm.vmas if (v.flags & (VM.WRITE | VM.SHARED)) == VM.WRITE)
        >> k.page_shift
    )
    exec_vm = (
        sum(v.end - v.start for v in mm.vmas if (v.flags & (VM.EXEC | VM.WRITE)) == VM.EXEC)
        >> k.page_shift
    )
    rss = anon + file + shmem
    rows = [
        ("VmPeak:\t", total_vm << shift),
        ("VmSize:\t", total_vm << shift),
        ("VmLck:\t", 0),
        ("VmPin:\t", 0),
        ("VmHWM:\t", rss << shift),
        ("VmRSS:\t", rss << shift),
        ("RssAnon:\t", anon << shift),
        ("RssFile:\t", file << shift),
        ("RssShmem:\t", shmem << shift),
        ("VmData:\t", data_vm << shift),
        ("VmStk:\t", 0),
        ("VmExe:\t", 0),
        ("VmLib:\t", (exec_vm << k.page_shift) >> 10),
        ("VmPTE:\t", (mm.pgtables.nr_ptes() * k.page_size) >> 10),
        ("VmSwap:\t", mm.rss[MM_SWAPENTS] << shift),
    ]
    out = "".join(_put_dec(label, value) + " kB\n" for label, value in rows)
    return out + f"HugetlbPages:\t{0:>8} kB\n"


# ---- smaps ------------------------------------------------------------------------------------
@dataclass
class MemSizeStats:
    """struct mem_size_stats (fs/proc/task_mmu.c, 7.1.8); sizes in bytes, pss << PSS_SHIFT."""

    resident: int = 0
    shared_clean: int = 0
    shared_dirty: int = 0
    private_clean: int = 0
    private_dirty: int = 0
    referenced: int = 0
    anonymous: int = 0
    lazyfree: int = 0
    anonymous_thp: int = 0
    shmem_thp: int = 0
    file_thp: int = 0
    swap: int = 0
    shared_hugetlb: int = 0
    private_hugetlb: int = 0
    ksm: int = 0
    pss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    pss_shmem: int = 0
    pss_dirty: int = 0
    pss_locked: int = 0
    swap_pss: int = 0

    def add(self, other: MemSizeStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def smaps_page_accumulate(
    mss: MemSizeStats,
    folio: Folio,
    size: int,
    pss: int,
    dirty: bool,
    locked: bool,
    private: bool,
) -> None:
    """smaps_page_accumulate() (fs/proc/task_mmu.c, 7.1.8)."""
    mss.pss += pss
    if folio.anon:
        mss.pss_anon += pss
    elif folio.swapbacked:
        mss.pss_shmem += pss
    else:
        mss.pss_file += pss
    if locked:
        mss.pss_locked += pss
    if dirty or folio.dirty:
        mss.pss_dirty += pss
        if private:
            mss.private_dirty += size
        else:
            mss.shared_dirty += size
    elif private:
        mss.private_clean += size
    else:
        mss.shared_clean += size


def smaps_account(
    k: Kernel,
    mss: MemSizeStats,
    folio: Folio,
    first: int,
    nr: int,
    young: bool,
    dirty: bool,
    locked: bool,
) -> None:
    """smaps_account() (fs/proc/task_mmu.c, 7.1.8) for ``nr`` present pages of ``folio``
    starting at page ``first`` (nr > 1 only for a PMD mapping, the compound case)."""
    page_size = k.page_size
    size = nr * page_size
    if folio.anon:
        mss.anonymous += size
        if not folio.swapbacked and not dirty and not folio.dirty:
            mss.lazyfree += size
    mss.resident += size
    if young or folio.referenced:
        mss.referenced += size
    if folio.refcount == 1:
        smaps_page_accumulate(mss, folio, size, size << PSS_SHIFT, dirty, locked, True)
        return
    if not k.config.page_mapcount:
        mapcount = folio.average_page_mapcount()
        exclusive = not folio_maybe_mapped_shared(k, folio)
        pss = page_size << PSS_SHIFT
        if mapcount >= 2:
            pss //= mapcount
        smaps_page_accumulate(mss, folio, size, pss * nr, dirty, locked, exclusive)
        return
    # CONFIG_PAGE_MAPCOUNT: folio_precise_page_mapcount() page by page, grouped by value.
    if folio.large and folio.page_mapcounts is not None:
        counts = folio.page_mapcounts[first : first + nr] + folio.entire_mapcount
    else:
        counts = np.full(nr, folio.precise_page_mapcount(first), dtype=np.int64)
    values, howmany = np.unique(counts, return_counts=True)
    for mapcount, n in zip(values.tolist(), howmany.tolist(), strict=True):
        pss = page_size << PSS_SHIFT
        if mapcount >= 2:
            pss //= mapcount
        smaps_page_accumulate(mss, folio, n * page_size, pss * n, dirty, locked, mapcount < 2)


def smap_gather_stats(k: Kernel, vma: VMA) -> MemSizeStats:
    """smap_gather_stats() with smaps_pte_range()/smaps_pmd_entry()/smaps_pte_entry()
    (fs/proc/task_mmu.c, 7.1.8). Entries vm_normal_page() has no page for (zero pages,
    special PFN entries) count nothing; PMD mappings of ZONE_DEVICE folios count in Rss but
    in no *PmdMapped field. Huge PUDs were split by the walk before (walk_pud_range)."""
    geo = k.geometry
    mss = MemSizeStats()
    locked = bool(vma.flags & VM.LOCKED)
    pgt = vma.mm.pgtables
    first_pmd = vma.start >> geo.pmd_shift
    last_pmd = (vma.end - 1) >> geo.pmd_shift
    for pmd_no in sorted(
        n for n in set(pgt.pmd_leaves) | set(pgt.pte_tables) if first_pmd <= n <= last_pmd
    ):
        leaf = pgt.pmd_leaves.get(pmd_no)
        if leaf is not None:
            if leaf.special or leaf.folio.zero:
                continue
            folio = leaf.folio
            if folio.anon:
                mss.anonymous_thp += geo.pmd_size
            elif folio.swapbacked:
                mss.shmem_thp += geo.pmd_size
            elif not folio.zone_device:
                mss.file_thp += geo.pmd_size
            smaps_account(
                k, mss, folio, 0, geo.pmd_size >> k.page_shift, leaf.young, leaf.dirty, locked
            )
            continue
        table = pgt.pte_tables[pmd_no]
        base = pmd_no << geo.pmd_shift
        lo = max(vma.start, base)
        hi = min(vma.end, base + geo.pmd_size)
        first = (lo - base) >> k.page_shift
        last = (hi - base) >> k.page_shift
        for slot, nr, folio, page, special in table.runs(first, last, peek=True):
            if special or folio.zero:
                continue
            bits = table.bits[slot : slot + nr]
            # smaps_pte_entry() accounts page by page; consecutive pages of one folio with
            # the same young/dirty bits add up to the same totals when accounted together.
            keys = ((bits & PTE_YOUNG) != 0).astype(np.int8) * 2 + ((bits & PTE_DIRTY) != 0)
            start = 0
            while start < nr:
                end = start + 1
                while end < nr and keys[end] == keys[start]:
                    end += 1
                key = int(keys[start])
                smaps_account(
                    k, mss, folio, page + start, end - start, bool(key & 2), bool(key & 1), locked
                )
                start = end
    return mss


def _kb_rows(mss: MemSizeStats, rollup: bool) -> list[str]:
    rows = [
        ("Rss:            ", mss.resident),
        ("Pss:            ", mss.pss >> PSS_SHIFT),
        ("Pss_Dirty:      ", mss.pss_dirty >> PSS_SHIFT),
    ]
    if rollup:
        rows += [
            ("Pss_Anon:       ", mss.pss_anon >> PSS_SHIFT),
            ("Pss_File:       ", mss.pss_file >> PSS_SHIFT),
            ("Pss_Shmem:      ", mss.pss_shmem >> PSS_SHIFT),
        ]
    rows += [
        ("Shared_Clean:   ", mss.shared_clean),
        ("Shared_Dirty:   ", mss.shared_dirty),
        ("Private_Clean:  ", mss.private_clean),
        ("Private_Dirty:  ", mss.private_dirty),
        ("Referenced:     ", mss.referenced),
        ("Anonymous:      ", mss.anonymous),
        ("KSM:            ", mss.ksm),
        ("LazyFree:       ", mss.lazyfree),
        ("AnonHugePages:  ", mss.anonymous_thp),
        ("ShmemPmdMapped: ", mss.shmem_thp),
        ("FilePmdMapped:  ", mss.file_thp),
        ("Shared_Hugetlb: ", mss.shared_hugetlb),
    ]
    out = [_put_dec(label, value >> 10) + " kB" for label, value in rows]
    out.append(_put_dec("Private_Hugetlb: ", mss.private_hugetlb >> 10, 7) + " kB")
    for label, value in (
        ("Swap:           ", mss.swap),
        ("SwapPss:        ", mss.swap_pss >> PSS_SHIFT),
        ("Locked:         ", mss.pss_locked >> PSS_SHIFT),
    ):
        out.append(_put_dec(label, value >> 10) + " kB")
    return out


def __show_smap(mss: MemSizeStats, rollup: bool) -> str:
    """__show_smap() (fs/proc/task_mmu.c, 7.1.8): the fields smaps and smaps_rollup share."""
    return "".join(row + "\n" for row in _kb_rows(mss, rollup))


def vma_kernel_pagesize(k: Kernel, vma: VMA) -> int:
    """vma_kernel_pagesize() (mm/hugetlb.c, 7.1.8): vm_ops->pagesize when there is one —
    device-dax answers its alignment (dev_dax_pagesize, drivers/dax/device.c) — else
    PAGE_SIZE. vma_mmu_pagesize() is the same on every architecture the model has."""
    if vma.file is not None and vma.file.kind == "devdax":
        return int(getattr(vma.file, "align", k.page_size))
    return k.page_size


def thp_eligible(k: Kernel, vma: VMA) -> bool:
    """thp_vma_allowable_orders(vma, vm_flags, TVA_SMAPS, THP_ORDERS_ALL) != 0
    (__thp_vma_allowable_orders, mm/huge_memory.c, 7.1.8): DAX never (only page faults
    may), anonymous VMAs by the per-size policy, shmem by its huge= option, other files only
    with a ->huge_fault (none in the model). Some allowed order must fit at the VMA's end."""
    if not k.config.enabled("TRANSPARENT_HUGEPAGE") or vma.flags & VM.NOHUGEPAGE:
        return False
    if vma.is_dax:
        return False
    if vma.is_anonymous:
        orders = huge_memory.thp_vma_allowable_orders(k, vma)
    elif vma.file is not None and vma.file.kind == "shmem":
        huge = vma.file.huge
        ok = huge in ("always", "within_size") or (huge == "advise" and vma.flags & VM.HUGEPAGE)
        orders = {k.geometry.pmd_order} if ok else set()
    else:
        return False
    return any(
        huge_memory.thp_vma_suitable_order(k, vma, vma.end - (k.page_size << o), o) for o in orders
    )


def show_smap_vma_flags(vma: VMA) -> str:
    """show_smap_vma_flags() (fs/proc/task_mmu.c, 7.1.8): mnemonics in bit order."""
    names = [
        name for flag, name in sorted(VM_MNEMONICS, key=lambda p: int(p[0])) if vma.flags & flag
    ]
    return "VmFlags: " + "".join(n + " " for n in names) + "\n"


def show_smap(k: Kernel, vma: VMA) -> str:
    """show_smap() (fs/proc/task_mmu.c, 7.1.8): one VMA of /proc/PID/smaps."""
    mss = smap_gather_stats(k, vma)
    page = vma_kernel_pagesize(k, vma)
    out = show_map_vma(k, vma) + "\n"
    out += _put_dec("Size:           ", (vma.end - vma.start) >> 10) + " kB\n"
    out += _put_dec("KernelPageSize: ", page >> 10) + " kB\n"
    out += _put_dec("MMUPageSize:    ", page >> 10) + " kB\n"
    out += __show_smap(mss, False)
    out += f"THPeligible:    {int(thp_eligible(k, vma)):>8}\n"
    return out + show_smap_vma_flags(vma)


def show_smaps_rollup(k: Kernel, task: Task) -> str:
    """show_smaps_rollup() (fs/proc/task_mmu.c, 7.1.8): one header over all VMAs."""
    mss = MemSizeStats()
    for vma in task.mm.vmas:
        mss.add(smap_gather_stats(k, vma))
    lo = task.mm.vmas[0].start if task.mm.vmas else 0
    hi = task.mm.vmas[-1].end if task.mm.vmas else 0
    header = _pad_name(show_vma_header_prefix(lo, hi, 0, 0, 0, 0, 0), "[rollup]")
    return header + "\n" + __show_smap(mss, True)


def render_smaps(k: Kernel, task: Task) -> str:
    return "".join(show_smap(k, v) for v in task.mm.vmas)


# ---- pagemap ----------------------------------------------------------------------------------
def __folio_page_mapped_exclusively(k: Kernel, folio: Folio, page: int) -> bool:
    """__folio_page_mapped_exclusively() (fs/proc/task_mmu.c, 7.1.8)."""
    if k.config.page_mapcount:
        return folio.precise_page_mapcount(page) == 1
    return not folio_maybe_mapped_shared(k, folio)


def _resolve(k: Kernel, folio: Folio, page: int) -> tuple[Folio, int]:
    """page_folio(pfn_to_page()) for an entry that may point past its folio (legacy devmap)."""
    from foliosim.scenario.queries import resolve

    return resolve(k, folio, page)


def pagemap_entries(k: Kernel, task: Task, start: int, end: int) -> np.ndarray:
    """pagemap_read() (fs/proc/task_mmu.c, 7.1.8) for [start, end): one u64 per page, as a
    reader with CAP_SYS_ADMIN sees them (PFNs shown). Holes and unmapped VMA pages are 0
    (pagemap_pte_hole; the model has no VM_SOFTDIRTY); PTEs as pte_to_pagemap_entry(), PMD
    leaves as pagemap_pmd_range_thp(). Guard markers read PM_SWAP|PM_GUARD_REGION with a
    zero frame (the kernel puts the marker's swap type and offset there)."""
    geo = k.geometry
    shift = k.page_shift
    n = (end - start) >> shift
    out = np.zeros(n, dtype=np.uint64)
    pgt = task.mm.pgtables
    for vma in task.mm.vmas_in(start, end):
        lo, hi = max(vma.start, start), min(vma.end, end)
        for pmd_no in range(lo >> geo.pmd_shift, ((hi - 1) >> geo.pmd_shift) + 1):
            base = pmd_no << geo.pmd_shift
            a, b = max(lo, base), min(hi, base + geo.pmd_size)
            first_slot = (a - base) >> shift
            idx0 = (a - start) >> shift
            count = (b - a) >> shift
            leaf = pgt.pmd_leaves.get(pmd_no)
            pud_leaf = pgt.pud_leaves.get(base >> geo.pud_shift)
            if pud_leaf is not None:  # only when the caller skipped the walk's split
                leaf = pud_leaf
                first_slot = (a - ((base >> geo.pud_shift) << geo.pud_shift)) >> shift
            if leaf is not None:
                # pmd_page() gives a page even for special entries: PM_FILE unless anon.
                for i in range(count):
                    folio, page = _resolve(k, leaf.folio, first_slot + i)
                    cur = PM_PRESENT | (0 if folio.anon else PM_FILE)
                    if __folio_page_mapped_exclusively(k, folio, page):
                        cur |= PM_MMAP_EXCLUSIVE
                    out[idx0 + i] = ((folio.pfn + page) & PM_PFRAME_MASK) | cur
                continue
            table = pgt.pte_tables.get(pmd_no)
            if table is None:
                continue
            for i in range(count):
                slot = first_slot + i
                bits = int(table.bits[slot])
                entry = table.entry(slot, peek=True)
                if entry is None:
                    if bits & PTE_MARKER_GUARD:
                        out[idx0 + i] = PM_SWAP | PM_GUARD_REGION
                    continue
                folio, page = entry
                value = ((folio.pfn + page) & PM_PFRAME_MASK) | PM_PRESENT
                if bits & PTE_SOFT_DIRTY:
                    value |= PM_SOFT_DIRTY
                if not bits & PTE_SPECIAL:  # vm_normal_page() found a page
                    if not folio.anon:
                        value |= PM_FILE
                    if __folio_page_mapped_exclusively(k, folio, page):
                        value |= PM_MMAP_EXCLUSIVE
                out[idx0 + i] = value
    return out


def pagemap_bytes(k: Kernel, task: Task, start: int, end: int) -> bytes:
    """The bytes read(2) returns from /proc/PID/pagemap at offset start / PAGE_SIZE * 8."""
    entries = pagemap_entries(k, task, start, end)
    return b"".join(struct.pack("<Q", int(v)) for v in entries)


def pme_names(value: int) -> str:
    return ",".join(name for bit, name in PM_NAMES if value & bit) or "none"


def render_pagemap(k: Kernel, task: Task) -> str:
    """/proc/PID/pagemap as text: per VMA, runs of pages whose entries differ only by
    consecutive PFNs — ``START-END ENTRY_OF_FIRST_PAGE pfn=PFN flags``."""
    lines = []
    shift = k.page_shift
    for vma in task.mm.vmas:
        entries = pagemap_entries(k, task, vma.start, vma.end)
        i = 0
        n = len(entries)
        while i < n:
            v = int(entries[i])
            j = i + 1
            step = 1 if v & PM_PRESENT else 0
            while j < n and int(entries[j]) == v + step * (j - i):
                j += 1
            a = vma.start + (i << shift)
            b = vma.start + (j << shift)
            if v:
                pfn = v & PM_PFRAME_MASK
                lines.append(f"{a:08x}-{b:08x} {v:016x} pfn={pfn:#x} {pme_names(v)}")
            else:
                lines.append(f"{a:08x}-{b:08x} {v:016x} none")
            i = j
    return "".join(line + "\n" for line in lines)
