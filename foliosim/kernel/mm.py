"""mm_struct, VMAs, vm_flags and RSS counters.

Models the parts of include/linux/mm_types.h, mm/vma.c and mm/mmap.c (Linux 7.1.8) that the
accounting depends on: VMAs sorted by address, splitting at an address (with the
vm_ops->may_split veto device-dax uses), merging of compatible neighbours, and the per-mm
RSS counters MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS and MM_SHMEMPAGES. Left out: the maple
tree, anon_vma chains (one AnonVma object per anonymous lineage), mempolicies, userfaultfd.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foliosim.kernel.pgtable import PageTables
from foliosim.kernel.physmem import PhysMem

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.physmem import Folio


class VM:
    """vm_flags bits (include/linux/mm.h), as plain ints: IntFlag arithmetic costs more
    than the fault path it sits on."""

    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4
    SHARED = 0x8
    MAYREAD = 0x10
    MAYWRITE = 0x20
    MAYEXEC = 0x40
    MAYSHARE = 0x80
    PFNMAP = 0x400
    LOCKED = 0x2000
    DONTCOPY = 0x20000
    DONTEXPAND = 0x40000
    ACCOUNT = 0x100000
    HUGEPAGE = 0x20000000
    NOHUGEPAGE = 0x40000000
    MIXEDMAP = 0x10000000
    MAYBE_GUARD = 0x800000000  # VM_MAYBE_GUARD (7.x): guard markers may be present


MM_FILEPAGES = 0
MM_ANONPAGES = 1
MM_SWAPENTS = 2
MM_SHMEMPAGES = 3
RSS_NAMES = ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SWAPENTS", "MM_SHMEMPAGES")

_anon_vma_ids = itertools.count(1)


@dataclass(eq=False)
class AnonVma:
    """An anon_vma: the rmap root anonymous folios of a lineage of VMAs point at."""

    id: int = field(default_factory=lambda: next(_anon_vma_ids))


@dataclass(eq=False)
class VMA:
    """A vm_area_struct."""

    mm: MM
    start: int
    end: int
    flags: int
    file: BackingFile | None = None
    pgoff: int = 0  # in pages; for anon VMAs, the address >> PAGE_SHIFT at creation
    anon_vma: AnonVma | None = None
    # vma_is_fork_child() (mm/vma.c, 7.1.8): the anon_vma_chain links a parent's anon_vma
    # besides the VMA's own (anon_vma_fork cloned it), so it is not singular. Splits and
    # mremap copies clone the chain and keep it. Such a VMA never merges with one that has
    # no anon_vma (is_mergeable_anon_vma), to keep anon_vma trees from growing.
    fork_child: bool = False

    @property
    def is_anonymous(self) -> bool:
        """vma_is_anonymous(): no vm_ops, i.e. no file."""
        return self.file is None

    @property
    def kind(self) -> str:
        return "anon" if self.file is None else self.file.kind

    @property
    def is_dax(self) -> bool:
        """vma_is_dax(): the file's inode is a DAX inode (fs-dax file or device-dax)."""
        return self.file is not None and self.file.kind in ("fsdax", "devdax")

    @property
    def shared(self) -> bool:
        return bool(self.flags & VM.SHARED)

    @property
    def is_cow_mapping(self) -> bool:
        """is_cow_mapping(): private and may be written."""
        return (self.flags & (VM.SHARED | VM.MAYWRITE)) == VM.MAYWRITE

    def linear_page_index(self, addr: int, page_shift: int) -> int:
        return ((addr - self.start) >> page_shift) + self.pgoff

    def describe(self) -> str:
        perms = "".join(
            c if self.flags & f else "-"
            for c, f in (("r", VM.READ), ("w", VM.WRITE), ("x", VM.EXEC))
        )
        perms += "s" if self.shared else "p"
        what = self.file.name if self.file is not None else "[anon]"
        return f"{self.start:012x}-{self.end:012x} {perms} {what}"


