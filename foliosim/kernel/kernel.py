"""The modelled machine: configuration, physical memory, tasks, files, counters and reports.

Pure model: no printing, no I/O. Tools (scenario runner, checker, renderers) read its state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.config import KernelConfig
from foliosim.kernel.files import BackingFile
from foliosim.kernel.mm import MM
from foliosim.kernel.ownership import Ownership
from foliosim.kernel.physmem import Folio, OutOfMemory, PhysMem
from foliosim.kernel.reports import ReportLog, VmStat
from foliosim.kernel.walk import Mapping, MappingRef, file_mappings_of, lookup, mappings_of
from foliosim.variants import Variant

if TYPE_CHECKING:
    from foliosim.kernel.dax import DaxDevice


@dataclass
class Policy:
    """Runtime knobs of /sys/kernel/mm/transparent_hugepage (defaults of 7.1.8)."""

    enabled: str = "madvise"  # PMD size: always | madvise | never
    mthp: dict[int, str] = field(default_factory=dict)  # order -> always|madvise|inherit|never
    use_zero_page: bool = True
    split_underused_thp: bool = True
    max_ptes_none: int = 511  # khugepaged/max_ptes_none (HPAGE_PMD_NR - 1)
    fault_around_bytes: int = 65536
    read_ahead_pages: int = 32  # read_ahead_kb=128


@dataclass(eq=False)
class Task:
    name: str
    pid: int
    mm: MM
    errno: str | None = None
    signal: str | None = None
    exited: bool = False


class _Untracked(set[Folio]):
    """A set that keeps nothing: Kernel.touched when no incremental checker listens."""

    def add(self, folio: Folio) -> None:
        pass

    def update(self, *folios: Iterable[Folio]) -> None:
        pass


UNTRACKED = _Untracked()


class Kernel:
    """Everything the model knows about one machine."""

    def __init__(self, config: KernelConfig, variant: Variant) -> None:
        self.config = config
        self.variant = variant
        geo = config.geometry
        self.geometry = geo
        self.page_shift = geo.page_shift
        self.page_size = geo.page_size
        self.policy = Policy(enabled=config.thp, mthp=dict(config.mthp))
        if not config.enabled("TRANSPARENT_HUGEPAGE"):
            self.policy.enabled = "never"
        self.physmem = PhysMem(config.memory_bytes >> geo.page_shift, geo.pmd_order, geo.page_shift)
        self.vmstat = VmStat()
        self.reports = ReportLog(debug_vm=config.enabled("DEBUG_VM"))
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, BackingFile] = {}
        self.devices: dict[str, DaxDevice] = {}
        self._pids = itertools.count(1000)
        self.trace_log: list[str] | None = None
        # Folios whose counters changed since the incremental checker last looked; nothing is
        # kept until a checker asks for it (IncrementalChecker installs a real set), so runs
        # without one do not hold on to every folio they ever touched.
        self.touched: set[Folio] = UNTRACKED
        self.global_errno: str | None = None
        # Whether the current syscall holds mmap_lock (false for per-VMA-locked paths).
        self.mmap_locked = True
        self.ownership = Ownership(self)
        self._device_pfn = _round_up(self.physmem.ram_pages, 1 << geo.pud_order)
        self.dax_waiters: list[object] = []
        self.dax_idled: list[Folio] = []  # fs-dax folios that went idle, for the waiters
        # Batched order-0 anonymous faults keep their pages as arrays (smallpages.py), except
        # under mutants whose broken zap or fork those array paths cannot express.
        self.small_anon = config.small_pages == "arrays" and not (
            variant.zap_pte_forgets_rmap or variant.fork_pte_skips_ref
        )
        # Pages held as arrays whose counters a fast path changed, while an incremental
        # checker listens (it installs a list; see ``touched``).
        self.touched_small: list[np.ndarray[Any, Any]] | None = None
        self.physmem.index_of_unplaced = self._small_anon_index

    # ---- tracing ---------------------------------------------------------------------------
    def enter(self, function: str) -> None:
        """Record that the model entered the kernel function of that name (--trace)."""
        if self.trace_log is not None:
            self.trace_log.append(function)

    # ---- tasks -----------------------------------------------------------------------------
    def mmap_base(self) -> int:
        """mmap_base() of arch/x86/mm/mmap.c without randomisation: the default mmap window
        (DEFAULT_MAP_WINDOW, below 47 bits on 4- and 5-level x86-64 alike) minus a gap of the
        stack rlimit (8 MiB) plus the stack guard gap (1 MiB), clamped to at least 128 MiB:
        0x7ffff7fff000."""
        gap = max((8 << 20) + (1 << 20), 128 << 20)
        window = self.geometry.task_size
        if self.geometry.arch == "x86_64":
            window = (1 << 47) - self.page_size
        return (window - gap) & ~(self.page_size - 1)

    def new_mm(self) -> MM:
        return MM(self.geometry.ptrs_per_pte, self.mmap_base(), self.physmem)

    def new_task(self, name: str, mm: MM | None = None) -> Task:
        task = Task(name=name, pid=next(self._pids), mm=mm or self.new_mm())
        self.tasks[name] = task
        return task

    # ---- folio lifetime --------------------------------------------------------------------
    def alloc_folio(self, order: int) -> Folio | None:
        """folio_alloc()/vma_alloc_folio(): None when memory is exhausted."""
        try:
            folio = self.physmem.alloc_folio(order)
        except OutOfMemory:
            return None
        self.touched.add(folio)
        return folio

    def folio_get(self, folio: Folio, n: int = 1) -> None:
        self.touched.add(folio)
        folio.refcount += n

    def folio_put(self, folio: Folio, n: int = 1) -> None:
        """folio_put()/folio_put_refs() (include/linux/mm.h, 7.1.8): at zero the folio is
        freed; ZONE_DEVICE folios go to free_zone_device_folio() instead."""
        self.touched.add(folio)
        if folio.zero:
            return
        if folio.refcount < n:
            self.reports.vm_bug("folio_put", f"refcount underflow of {folio!r}")
            folio.refcount = 0
        else:
            folio.refcount -= n
        if folio.refcount == 0:
            if folio.pgmap is not None:
                folio.pgmap.free_zone_device_folio(self, folio)
            else:
                self._free_folio(folio)
        elif folio.refcount == 1 and folio.kind == "fsdax" and folio.pgmap is not None:
            if folio.pgmap.idle_refcount == 1:
                # Before the series fs-dax pages idle at 1: __put_devmap_managed_page_refs()
                # (mm/memremap.c, 6.1) wakes the layout-break waiters when a put reaches 1.
                self.dax_wakeup(folio)

    def folios_put_refs(self, folios: list[Folio | np.ndarray[Any, Any]], refs: list[int]) -> None:
        """folios_put_refs() (mm/swap.c, 7.1.8): drop refs[i] references of folios[i], in
        order, as the mmu_gather frees its batch; the same as folio_put() on each, with the
        common cases inline: a RAM folio that does not reach zero, and order-0 RAM folios
        that do, which are freed together at the end (free_unref_folios) in batch order.
        An array in the batch is pages held as arrays (smallpages.py) that lost their last
        reference with their last mapping: they go to the free list in that order too
        (free_pages_prepare has nothing to find: their mapcount is zero)."""
        freed_small: list[Folio | np.ndarray[Any, Any]] = []
        for folio, n in zip(folios, refs, strict=True):
            if isinstance(folio, np.ndarray):
                freed_small.append(folio)
                continue
            self.touched.add(folio)
            count = folio.refcount
            if folio.zero or folio.pgmap is not None or count < n:
                self.folio_put(folio, n)
            elif count > n:
                folio.refcount = count - n
            else:
                folio.refcount = 0
                if folio.large:
                    self._free_folio(folio)
                else:
                    freed_small.append(folio)
        good: list[Folio] = []
        for item in freed_small:
            if isinstance(item, np.ndarray):
                if good:
                    self.physmem.free_small_folios(good)
                    good = []
                self.physmem.free_small_anon(item)
            elif self._free_pages_prepare(item):
                good.append(item)
            else:
                self.physmem.leak_folio(item)
        if good:
            self.physmem.free_small_folios(good)

    def _free_folio(self, folio: Folio) -> None:
        """__folio_put(): the checks of free_pages_prepare, then free (or leak a bad page)."""
        if self._free_pages_prepare(folio):
            self.physmem.free_folio(folio)
        else:
            self.physmem.leak_folio(folio)

    def _free_pages_prepare(self, folio: Folio) -> bool:
        """free_pages_prepare() / free_tail_page_prepare() (mm/page_alloc.c, 7.1.8): a folio
        freed with a mapcount that is not zero (either sign), or an MM-id slot still holding
        mappings, is a bad page: reported, and False, so the caller leaks it instead of
        freeing it (bad_page() with page checks on, as init_on_alloc or CONFIG_DEBUG_VM turn
        them on). The folio stops being anonymous."""
        good = True
        if folio.folio_mapcount():
            self.reports.add("BUG", "free_pages_prepare", f"Bad page state: {folio!r} still mapped")
            good = False
        elif folio.mm_ids is not None:
            for i in (0, 1):  # with CONFIG_MM_ID
                if folio.mm_ids.mapcounts[i]:
                    self.reports.add(
                        "BUG", "free_pages_prepare", f"Bad page state: nonzero mm mapcount {i}"
                    )
                    good = False
                    break
        # The mTHP counter MTHP_STAT_NR_ANON is maintained at free; no vmstat item here.
        folio.anon = False
        return good

    def add_file(self, file: BackingFile) -> None:
        self.files[file.name] = file

    # ---- ZONE_DEVICE ---------------------------------------------------------------------
    def next_device_pfn(self, nr_pages: int) -> int:
        """Place a device's PFN range after RAM and earlier devices, PUD-aligned."""
        start = self._device_pfn
        self._device_pfn = _round_up(start + nr_pages, 1 << self.geometry.pud_order)
        return start

    def dax_wakeup(self, folio: Folio) -> None:
        """wake_up_var() from free_zone_device_folio() (mm/memremap.c, 7.1.8): a waiting
        layout break may go on.

        The waiter is another task: it runs once the statement that made the page idle is
        over (run_dax_waiters), not inside the put that woke it."""
        if self.dax_waiters:
            self.dax_idled.append(folio)

    def run_dax_waiters(self) -> None:
        """Layout breaks waiting on a page that went idle take their next turn (see
        FsdaxFile.wake)."""
        if not self.dax_idled:
            return
        idled, self.dax_idled = self.dax_idled, []
        for waiter in list(self.dax_waiters):
            waiter.wake(self, idled)  # type: ignore[attr-defined]

    # ---- rmap walk -------------------------------------------------------------------------
    def live_mms(self) -> list[MM]:
        seen: dict[int, MM] = {}
        for task in self.tasks.values():
            if not task.exited:
                seen.setdefault(task.mm.id, task.mm)
        return list(seen.values())

    def rmap_walk(self, folio: Folio) -> list[MappingRef]:
        """Every page-table entry mapping the folio: a page-cache or shmem folio's through
        its file's VMAs (walk.file_mappings_of), others by scanning (walk.mappings_of)."""
        geo = self.geometry
        if not folio.anon and folio.pgmap is None and isinstance(folio.mapping, BackingFile):
            return file_mappings_of(self.live_mms(), folio, geo.pmd_shift, geo.page_shift)
        return mappings_of(self.live_mms(), folio, geo.pmd_shift, geo.pud_shift, geo.page_shift)

    def _small_anon_index(self, pfn: int) -> int:
        """The folio index of a page held as arrays found by pfn alone: from the first
        entry that maps it (what the kernel stored in folio->index when it was faulted)."""
        for mm in self.live_mms():
            for table in mm.pgtables.pte_tables.values():
                slots = np.flatnonzero(table.pfn == pfn)
                if slots.size:
                    return self.physmem._index_at(pfn, table, int(slots[0]))
        return 0

    def lookup(self, mm: MM, addr: int, peek: bool = False) -> Mapping | None:
        """What maps addr in mm (walk.lookup); ``peek`` for readers that change nothing."""
        geo = self.geometry
        return lookup(mm, addr, geo.page_shift, geo.pmd_shift, geo.pud_shift, peek)


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align
