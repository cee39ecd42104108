"""Page-table lookups shared by faults, zaps, GUP and queries (the model's follow_page)."""

from __future__ import annotations

from dataclasses import dataclass

from foliosim.kernel.mm import MM
from foliosim.kernel.pgtable import PTE_MARKER_GUARD, PTE_WRITE, Leaf, PteTable
from foliosim.kernel.physmem import Folio


@dataclass(slots=True)
class Mapping:
    """What maps one address: the level, the folio, the page index inside it and the entry."""

    level: str  # "pte", "pmd", "pud"
    folio: Folio
    page: int
    write: bool
    special: bool
    leaf: Leaf | None = None
    table: PteTable | None = None
    slot: int = 0


def lookup(
    mm: MM, addr: int, page_shift: int, pmd_shift: int, pud_shift: int, peek: bool = False
) -> Mapping | None:
    """Walk the page tables for addr; None if no present entry maps it. ``peek``: a reader
    that changes nothing (a query, a dump) gets a read-only view of an order-0 anonymous
    page held as arrays instead of turning it into an object (smallpages.py)."""
    leaf = mm.pgtables.pud_leaves.get(addr >> pud_shift)
    if leaf is not None:
        page = (addr - ((addr >> pud_shift) << pud_shift)) >> page_shift
        return Mapping("pud", leaf.folio, page, leaf.write, leaf.special, leaf=leaf)
    pmd_no = addr >> pmd_shift
    leaf = mm.pgtables.pmd_leaves.get(pmd_no)
    if leaf is not None:
        page = (addr - (pmd_no << pmd_shift)) >> page_shift
        return Mapping("pmd", leaf.folio, page, leaf.write, leaf.special, leaf=leaf)
    table = mm.pgtables.pte_tables.get(pmd_no)
    if table is None:
        return None
    slot = (addr >> page_shift) & (table.pfn.shape[0] - 1)
    pfn = int(table.pfn[slot])
    if pfn < 0:
        return None
    folio = table.entry_folio(pfn, slot, peek)
    bits = int(table.bits[slot])
    return Mapping(
        "pte",
        folio,
        pfn - folio.pfn,
        bool(bits & PTE_WRITE),
        bool(bits & 8),
        table=table,
        slot=slot,
    )


def has_guard_marker(mm: MM, addr: int, page_shift: int, pmd_shift: int) -> bool:
    table = mm.pgtables.pte_tables.get(addr >> pmd_shift)
    if table is None:
        return False
    slot = (addr >> page_shift) & (table.pfn.shape[0] - 1)
    return bool(table.bits[slot] & PTE_MARKER_GUARD)


@dataclass(slots=True)
class MappingRef:
    """One page-table entry that maps a folio, found by the model's rmap walk."""

    mm: MM
    addr: int
    level: str
    page: int  # first page of the folio this entry maps
    nr: int  # pages it maps (1 for a PTE)
    leaf: Leaf | None = None
    table: PteTable | None = None
    slot: int = 0


def mappings_of(
    mms: list[MM], folio: Folio, geo_pmd_shift: int, geo_pud_shift: int, page_shift: int
) -> list[MappingRef]:
    """rmap_walk() in spirit: every PTE/PMD/PUD entry of every mm that maps ``folio``.

    The kernel walks anon_vma/i_mmap trees; the model scans page tables, which gives the same
    set of entries (special entries included: callers filter them).
    """
    out: list[MappingRef] = []
    for mm in mms:
        pgt = mm.pgtables
        for pud_no, leaf in pgt.pud_leaves.items():
            if leaf.folio is folio:
                out.append(MappingRef(mm, pud_no << geo_pud_shift, "pud", 0, folio.nr_pages, leaf))
        for pmd_no, leaf in pgt.pmd_leaves.items():
            if leaf.folio is folio:
                nr = 1 << (geo_pmd_shift - page_shift)
                out.append(MappingRef(mm, pmd_no << geo_pmd_shift, "pmd", 0, nr, leaf))
        for pmd_no, table in pgt.pte_tables.items():
            if not table.present:
                continue
            slots = table.slots_of(folio)
            if not slots.size:
                continue
            pages = (table.pfn[slots] - folio.pfn).tolist()
            for slot, page in zip(slots.tolist(), pages, strict=True):
                addr = (pmd_no << geo_pmd_shift) + (slot << page_shift)
                out.append(MappingRef(mm, addr, "pte", page, 1, None, table, slot))
    return out


def file_mappings_of(
    mms: list[MM], folio: Folio, geo_pmd_shift: int, page_shift: int
) -> list[MappingRef]:
    """rmap_walk_file() (mm/rmap.c, 7.1.8) for a page-cache or shmem folio: only the VMAs
    that map its file over its index range are visited (the kernel walks the file's i_mmap
    tree), and in each only the entries at the folio's linear addresses (vma_address()).
    Leaves out: the i_mmap lock and nonlinear (remap_file_pages) mappings, gone since 4.0."""
    out: list[MappingRef] = []
    file = folio.mapping
    first, last = folio.index, folio.index + folio.nr_pages  # pages [first, last)
    pmd_pages_shift = geo_pmd_shift - page_shift
    for mm in mms:
        pgt = mm.pgtables
        for vma in mm.vmas:
            if vma.file is not file:
                continue
            vma_first = vma.pgoff
            vma_last = vma.pgoff + ((vma.end - vma.start) >> page_shift)
            lo, hi = max(first, vma_first), min(last, vma_last)
            if lo >= hi:
                continue
            start = vma.start + ((lo - vma_first) << page_shift)
            end = vma.start + ((hi - vma_first) << page_shift)
            for pmd_no in range(start >> geo_pmd_shift, ((end - 1) >> geo_pmd_shift) + 1):
                leaf = pgt.pmd_leaves.get(pmd_no)
                if leaf is not None:
                    if leaf.folio is folio:
                        nr = 1 << pmd_pages_shift
                        out.append(MappingRef(mm, pmd_no << geo_pmd_shift, "pmd", 0, nr, leaf))
                    continue
                table = pgt.pte_tables.get(pmd_no)
                if table is None or not table.present:
                    continue
                base = pmd_no << geo_pmd_shift
                s_lo = max(start - base, 0) >> page_shift
                s_hi = min(end - base, 1 << geo_pmd_shift) >> page_shift
                slots = table.slots_of(folio, s_lo, s_hi)
                if not slots.size:
                    continue
                pages = (table.pfn[slots] - folio.pfn).tolist()
                for slot, page in zip(slots.tolist(), pages, strict=True):
                    addr = base + (slot << page_shift)
                    out.append(MappingRef(mm, addr, "pte", page, 1, None, table, slot))
    return out
