"""mmap and munmap: do_mmap, __get_unmapped_area, do_vmi_munmap (mm/mmap.c, mm/vma.c, 7.1.8).

Placement is top-down from mmap_base with no randomisation. Private anonymous mappings whose
length is a multiple of the PMD size get __thp_get_unmapped_area's alignment; shmem follows
its mount's huge= option; device-dax aligns to the device alignment; fs-dax (ext4) uses
thp_get_unmapped_area like any ext4 file. ``align=`` (a model extension) asks for an address
aligned to that size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.kernel.mm import VM, VMA
from foliosim.kernel.zap import unmap_page_range

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel, Task


class SyscallError(Exception):
    """A refused system call: ``errno`` is the kernel's error name."""

    def __init__(self, errno: str, why: str = "") -> None:
        super().__init__(f"{errno}: {why}" if why else errno)
        self.errno = errno


def page_align(k: Kernel, n: int) -> int:
    return (n + k.page_size - 1) & ~(k.page_size - 1)


def prot_flags(prot: str) -> int:
    flags = 0
    if "r" in prot:
        flags |= VM.READ
    if "w" in prot:
        flags |= VM.WRITE | VM.READ  # x86: write implies read
    if "x" in prot:
        flags |= VM.EXEC | VM.READ
    return flags


def thp_get_unmapped_area(k: Kernel, task: Task, length: int, off: int, size: int) -> int | None:
    """__thp_get_unmapped_area() (mm/huge_memory.c, 7.1.8): search len + size, then move to
    the address congruent to the file offset modulo size; when the padded window's low end is
    already congruent, the mapping goes to the top (ret + size)."""
    if off + length - ((off + size - 1) & ~(size - 1)) < size:
        return None
    mm = task.mm
    ret = mm.free_gap(length + size, k.page_size, k.page_size, mm.mmap_base)
    if ret is None:
        return None
    off_sub = (off - ret) & (size - 1)
    if off_sub == 0:
        return ret + size
    return ret + off_sub


def dax_get_unmapped_area(k: Kernel, task: Task, length: int, off: int, align: int) -> int | None:
    """dax_get_unmapped_area() (drivers/dax/device.c, 7.1.8): the lowest address congruent to
    the offset modulo the device alignment inside a window of len + align."""
    if off + length - ((off + align - 1) & ~(align - 1)) < align:
        return None
    mm = task.mm
    ret = mm.free_gap(length + align, k.page_size, k.page_size, mm.mmap_base)
    if ret is None:
        return None
    return ret + ((off - ret) & (align - 1))


def get_unmapped_area(
    k: Kernel,
    task: Task,
    length: int,
    file: BackingFile | None,
    off: int,
    shared: bool,
    align: int | None,
) -> int:
    """__get_unmapped_area() (mm/mmap.c, 7.1.8) for a non-fixed request."""
    mm = task.mm
    pmd = k.geometry.pmd_size
    addr: int | None = None
    if align:
        addr = mm.free_gap(length, align, k.page_size, mm.mmap_base)
    elif file is not None and file.kind == "devdax":
        addr = dax_get_unmapped_area(k, task, length, off, file.align)  # type: ignore[attr-defined]
    elif file is not None and file.kind in ("pagecache", "fsdax"):
        if k.config.enabled("TRANSPARENT_HUGEPAGE"):
            addr = thp_get_unmapped_area(k, task, length, off, pmd)
    elif file is not None and file.kind == "shmem":
        if k.config.enabled("TRANSPARENT_HUGEPAGE") and file.huge != "never" and length >= pmd:
            addr = _shmem_aligned(k, task, length, off)
    elif file is None and not shared and k.config.enabled("TRANSPARENT_HUGEPAGE"):
        if length % pmd == 0:
            addr = thp_get_unmapped_area(k, task, length, 0, pmd)
    if addr is None:
        addr = mm.free_gap(length, k.page_size, k.page_size, mm.mmap_base)
    if addr is None:
        raise SyscallError("ENOMEM", "no room in the address space")
    return addr


def _shmem_aligned(k: Kernel, task: Task, length: int, off: int) -> int | None:
    """shmem_get_unmapped_area() (mm/shmem.c, 7.1.8): search len + hpage - PAGE_SIZE and round
    up to the first address congruent to the offset modulo HPAGE_PMD_SIZE."""
    hpage = k.geometry.pmd_size
    mm = task.mm
    ret = mm.free_gap(length + hpage - k.page_size, k.page_size, k.page_size, mm.mmap_base)
    if ret is None:
        return None
    return ret + ((off - ret) & (hpage - 1))