class MM:
    """An mm_struct: VMAs, page tables and RSS counters of one task."""

    _ids = itertools.count(1)

    def __init__(self, ptrs_per_pte: int, mmap_base: int, mem: PhysMem) -> None:
        self.id = next(MM._ids)
        self.vmas: list[VMA] = []
        self._starts: list[int] = []
        self.pgtables = PageTables.empty(ptrs_per_pte, mem)
        self.pgtables.mm = self
        self.rss = [0, 0, 0, 0]
        self.mmap_base = mmap_base
        self.huge_zero_folio = False  # MMF_HUGE_ZERO_FOLIO
        self.has_pinned = False  # MMF_HAS_PINNED

    # ---- VMA tree ------------------------------------------------------------------------
    def _index(self, vma: VMA) -> int:
        """Position of vma in the address-ordered list (starts are unique)."""
        i = bisect.bisect_left(self._starts, vma.start)
        if i < len(self.vmas) and self.vmas[i] is vma:
            return i
        return self.vmas.index(vma)  # not reached while starts stay unique

    def find_vma(self, addr: int) -> VMA | None:
        """vma_lookup(): the VMA containing addr, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[VMA]:
        """VMAs intersecting [start, end), in address order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            if self.vmas[i].end > start:
                out.append(self.vmas[i])
            i += 1
        return out

    def insert_vma(self, vma: VMA) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def remove_vma(self, vma: VMA) -> None:
        i = self._index(vma)
        del self.vmas[i]
        del self._starts[i]

    def split_vma(self, vma: VMA, addr: int, page_shift: int) -> VMA:
        """__split_vma(): cut vma at addr; returns the upper part (the caller has checked
        may_split). Both halves share the anon_vma and the file."""
        upper = VMA(
            mm=self,
            start=addr,
            end=vma.end,
            flags=vma.flags,
            file=vma.file,
            pgoff=vma.pgoff + ((addr - vma.start) >> page_shift),
            anon_vma=vma.anon_vma,
            fork_child=vma.fork_child,
        )
        vma.end = addr
        i = self._index(vma) + 1
        self.vmas.insert(i, upper)
        self._starts.insert(i, addr)
        return upper

    def try_merge(self, vma: VMA, page_shift: int) -> VMA:
        """vma_merge_existing_range() in spirit: merge vma with adjacent compatible VMAs
        (same flags but the sticky ones, file, contiguous pgoff, compatible anon_vma). The
        sticky flags (VMA_STICKY_FLAGS, mm/vma.c 7.1.8: VM_MAYBE_GUARD) of every VMA merged
        stay on the result."""
        i = self._index(vma)
        if i + 1 < len(self.vmas):
            nxt = self.vmas[i + 1]
            if _mergeable(vma, nxt, page_shift):
                vma.end = nxt.end
                if vma.anon_vma is None:
                    vma.anon_vma, vma.fork_child = nxt.anon_vma, nxt.fork_child
                vma.flags |= nxt.flags & VM_STICKY
                del self.vmas[i + 1]
                del self._starts[i + 1]
        if i > 0:
            prev = self.vmas[i - 1]
            if _mergeable(prev, vma, page_shift):
                prev.end = vma.end
                if prev.anon_vma is None:
                    prev.anon_vma, prev.fork_child = vma.anon_vma, vma.fork_child
                prev.flags |= vma.flags & VM_STICKY
                del self.vmas[i]
                del self._starts[i]
                vma = prev
        return vma

    def free_gap(self, length: int, align: int, low: int, high: int) -> int | None:
        """Top-down search for a gap of ``length`` bytes aligned to ``align`` below ``high``
        (vm_unmapped_area with VM_UNMAPPED_AREA_TOPDOWN; align_offset 0)."""
        top = high
        for vma in reversed(self.vmas):
            if vma.start >= top:
                top = min(top, vma.start) if vma.end > top else top
                continue
            candidate = (top - length) & ~(align - 1)
            if candidate >= vma.end and candidate >= low:
                return candidate
            top = vma.start
        candidate = (top - length) & ~(align - 1)
        return candidate if candidate >= low else None


# VMA_STICKY_FLAGS, which VMA_IGNORE_MERGE_FLAGS leaves out of the merge test (mm/vma.c,
# include/linux/mm.h, 7.1.8; soft-dirty is not modelled).
VM_STICKY = VM.MAYBE_GUARD


