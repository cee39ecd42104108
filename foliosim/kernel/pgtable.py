"""Sparse page tables with present leaves at PTE, PMD and PUD level.

A PUD slot holds a huge leaf or (implicitly) a PMD table; a PMD slot holds a huge leaf or a
PTE table. PTE tables are NumPy arrays over one page-table page (PTRS_PER_PTE entries): the
pfn each entry maps (-1: pte_none or a marker) and the entry bits. Whole-table operations
work on slices, not a Python loop per page.

Entries hold pfns, as real PTEs do: PhysMem.page_folio(pfn) is what the kernel's
vm_normal_page()/page_folio() would find, and pfn - folio.pfn the page inside the folio.
``special`` marks entries the kernel makes with pte_mkspecial/pmd_mkspecial/pud_mkspecial
(zero pages, pfnmap and legacy devmap DAX): vm_normal_page() returns NULL for them, so they
hold no reference or mapcount.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foliosim.kernel.physmem import PAGE_OBJECT, PAGE_ORDER_MASK, Folio, PhysMem

# PTE bits (the model's own encoding).
PTE_WRITE = 1
PTE_DIRTY = 2
PTE_YOUNG = 4
PTE_SPECIAL = 8
PTE_MARKER_GUARD = 16  # a PTE_MARKER_GUARD swap-style marker (MADV_GUARD_INSTALL)
PTE_SOFT_DIRTY = 32
# Masks that clear one bit, as uint8-safe values for NumPy arrays.
CLEAR_WRITE = 0xFF ^ PTE_WRITE
CLEAR_YOUNG = 0xFF ^ PTE_YOUNG
CLEAR_WRITE_YOUNG = 0xFF ^ (PTE_WRITE | PTE_YOUNG)
NO_PAGE = -1  # PteTable.pfn of an entry that maps no page (none, or a marker)
_NO_SLOTS: np.ndarray[Any, Any] = np.empty(0, dtype=np.int64)


class _AllSlots(dict[int, np.ndarray[Any, Any]]):
    """arange(n) for each table size, made once and read-only."""

    def __missing__(self, n: int) -> np.ndarray[Any, Any]:
        slots = np.arange(n, dtype=np.int64)
        slots.flags.writeable = False
        self[n] = slots
        return slots


_ALL_SLOTS = _AllSlots()


@dataclass(slots=True)
class Leaf:
    """A present huge leaf at PMD or PUD level (pmd_trans_huge / pud_trans_huge)."""

    folio: Folio
    write: bool = False
    dirty: bool = False
    young: bool = True
    special: bool = False
    # A page table deposited with this PMD (pgtable_trans_huge_deposit): anon THP and the
    # anonymous huge zero PMD on x86-64; never for PUDs.
    deposited: bool = False


# From this many present entries on, runs() finds folio heads with NumPy (see there).
_HEADS_FROM = 32


def run_lengths(starts: np.ndarray[Any, Any], total: int) -> list[int]:
    """Lengths of the runs that begin at ``starts`` (ascending) in a sequence of ``total``."""
    bounds: list[int] = starts.tolist()
    bounds.append(total)
    return [b - a for a, b in itertools.pairwise(bounds)]


class PteTable:
    """One page-table page of PTEs: per slot the pfn the entry maps (-1: no page) and its
    bits. page_folio() of the pfn (PhysMem.page_folio) gives the folio, pfn - folio.pfn the
    page inside it, as vm_normal_page() + page_folio() do in the kernel."""

    __slots__ = (
        "bits",
        "block",
        "changed",
        "hi",
        "lo",
        "mem",
        "owner",
        "pfn",
        "pmd_no",
        "present",
        "row",
        "version",
    )

    def __init__(
        self,
        n: int,
        mem: PhysMem,
        changed: set[PteTable] | None = None,
        pmd_no: int = -1,
        owner: Any = None,
    ) -> None:
        self.pmd_no = pmd_no
        self.mem = mem
        self.owner = owner  # the MM whose tables these are (for the VMA of an entry)
        # Bumped by every change of which page an entry maps, and the table noted in its
        # mm's ``changed`` set: the incremental invariant checker re-reads only those.
        self.version = 0
        self.changed = changed
        # The slots [lo, hi) changed since the checker last looked (it resets them).
        self.lo = n
        self.hi = 0
        self.pfn: np.ndarray[Any, Any] = np.full(n, NO_PAGE, dtype=np.int64)
        self.bits: np.ndarray[Any, Any] = np.zeros(n, dtype=np.uint8)
        self.present = 0
        # Tables made together (kernel/pte_batch.py) keep their arrays as rows ``row`` of
        # one pair of 2-D arrays, ``block`` = (pfns, bits), so they can be read as one.
        self.block: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None
        self.row = -1

    @classmethod
    def from_arrays(
        cls,
        mem: PhysMem,
        changed: set[PteTable] | None,
        pmd_no: int,
        owner: Any,
        pfn: np.ndarray[Any, Any],
        bits: np.ndarray[Any, Any],
        present: int,
        block: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None,
        row: int = -1,
    ) -> PteTable:
        """A table over arrays already filled in (row ``row`` of ``block``, tables made at
        once: kernel/pte_batch.py), noted as changed in every slot."""
        table = cls.__new__(cls)
        table.pmd_no = pmd_no
        table.mem = mem
        table.owner = owner
        table.version = 0
        table.changed = changed
        table.lo = table.hi = 0
        table.pfn = pfn
        table.bits = bits
        table.present = present
        table.block = block
        table.row = row
        table.bump()
        return table

    @classmethod
    def rows_of_block(
        cls,
        mem: PhysMem,
        pgt: PageTables,
        pmd_nos: list[int],
        block: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    ) -> None:
        """from_arrays() for every row of ``block``, each full (every slot maps a page),
        entered into ``pgt`` at the PMD numbers ``pmd_nos`` (one per row, in row order): the
        tables made by one batch fault or fork (kernel/pte_batch.py) without a Python call per
        table, which is most of that path's cost for 512 tables."""
        pfns, bits = block
        nr = int(pfns.shape[1])
        changed, owner, new = pgt.changed, pgt.mm, cls.__new__
        made = []
        for row, (pmd_no, pfn_row, bits_row) in enumerate(zip(pmd_nos, pfns, bits, strict=True)):
            table = new(cls)
            table.pmd_no = pmd_no
            table.mem = mem
            table.owner = owner
            table.version = 1  # one bump(): every slot changed
            table.changed = changed
            table.lo = 0
            table.hi = nr
            table.pfn = pfn_row
            table.bits = bits_row
            table.present = nr
            table.block = block
            table.row = row
            made.append(table)
        pgt.pte_tables.update(zip(pmd_nos, made, strict=True))
        changed.update(made)

    @property
    def nr_slots(self) -> int:
        return int(self.pfn.shape[0])

    def bump(self, lo: int = 0, hi: int = -1) -> None:
        """Note a change of the entries in slots [lo, hi) (default: all; see ``version``)."""
        self.version += 1
        if lo < self.lo:
            self.lo = lo
        if hi < 0:
            hi = self.pfn.shape[0]
        if hi > self.hi:
            self.hi = hi
        if self.changed is not None:
            self.changed.add(self)

    def all_none(self) -> bool:
        """Every entry is pte_none: no page and no marker (a guard marker is an entry). Only
        then may the table go and a huge leaf take its PMD (the model frees such tables where
        the kernel would reclaim or never have allocated them)."""
        return not self.present and not self.bits.any()

    def is_none(self, i: int) -> bool:
        return self.pfn[i] < 0 and not self.bits[i] & PTE_MARKER_GUARD

    def has_page(self, i: int) -> bool:
        """A present entry (pte_present): it maps a page."""
        return bool(self.pfn[i] >= 0)

    def folio_at(self, i: int) -> Folio | None:
        """The folio the entry in slot i maps, or None (pte_none or a marker)."""
        pfn = int(self.pfn[i])
        return None if pfn < 0 else self.mem.page_folio(pfn, self, i)

    def entry(self, i: int, peek: bool = False) -> tuple[Folio, int] | None:
        """(folio, page index inside it) of the entry in slot i, or None. ``peek``: for a
        reader that changes nothing, a page held as arrays is given as a read-only view."""
        pfn = int(self.pfn[i])
        if pfn < 0:
            return None
        folio = self.entry_folio(pfn, i, peek)
        return folio, pfn - folio.pfn

    def entry_folio(self, pfn: int, slot: int, peek: bool = False) -> Folio:
        """The folio of the page ``pfn`` in ``slot``; ``peek``: a read-only view of a page
        held as arrays (for readers that change nothing) instead of making it an object."""
        mem = self.mem
        if peek and mem.is_small_anon(pfn):
            return mem.small_view(pfn, mem._index_at(pfn, self, slot))
        return mem.page_folio(pfn, self, slot)

    def present_mask(self, lo: int = 0, hi: int | None = None) -> np.ndarray[Any, Any]:
        return self.pfn[lo:hi] >= 0

    def slots_of(self, folio: Folio, lo: int = 0, hi: int | None = None) -> np.ndarray[Any, Any]:
        """Slots in [lo, hi) whose entry maps a page of ``folio`` (ascending, absolute)."""
        window = self.pfn[lo:hi]
        if folio.nr_pages == 1:
            return np.flatnonzero(window == folio.pfn) + lo
        return np.flatnonzero((window >= folio.pfn) & (window < folio.pfn + folio.nr_pages)) + lo

    def set(self, i: int, folio: Folio, index: int, bits: int) -> None:
        self.bump(i, i + 1)
        if self.pfn[i] < 0:
            self.present += 1
        self.pfn[i] = folio.pfn + index
        self.bits[i] = bits

    def set_run(self, start: int, folio: Folio, first_index: int, nr: int, bits: int) -> None:
        """Map ``nr`` consecutive pages of one folio (set_ptes)."""
        self.bump(start, start + nr)
        window = self.pfn[start : start + nr]
        self.present += nr - int(np.count_nonzero(window >= 0))
        first = folio.pfn + first_index
        window[:] = np.arange(first, first + nr, dtype=np.int64)
        self.bits[start : start + nr] = bits

    def set_same(self, start: int, nr: int, folio: Folio, bits: int) -> None:
        """Map one page (the shared zero page) in ``nr`` consecutive slots."""
        self.bump(start, start + nr)
        window = self.pfn[start : start + nr]
        self.present += nr - int(np.count_nonzero(window >= 0))
        window[:] = folio.pfn
        self.bits[start : start + nr] = bits

    def clear(self, i: int) -> None:
        self.bump(i, i + 1)
        if self.pfn[i] >= 0:
            self.present -= 1
        self.pfn[i] = NO_PAGE
        self.bits[i] = 0

    def small_anon_slots(
        self, first: int = 0, last: int | None = None
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Slots in [first, last) whose entry maps an order-0 anonymous page held as arrays
        (smallpages.py), ascending, and their pfns."""
        slots, pfns, _ = self.split_small(first, last)
        return slots, pfns

    def split_small(
        self, first: int = 0, last: int | None = None
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], bool]:
        """small_anon_slots(), and whether any other entry maps a page in [first, last)."""
        if not self.mem.small.live or not self.present:
            return _NO_SLOTS, _NO_SLOTS, bool(self.present)
        end = self.pfn.shape[0] if last is None else last
        if first == 0 and end == self.pfn.shape[0] and self.present == end:
            # A full table (what batched faults leave): no search for present entries.
            mask = self.mem.small_anon_mask(self.pfn)
            if mask.all():
                return _ALL_SLOTS[end], self.pfn.copy(), False
            return np.flatnonzero(mask), self.pfn[mask], True
        window = self.pfn[first:end]
        present = np.flatnonzero(window >= 0)
        pfns = window[present]
        mask = self.mem.small_anon_mask(pfns)
        slots = present[mask]
        return slots + first, pfns[mask], slots.shape[0] < present.shape[0]

    def runs(
        self,
        first: int = 0,
        last: int | None = None,
        skip_small: bool = False,
        peek: bool = False,
    ) -> list[tuple[int, int, Folio, int, bool]]:
        """Runs of present entries in [first, last): consecutive slots mapping consecutive
        pages of one folio with the same special bit, as folio_pte_batch() groups them.
        Each run is (first slot, length, folio, first page index, special). Pages held as
        arrays become Folio objects here, unless ``skip_small`` leaves them out (for callers
        that handle them with small_anon_slots, or look only for other folios) or ``peek``
        gives read-only views of them (for readers that change nothing)."""
        end = self.pfn.shape[0] if last is None else last
        window = self.pfn[first:end]
        present = np.flatnonzero(window >= 0)
        if present.size == 0:
            return []
        pfns = window[present]
        if skip_small and self.mem.small.live:
            keep = ~self.mem.small_anon_mask(pfns)
            present = present[keep]
            pfns = pfns[keep]
            if present.size == 0:
                return []
        special = (self.bits[first:end][present] & PTE_SPECIAL) != 0
        brk = np.ones(present.size, dtype=np.bool_)
        # (Slices rather than np.diff/np.append: those wrappers cost more than the arithmetic
        # on the short arrays most calls see.)
        brk[1:] = (
            (present[1:] - present[:-1] != 1)
            | (pfns[1:] - pfns[:-1] != 1)
            | (special[1:] != special[:-1])
        )
        mem = self.mem
        head: np.ndarray[Any, Any] | None = None
        if present.size >= _HEADS_FROM:
            # Many entries (a whole table of order-0 page-cache folios, say): find each RAM
            # page's folio head at once from the memmap state and cut the runs where it
            # changes, instead of cutting them folio by folio below. Other pages (device
            # memory, pages held as arrays, free or leaked ones) keep head -1: page_folio()
            # and the cut below deal with them, so the runs are the same either way.
            state = np.take(mem.state, pfns, mode="clip")
            is_object = (pfns < mem.ram_pages) & ((state & PAGE_OBJECT) != 0)
            order = (state & PAGE_ORDER_MASK).astype(np.int64)
            head = np.where(is_object, pfns & -(np.int64(1) << order), -1)
            brk[1:] |= head[1:] != head[:-1]
        starts = np.flatnonzero(brk)
        lengths = run_lengths(starts, present.size)
        heads: list[int] | None = None if head is None else head[starts].tolist()
        page_folio = mem.page_folio
        if peek and mem.small.live:
            page_folio = self._peek_folio  # type: ignore[assignment]
        folios = mem.folios
        out: list[tuple[int, int, Folio, int, bool]] = []
        for i, (slot, nr, pfn, spec) in enumerate(
            zip(
                (present[starts] + first).tolist(),
                lengths,
                pfns[starts].tolist(),
                special[starts].tolist(),
                strict=True,
            )
        ):
            if heads is not None and heads[i] >= 0:  # one folio object: the whole run
                folio = folios[heads[i]]
                out.append((slot, nr, folio, pfn - folio.pfn, spec))
                continue
            # Consecutive pfns may cross into the next folio: cut the run at each folio's end.
            while True:
                folio = page_folio(pfn, self, slot)
                page = pfn - folio.pfn
                take = folio.nr_pages - page
                if take >= nr:
                    out.append((slot, nr, folio, page, spec))
                    break
                out.append((slot, take, folio, page, spec))
                slot += take
                pfn += take
                nr -= take
        return out

    def _peek_folio(self, pfn: int, table: PteTable, slot: int) -> Folio:
        return self.entry_folio(pfn, slot, True)

    def clear_range(self, start: int, end: int) -> None:
        self.bump(start, end)
        window = self.pfn[start:end]
        self.present -= int(np.count_nonzero(window >= 0))
        window[:] = NO_PAGE
        self.bits[start:end] = 0


@dataclass(eq=False)
class PageTables:
    """The page tables of one mm: huge leaves by PUD/PMD number, PTE tables by PMD number."""

    ptrs_per_pte: int
    mem: PhysMem
    pud_leaves: dict[int, Leaf]
    pmd_leaves: dict[int, Leaf]
    pte_tables: dict[int, PteTable]
    # Page tables deposited behind PMD leaves (pgtable_trans_huge_deposit/withdraw): a counter
    # kept where the kernel deposits and withdraws, checked against the leaves' flags.
    deposits: int = 0
    # PTE tables whose entries changed since the incremental checker last looked.
    changed: set[PteTable] = field(default_factory=set)
    mm: Any = None  # the MM these tables belong to

    @classmethod
    def empty(cls, ptrs_per_pte: int, mem: PhysMem) -> PageTables:
        return cls(ptrs_per_pte, mem, {}, {}, {})

    def pte_table(self, pmd_no: int, create: bool = False) -> PteTable | None:
        table = self.pte_tables.get(pmd_no)
        if table is None and create:
            table = PteTable(self.ptrs_per_pte, self.mem, self.changed, pmd_no, self.mm)
            self.pte_tables[pmd_no] = table
        return table

    def nr_ptes(self) -> int:
        """Page-table pages at the lowest level, as mm_pgtables_bytes() counts them: PTE
        tables in use plus tables deposited behind PMD leaves."""
        return len(self.pte_tables) + sum(1 for leaf in self.pmd_leaves.values() if leaf.deposited)
