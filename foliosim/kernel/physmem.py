"""Physical memory: a sparse PFN space, folios and their counters, the page allocator.

Models struct folio (include/linux/mm_types.h) and the accessors of include/linux/mm.h in
Linux 7.1.8. Counters are kept as their *values* (the kernel stores mapcounts as value-1 and
its accessors add one back): ``entire_mapcount`` is folio_entire_mapcount(),
``large_mapcount`` is folio_large_mapcount(). ``nr_pages_mapped_raw`` is the raw
_nr_pages_mapped including the ENTIRELY_MAPPED marker (mm/internal.h).

Per-page state of a large folio (per-page mapcounts, PageAnonExclusive, "ever written") lives
in NumPy arrays that are allocated only when a page of the folio is mapped or set one by one,
so a PUD-mapped 1 GiB folio costs a few hundred bytes, not 262144 struct pages.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.kernel.smallpages import (
    PAGE_SMALL_ANON,
    SMALL_EXCLUSIVE,
    SMALL_WRITTEN,
    PfnStack,
    SmallAnonPages,
    lazy_zeros,
    pfn_span,
)

if TYPE_CHECKING:
    from foliosim.kernel.dax import DevPagemap
    from foliosim.kernel.pgtable import PteTable

# mm/internal.h
ENTIRELY_MAPPED = 0x800000
FOLIO_PAGES_MAPPED = ENTIRELY_MAPPED - 1
# include/linux/mm.h
GUP_PIN_COUNTING_BIAS = 1 << 10


# The "written" state of every written order-0 folio (shared; nobody may change it).
WRITTEN_ONE = np.ones(1, dtype=np.bool_)
WRITTEN_ONE.flags.writeable = False
# PageAnonExclusive of an order-0 folio, set and clear (shared the same way).
EXCLUSIVE_ONE = WRITTEN_ONE
NOT_EXCLUSIVE_ONE = np.zeros(1, dtype=np.bool_)
NOT_EXCLUSIVE_ONE.flags.writeable = False


class MmIdSlots:
    """folio->_mm_id[2], _mm_id_mapcount[2] and the FOLIO_MM_IDS_SHARED bit of _mm_ids
    (include/linux/mm_types.h, 7.1.8): the two mms a large folio's mappings are tracked for.
    Mapcounts are values (the kernel stores value-1: a free slot reads -1 there, 0 here);
    an id of 0 is MM_ID_DUMMY (a free slot; the model's mm ids start at 1 like MM_ID_MIN)."""

    __slots__ = ("ids", "mapcounts", "shared")

    def __init__(self) -> None:
        self.ids = [0, 0]
        self.mapcounts = [0, 0]
        self.shared = False


class Folio:
    """A folio: 2**order contiguous pages starting at ``pfn``, with the kernel's counters."""

    __slots__ = (
        "anon",
        "anon_exclusive",
        "deferred",
        "dirty",
        "entire_mapcount",
        "freed",
        "index",
        "kind",
        "large",
        "large_mapcount",
        "lru",
        "mapcount_small",
        "mapping",
        "mm_ids",
        "nr_pages",
        "nr_pages_mapped_raw",
        "order",
        "page_mapcounts",
        "partially_mapped",
        "pfn",
        "pgmap",
        "pincount",
        "pins_small",
        "readahead",
        "refcount",
        "referenced",
        "reserved",
        "share",
        "swapbacked",
        "written",
        "zero",
    )

    def __init__(self, pfn: int, order: int, kind: str = "ram") -> None:
        self.pfn = pfn
        self.order = order
        # Plain attributes, not properties: read on every rmap and check.
        self.nr_pages = 1 << order
        self.large = order > 0
        self.kind = kind  # "ram", "zero", "huge_zero", "devdax", "fsdax"
        self.refcount = 1
        self.mapcount_small = 0
        self.entire_mapcount = 0
        self.large_mapcount = 0
        # CONFIG_MM_ID slots of a large folio (MmIdSlots), made when it is first mapped.
        self.mm_ids: MmIdSlots | None = None
        self.nr_pages_mapped_raw = 0
        self.page_mapcounts: np.ndarray[Any, Any] | None = None
        self.pincount = 0
        self.pins_small = 0  # FOLL_PIN count of a small folio (refcount carries the bias)
        self.anon = False
        self.swapbacked = False
        self.dirty = False
        self.referenced = False
        self.lru = False
        self.zero = False
        self.reserved = False
        self.partially_mapped = False
        self.deferred = False
        self.freed = False
        self.anon_exclusive: np.ndarray[Any, Any] | None = None
        self.written: np.ndarray[Any, Any] | None = None
        self.mapping: object | None = None
        self.index = 0
        self.pgmap: DevPagemap | None = None
        self.share = 0
        self.readahead = False  # PG_readahead: reaching it triggers async readahead

    # ---- shape (order never changes: splits make new folios) ---------------------------

    @property
    def zone_device(self) -> bool:
        return self.pgmap is not None

    def contains(self, pfn: int) -> bool:
        return self.pfn <= pfn < self.pfn + self.nr_pages

    # ---- include/linux/mm.h accessors ----------------------------------------------------
    def folio_mapcount(self) -> int:
        """folio_mapcount(): small -> page mapcount; large -> folio_large_mapcount()."""
        return self.large_mapcount if self.large else self.mapcount_small

    def folio_mapped(self) -> bool:
        return self.folio_mapcount() >= 1

    def folio_nr_pages_mapped(self) -> int:
        """folio_nr_pages_mapped(): pages mapped by PTE, without the ENTIRELY_MAPPED marker."""
        return self.nr_pages_mapped_raw & FOLIO_PAGES_MAPPED

    def entirely_mapped(self) -> bool:
        return self.nr_pages_mapped_raw >= ENTIRELY_MAPPED

    def page_mapcount_of(self, i: int) -> int:
        """The page's own mapcount (page->_mapcount + 1), without the entire mapcount."""
        if not self.large:
            return self.mapcount_small
        if self.page_mapcounts is None:
            return 0
        return int(self.page_mapcounts[i])

    def precise_page_mapcount(self, i: int) -> int:
        """folio_precise_page_mapcount() (fs/proc/internal.h, 7.1.8)."""
        value = self.page_mapcount_of(i)
        if self.large:
            value += self.entire_mapcount
        return value

    def average_page_mapcount(self) -> int:
        """folio_average_page_mapcount() (fs/proc/internal.h, 7.1.8), used under NO_PAGE_MAPCOUNT.

        Small: the mapcount. Large: entire mapcount when all mappings are entire ones, else
        the PTE mappings averaged over the pages (rounded to nearest, at least 1) plus entire.
        """
        if not self.large:
            return self.mapcount_small
        mapcount = self.large_mapcount
        entire = self.entire_mapcount
        if mapcount <= entire:
            return entire
        mapcount -= entire
        avg = (mapcount + self.nr_pages // 2) // self.nr_pages
        return max(avg, 1) + entire

    def maybe_dma_pinned(self) -> bool:
        """folio_maybe_dma_pinned(): pincount for large folios, refcount >= bias for small."""
        if self.large:
            return self.pincount > 0
        return self.refcount >= GUP_PIN_COUNTING_BIAS

    # ---- lazily allocated per-page arrays -----------------------------------------------
    def mapcounts_array(self) -> np.ndarray[Any, Any]:
        if self.page_mapcounts is None:
            self.page_mapcounts = np.zeros(self.nr_pages, dtype=np.int32)
        return self.page_mapcounts

    def set_exclusive(self, value: bool, first: int = 0, nr: int = 1) -> None:
        """Set or clear PageAnonExclusive on pages [first, first+nr). Order-0 folios point at
        one of two shared read-only arrays instead of owning one."""
        if not self.large:
            self.anon_exclusive = EXCLUSIVE_ONE if value else NOT_EXCLUSIVE_ONE
            return
        if self.anon_exclusive is None:
            if not value:
                return
            self.anon_exclusive = np.zeros(self.nr_pages, dtype=np.bool_)
        self.anon_exclusive[first : first + nr] = value

    def mark_written(self, first: int = 0, nr: int = 1) -> None:
        """Note that the program stored into pages [first, first+nr) (never undone: a page
        keeps its data until freed). Order-0 folios share one read-only [True] array."""
        if not self.large:
            self.written = WRITTEN_ONE
            return
        if self.written is None:
            self.written = np.zeros(self.nr_pages, dtype=np.bool_)
        self.written[first : first + nr] = True

    def mark_written_mask_at(self, first: int, mask: np.ndarray[Any, Any]) -> None:
        """Pages first.. of this folio hold what the pages ``mask`` marks (a collapse, or a
        split piece taking over its part of the old folio)."""
        if not mask.any():
            return
        if not self.large:
            self.written = WRITTEN_ONE
            return
        if self.written is None:
            self.written = np.zeros(self.nr_pages, dtype=np.bool_)
        self.written[first : first + mask.shape[0]] |= mask

    def page_exclusive(self, i: int) -> bool:
        return bool(self.anon_exclusive is not None and self.anon_exclusive[i])

    def page_written(self, i: int) -> bool:
        return bool(self.written is not None and self.written[i])

    def release_page_state(self) -> None:
        """Drop per-page arrays that hold nothing any more (no PTE maps a page)."""
        if self.page_mapcounts is not None and not self.page_mapcounts.any():
            self.page_mapcounts = None

    def flag_names(self) -> list[str]:
        names = []
        for attr, name in (
            ("anon", "anon"),
            ("swapbacked", "swapbacked"),
            ("dirty", "dirty"),
            ("referenced", "referenced"),
            ("lru", "lru"),
            ("reserved", "reserved"),
            ("partially_mapped", "partially_mapped"),
            ("zero", "zero"),
        ):
            if getattr(self, attr):
                names.append(name)
        if self.large:
            names.insert(0, "head")
        return names

    def __repr__(self) -> str:
        return f"<folio pfn={self.pfn:#x} order={self.order} ref={self.refcount}>"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a batch creates many folios: they
    form no reference cycles, and a collection every few hundred allocations would walk
    every live folio again and again (the profile showed it costing as much as the work)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class OutOfMemory(Exception):
    """The allocator found no free block of the requested order."""


# PhysMem.state: one byte per RAM pfn, the model's view of what the memmap says of the page.
PAGE_FREE = 0  # in the allocator (or never handed out)
PAGE_BAD = 0x20  # | order: leaked by a bad free (free_pages_prepare found it still mapped)
PAGE_OBJECT = 0x40  # | order: part of the Folio object at its order-aligned head
PAGE_ORDER_MASK = 0x1F


class PhysMem:
    """RAM as a sparse PFN range with a simple buddy-style allocator, and the zero folios.

    Only allocated folios exist as objects; free RAM is a bump pointer plus free lists per
    order, so 64 GiB or 1 TiB of RAM costs nothing until it is used. ``state`` keeps one byte
    per RAM pfn (backed lazily by the OS: smallpages.lazy_zeros), so a page-table
    entry can hold a pfn and page_folio() finds its folio without a search: the byte gives
    the order of the folio holding the page, and folios are naturally aligned.
    """

    def __init__(self, ram_pages: int, pmd_order: int, page_shift: int = 12) -> None:
        self.ram_pages = ram_pages
        self.page_shift = page_shift
        self.pmd_shift = page_shift + pmd_order
        self.used_pages = 0
        self._bump = 0
        self._free: dict[int, Any] = {0: PfnStack()}  # order -> list[int]; order 0: PfnStack
        self.folios: dict[int, Folio] = {}
        # One byte more than RAM, always PAGE_FREE: np.take(..., mode="clip") of any pfn past
        # RAM (device memory) lands there.
        self.state = lazy_zeros(ram_pages + 1, np.uint8)
        self._state = memoryview(self.state)  # type: ignore[arg-type]  # one byte read or written without NumPy
        # Folios leaked by a bad free, by head pfn; and stand-ins for free pages that a
        # page-table entry still points at (a use-after-free the invariants report).
        self.bad_pages: dict[int, Folio] = {}
        self.ghosts: dict[int, Folio] = {}
        # Order-0 anonymous pages held as arrays (smallpages.py), and how a page that turns
        # into an object without a page-table slot to read its index from finds it.
        self.small = SmallAnonPages(ram_pages)
        self.index_of_unplaced: Callable[[int], int] | None = None
        # The shared zero page sits at a fixed pfn; the huge zero folio is allocated lazily.
        self.zero_folio = self._make_zero()
        self.huge_zero_folio: Folio | None = None
        self.huge_zero_refcount = 0
        self.pmd_order = pmd_order
        self.deferred_split_queue: OrderedDict[int, Folio] = OrderedDict()
        self.device_regions: list[tuple[int, int, DevPagemap]] = []

    def _make_zero(self) -> Folio:
        folio = Folio(self._take(0), 0, kind="zero")
        folio.zero = True
        folio.reserved = True
        self._register(folio)
        return folio

    # ---- allocation ----------------------------------------------------------------------
    def _take(self, order: int) -> int:
        nr = 1 << order
        free = self._free.get(order)
        if free:
            return int(free.pop())
        if self.used_pages + nr > self.ram_pages:
            raise OutOfMemory(order)
        start = (self._bump + nr - 1) & ~(nr - 1)
        if start + nr > self.ram_pages:
            raise OutOfMemory(order)
        # Skipped alignment padding goes to the free lists of small orders.
        gap = start - self._bump
        pfn = self._bump
        while gap:
            o = (pfn & -pfn).bit_length() - 1 if pfn else order
            while (1 << o) > gap:
                o -= 1
            self._free.setdefault(o, []).append(pfn)
            pfn += 1 << o
            gap -= 1 << o
        self._bump = start + nr
        return start

    def _register(self, folio: Folio) -> None:
        pfn = folio.pfn
        self.folios[pfn] = folio
        if folio.large:
            self.state[pfn : pfn + folio.nr_pages] = PAGE_OBJECT | folio.order
        else:
            self._state[pfn] = PAGE_OBJECT
        if self.ghosts:
            self._drop_ghosts(pfn, folio.nr_pages)

    def _drop_ghosts(self, pfn: int, nr: int) -> None:
        for p in [p for p in self.ghosts if pfn <= p < pfn + nr]:
            del self.ghosts[p]

    def alloc_folio(self, order: int) -> Folio:
        """folio_alloc(): a new folio with refcount 1, or OutOfMemory."""
        pfn = self._take(order)
        folio = Folio(pfn, order)
        self.used_pages += folio.nr_pages
        self._register(folio)
        return folio

    def alloc_pages_bulk(self, nr: int) -> list[Folio]:
        """alloc_pages_bulk() in spirit: up to ``nr`` order-0 folios, exactly as that many
        alloc_folio(0) calls would hand them out (free list first, then the bump pointer),
        stopping at the first failure."""
        with gc_paused():
            return self._alloc_pages_bulk(nr)

    def _alloc_pages_bulk(self, nr: int) -> list[Folio]:
        out: list[Folio] = []
        free = self._free.get(0)
        folios = self.folios
        state = self._state
        while free and len(out) < nr and self.used_pages < self.ram_pages:
            folio = Folio(free.pop(), 0)
            self.used_pages += 1
            folios[folio.pfn] = folio
            state[folio.pfn] = PAGE_OBJECT
            out.append(folio)
        room = min(nr - len(out), self.ram_pages - self.used_pages, self.ram_pages - self._bump)
        if room > 0:
            # No alignment padding for order 0: the bump pointer hands out consecutive pfns.
            start = self._bump
            for pfn in range(start, start + room):
                folio = Folio(pfn, 0)
                folios[pfn] = folio
                out.append(folio)
            self.state[start : start + room] = PAGE_OBJECT
            self._bump = start + room
            self.used_pages += room
        if out and self.ghosts:
            for folio in out:
                self.ghosts.pop(folio.pfn, None)
        return out

    def free_folio(self, folio: Folio) -> None:
        """Return a RAM folio to the allocator (free_unref_folios / __free_pages)."""
        self._unregister(folio)
        self.used_pages -= folio.nr_pages
        self._free.setdefault(folio.order, []).append(folio.pfn)

    def _unregister(self, folio: Folio, state: int = PAGE_FREE) -> None:
        pfn = folio.pfn
        if self.folios.get(pfn) is folio:
            del self.folios[pfn]
            if folio.large:
                self.state[pfn : pfn + folio.nr_pages] = state | (folio.order if state else 0)
            else:
                self._state[pfn] = state
        folio.freed = True
        self.deferred_split_queue.pop(pfn, None)
        folio.deferred = False

    def leak_folio(self, folio: Folio) -> None:
        """A bad free (bad_page() from free_pages_prepare with page checks on, as with
        init_on_alloc or CONFIG_DEBUG_VM): the folio is taken out of circulation, not
        returned to the allocator, so an entry still pointing at it keeps finding it."""
        self._unregister(folio, PAGE_BAD)
        self.bad_pages[folio.pfn] = folio

    def free_small_folios(self, folios: list[Folio]) -> None:
        """free_folio() for order-0 folios in bulk, in order (never on the deferred-split
        queue: only folios above order 1 go there)."""
        pop = self.folios.pop
        state = self._state
        for folio in folios:
            pop(folio.pfn, None)
            state[folio.pfn] = PAGE_FREE
            folio.freed = True
        self.used_pages -= len(folios)
        self._free.setdefault(0, []).extend([folio.pfn for folio in folios])

    def replace_with_pages(self, folio: Folio) -> list[Folio]:
        """Turn a large folio into order-0 folios (the memmap side of __split_unmapped_folio)."""
        self.folios.pop(folio.pfn, None)
        pages = []
        for i in range(folio.nr_pages):
            page = Folio(folio.pfn + i, 0, kind=folio.kind)
            self._register(page)
            pages.append(page)
        return pages

    # ---- lookup ------------------------------------------------------------------------
    def page_folio(self, pfn: int, table: PteTable | None = None, slot: int = 0) -> Folio:
        """page_folio(pfn_to_page(pfn)) for the pfn a page-table entry holds: the folio of
        a RAM or device page. A page held as arrays becomes a Folio object now (``table``
        and ``slot``: the entry it was read from, which gives its index). A free RAM page
        gives a freed stand-in folio (the entry is a use-after-free; the invariants report
        it), a leaked one the folio it belonged to."""
        if pfn < self.ram_pages:
            state = self._state[pfn]
            if state & PAGE_OBJECT:
                return self.folios[pfn & -(1 << (state & PAGE_ORDER_MASK))]
            if state & PAGE_SMALL_ANON:
                return self.materialize(pfn, self._index_at(pfn, table, slot))
            if state & PAGE_BAD:
                return self.bad_pages[pfn & -(1 << (state & PAGE_ORDER_MASK))]
            return self.ghost(pfn)
        for region_start, region_end, pgmap in self.device_regions:
            if region_start <= pfn < region_end:
                return pgmap.folio_of(pfn)
        return self.ghost(pfn)

    def ghost(self, pfn: int) -> Folio:
        folio = self.ghosts.get(pfn)
        if folio is None:
            folio = self.ghosts[pfn] = Folio(pfn, 0)
            folio.refcount = 0
            folio.freed = True
        return folio

    def lookup(self, pfn: int) -> Folio | None:
        """page_folio(pfn_to_page(pfn)) for an allocated page, else None; read-only: a page
        held as arrays is given as a view (/proc/kpage*, queries by pfn)."""
        for region_start, region_end, pgmap in self.device_regions:
            if region_start <= pfn < region_end:
                return pgmap.folio_of(pfn)
        if 0 <= pfn < self.ram_pages:
            state = self._state[pfn]
            if state & PAGE_SMALL_ANON:
                return self.small_view(pfn, self._index_at(pfn, None, 0))
            if state & PAGE_OBJECT:
                return self.page_folio(pfn)
        return None

    # ---- order-0 anonymous pages held as arrays (smallpages.py) --------------------------
    def alloc_small_anon(
        self, nr: int, anon_vma: object, flags: int
    ) -> np.ndarray[Any, Any] | None:
        """Up to ``nr`` order-0 pages for anonymous memory, held as arrays: each mapped once
        (mapcount and refcount 1), of ``anon_vma``, with ``flags`` (SMALL_EXCLUSIVE,
        SMALL_WRITTEN). The pfns are those as many alloc_folio(0) calls would hand out.
        None when no anon_vma index is left (the caller makes Folio objects instead)."""
        index = self.small.anon_vma_index(anon_vma)
        if index is None:
            return None
        nr = min(nr, self.ram_pages - self.used_pages)
        pfns: np.ndarray[Any, Any] = self._free[0].pop_many(nr)
        room = min(nr - pfns.shape[0], self.ram_pages - self._bump)
        if room > 0:
            bump = np.arange(self._bump, self._bump + room, dtype=np.int64)
            pfns = bump if not pfns.shape[0] else np.concatenate((pfns, bump))
            self._bump += room
        n = int(pfns.shape[0])
        if not n:
            return pfns
        small = self.small
        if room == n:  # all from the bump pointer: one slice each
            lo, hi = int(pfns[0]), int(pfns[0]) + n
            self.state[lo:hi] = PAGE_SMALL_ANON | flags
            small.mapcount[lo:hi] = 1
            small.anon_vma[lo:hi] = index
        else:
            self.state[pfns] = PAGE_SMALL_ANON | flags
            small.mapcount[pfns] = 1
            small.anon_vma[pfns] = index
        self.used_pages += n
        small.live += n
        if self.ghosts:
            self._drop_ghosts(int(pfns.min()), int(pfns.max()) - int(pfns.min()) + 1)
        return pfns

    def order0_available(self) -> int:
        """How many order-0 pages alloc_small_anon() could hand out now (free list and what
        the bump pointer has left; free blocks of higher orders are not split for it)."""
        return min(
            len(self._free[0]) + self.ram_pages - self._bump, self.ram_pages - self.used_pages
        )

    def free_small_anon(self, pfns: np.ndarray[Any, Any]) -> None:
        """Give pages held as arrays back to the allocator, in this order."""
        n = int(pfns.shape[0])
        if not n:
            return
        span = pfn_span(pfns)
        if span is not None:  # distinct pfns filling a range (a freed block): one slice
            self.state[span[0] : span[1]] = PAGE_FREE
        else:
            self.state[pfns] = PAGE_FREE  # (mapcount is 0; the anon_vma byte is set anew)
        self.used_pages -= n
        self.small.live -= n
        self._free[0].extend(pfns)

    def small_anon_mask(self, pfns: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Which of these pfns (of present entries) are pages held as arrays."""
        if not self.small.live:
            return np.zeros(pfns.shape[0], dtype=np.bool_)
        mask: np.ndarray[Any, Any] = (np.take(self.state, pfns, mode="clip") & PAGE_SMALL_ANON) != 0
        return mask

    def is_small_anon(self, pfn: int) -> bool:
        return pfn < self.ram_pages and bool(self._state[pfn] & PAGE_SMALL_ANON)

    def small_view(self, pfn: int, index: int = 0) -> Folio:
        """A Folio with the state of a page held as arrays, for reading only (a dump, a
        check's diagnosis): the page stays held as arrays, the object is no one's record."""
        state = self._state[pfn]
        small = self.small
        folio = Folio(pfn, 0)
        count = small._mapcount[pfn]
        folio.refcount = count
        folio.mapcount_small = count
        folio.anon = folio.swapbacked = folio.lru = True
        folio.anon_exclusive = EXCLUSIVE_ONE if state & SMALL_EXCLUSIVE else NOT_EXCLUSIVE_ONE
        if state & SMALL_WRITTEN:
            folio.written = WRITTEN_ONE
        folio.mapping = small.anon_vmas[small._anon_vma[pfn]]
        folio.index = index
        return folio

    def materialize(self, pfn: int, index: int) -> Folio:
        """Turn a page held as arrays into the Folio object that records it from now on."""
        small = self.small
        folio = self.small_view(pfn, index)
        small._mapcount[pfn] = 0
        small._anon_vma[pfn] = 0
        small.live -= 1
        self.folios[pfn] = folio
        self._state[pfn] = PAGE_OBJECT
        for listener in small.listeners:
            listener(folio)
        return folio

    def _index_at(self, pfn: int, table: PteTable | None, slot: int) -> int:
        """The anon folio index of a page about to become an object: linear_page_index() of
        the VMA that maps it at the entry it was read from."""
        if table is not None and table.owner is not None:
            addr = (table.pmd_no << self.pmd_shift) + (slot << self.page_shift)
            vma = table.owner.find_vma(addr)
            if vma is not None:
                return int(vma.linear_page_index(addr, self.page_shift))
            return addr >> self.page_shift
        if self.index_of_unplaced is not None:
            return self.index_of_unplaced(pfn)
        return 0

    def all_folios(self) -> list[Folio]:
        folios = list(self.folios.values())
        for _, _, pgmap in self.device_regions:
            folios.extend(pgmap.live_folios())
        return folios

    # ---- huge zero folio (mm/huge_memory.c, 7.1.8) ---------------------------------------
    def get_huge_zero_folio(self) -> tuple[Folio, bool]:
        """get_huge_zero_folio(): allocate on first use; the refcount starts at 2 (caller +
        the shrinker's). Returns the folio and whether it was newly allocated."""
        if self.huge_zero_folio is not None and self.huge_zero_refcount > 0:
            self.huge_zero_refcount += 1
            return self.huge_zero_folio, False
        folio = self.alloc_folio(self.pmd_order)
        folio.kind = "huge_zero"
        folio.zero = True
        self.huge_zero_folio = folio
        self.huge_zero_refcount = 2
        return folio, True

    def put_huge_zero_folio(self) -> None:
        """put_huge_zero_folio(): the shrinker frees it only at refcount 1, never here."""
        if self.huge_zero_refcount > 1:
            self.huge_zero_refcount -= 1