def _adjacent_alike(a: VMA, b: VMA, page_shift: int, may_differ: int) -> bool:
    """a right below b, the same file at contiguous pgoffs (anonymous pgoffs are not
    compared), and flags equal but for ``may_differ``: the test merging and
    anon_vma_compatible() share."""
    if a.end != b.start or a.file is not b.file or (a.flags ^ b.flags) & ~may_differ:
        return False
    return a.file is None or a.pgoff + ((a.end - a.start) >> page_shift) == b.pgoff


def _mergeable(a: VMA, b: VMA, page_shift: int) -> bool:
    if not _adjacent_alike(a, b, page_shift, VM_STICKY):
        return False
    if a.file is not None and a.file.kind == "devdax":
        return False
    return _mergeable_anon_vma(a, b)


def _mergeable_anon_vma(a: VMA, b: VMA) -> bool:
    """is_mergeable_anon_vma() (mm/vma.c, 7.1.8), symmetric here: the same anon_vma, or
    neither has one, or only one has one and it is not a fork child (the kernel's cases 1
    and 2 refuse to dup or share a forked VMA's anon_vma). Left out: ``copied_from``, the
    source of an mremap copy, which has the copy's chain and so its fork_child."""
    if a.anon_vma is None and b.anon_vma is None:
        return True
    if a.anon_vma is None or b.anon_vma is None:
        holder = a if a.anon_vma is not None else b
        return not holder.fork_child
    return a.anon_vma is b.anon_vma


# VM_ACCESS_FLAGS (include/linux/mm.h): what anon_vma_compatible() lets differ.
VM_ACCESS = VM.READ | VM.WRITE | VM.EXEC


def _anon_vma_compatible(a: VMA, b: VMA, page_shift: int) -> bool:
    """anon_vma_compatible() (mm/vma.c, 7.1.8): a right below b, the same file, contiguous
    pgoff, flags equal but for access bits and the ones merging ignores (mempolicies are
    not modelled: equal). Anonymous pgoffs are not compared, as _mergeable() does not."""
    return _adjacent_alike(a, b, page_shift, VM_ACCESS | VM_STICKY)


def find_mergeable_anon_vma(vma: VMA) -> AnonVma | None:
    """find_mergeable_anon_vma() (mm/vma.c, 7.1.8): the anon_vma of the next VMA, else of the
    previous one, if that neighbour is anon_vma_compatible() with ``vma`` and its chain is
    singular (reusable_anon_vma: not a fork child)."""
    mm = vma.mm
    i = mm._index(vma)
    page_shift = mm.pgtables.mem.page_shift
    pairs: list[tuple[VMA, VMA, VMA]] = []
    if i + 1 < len(mm.vmas):
        pairs.append((mm.vmas[i + 1], vma, mm.vmas[i + 1]))
    if i > 0:
        pairs.append((mm.vmas[i - 1], mm.vmas[i - 1], vma))
    for old, a, b in pairs:
        if old.anon_vma is not None and not old.fork_child:
            if _anon_vma_compatible(a, b, page_shift):
                return old.anon_vma
    return None


def mm_counter_file(folio: Folio) -> int:
    """mm_counter_file() (include/linux/mm.h, 7.1.8): MM_SHMEMPAGES if swapbacked, else
    MM_FILEPAGES (the model has no swap entries, the other case of the kernel's)."""
    return 3 if folio.swapbacked else 0


def mm_counter(folio: Folio) -> int:
    """mm_counter() (include/linux/mm.h, 7.1.8): MM_ANONPAGES for anon folios, else
    mm_counter_file()."""
    return MM_ANONPAGES if folio.anon else mm_counter_file(folio)


def vma_page_prot_writable(vma: VMA) -> bool:
    """Whether vm_page_prot itself is writable: a shared writable mapping that does not want
    write notification (vma_wants_writenotify() in mm/mmap.c, 7.1.8, false: shmem,
    device-dax; soft-dirty and uffd-wp, which would also want it, are not modelled)."""
    if not (vma.flags & VM.SHARED and vma.flags & VM.WRITE):
        return False
    return vma.file is not None and not vma.file.page_mkwrite