def do_mmap(
    k: Kernel,
    task: Task,
    length: int,
    prot: str,
    shared: bool,
    file: BackingFile | None,
    off: int,
    at: int | None,
    align: int | None,
) -> int:
    """do_mmap() + mmap_region() (mm/mmap.c, mm/vma.c, 7.1.8). Returns the address."""
    k.enter("do_mmap")
    if off & (k.page_size - 1):
        raise SyscallError("EINVAL", "offset not page aligned")
    if length == 0:
        raise SyscallError("EINVAL", "length 0")
    length = page_align(k, length)
    if at is not None and at & (k.page_size - 1):
        raise SyscallError("EINVAL", "MAP_FIXED address not page aligned")
    if at is not None and at + length > k.geometry.task_size:
        raise SyscallError("ENOMEM", "beyond TASK_SIZE")
    if file is not None and file.kind == "devdax":
        file.check_mmap(k, shared, at, length, off)  # type: ignore[attr-defined]
    if file is None and shared:
        from foliosim.kernel.files import BackingFile as _File

        # MAP_SHARED|MAP_ANONYMOUS is a shmem object (shmem_zero_setup) of the mapping's size.
        seq = len(k.files)
        while f"dev/zero#{seq}" in k.files:
            seq += 1
        file = _File(name=f"dev/zero#{seq}", size=length, kind="shmem", page_mkwrite=False)
        file.anon_shared = True  # type: ignore[attr-defined]
        k.add_file(file)  # its folios are page cache (NR_FILE_PAGES, NR_SHMEM) like any tmpfs file
        off = 0
    if at is None:
        addr = get_unmapped_area(k, task, length, file, off, shared, align)
        if file is not None and file.kind == "devdax":
            # dax_mmap_prepare -> __check_vma sees the placed range (it may be unaligned
            # when dax_get_unmapped_area could not align it, e.g. for an unaligned offset).
            file.check_mmap(k, shared, addr, length, off)  # type: ignore[attr-defined]
    else:
        addr = at
        do_munmap(k, task, addr, length)
    flags = prot_flags(prot) | VM.MAYREAD | VM.MAYWRITE | VM.MAYEXEC
    if shared:
        flags |= VM.SHARED | VM.MAYSHARE
    if file is not None and file.kind == "devdax":
        flags |= VM.HUGEPAGE  # dax_mmap_prepare sets VM_HUGEPAGE
    pgoff = off >> k.page_shift if file is not None else addr >> k.page_shift
    vma = VMA(task.mm, addr, addr + length, flags, file, pgoff)
    task.mm.insert_vma(vma)
    if file is None or file.kind not in ("devdax",):
        task.mm.try_merge(vma, k.page_shift)
    return addr


def split_vma_at(k: Kernel, vma: VMA, addr: int) -> VMA:
    """__split_vma() (mm/vma.c, 7.1.8): vm_ops->may_split may refuse (device-dax: -EINVAL at
    an address not aligned to the device alignment); a huge PMD straddling the split point
    is split first (vma_adjust_trans_huge)."""
    if vma.file is not None and vma.file.kind == "devdax":
        if addr % vma.file.align:  # type: ignore[attr-defined]
            raise SyscallError("EINVAL", "dev_dax_may_split: unaligned split")
    huge_memory.split_huge_pmd_range(k, vma, addr, addr)
    return vma.mm.split_vma(vma, addr, k.page_shift)


def check_splits(k: Kernel, task: Task, start: int, end: int) -> None:
    """Ask may_split for both ends before changing anything (munmap is all-or-nothing)."""
    for addr in (start, end):
        vma = task.mm.find_vma(addr)
        if vma is not None and vma.start < addr and vma.file is not None:
            if vma.file.kind == "devdax" and addr % vma.file.align:  # type: ignore[attr-defined]
                raise SyscallError("EINVAL", "dev_dax_may_split: unaligned split")


def do_munmap(k: Kernel, task: Task, start: int, length: int) -> None:
    """do_vmi_munmap() (mm/vma.c, 7.1.8): EINVAL for an unaligned start or a zero length;
    holes are fine; VMAs are split at the ends (may_split can refuse), then zapped and
    removed with their page tables (guard markers included)."""
    k.enter("do_vmi_munmap")
    if start & (k.page_size - 1):
        raise SyscallError("EINVAL", "start not page aligned")
    length = page_align(k, length)
    if length == 0 or start + length > k.geometry.task_size:
        raise SyscallError("EINVAL", "bad length")
    end = start + length
    mm = task.mm
    check_splits(k, task, start, end)
    for vma in mm.vmas_in(start, end):
        if vma.start < start:
            split_vma_at(k, vma, start)
    for vma in mm.vmas_in(start, end):
        if vma.end > end:
            split_vma_at(k, vma, end)
    for vma in mm.vmas_in(start, end):
        unmap_page_range(k, vma, vma.start, vma.end, drop_markers=True)
        mm.remove_vma(vma)
    from foliosim.kernel.truncate import release_unused_anon_shmem

    release_unused_anon_shmem(k)
