"""Invariants: the counters must agree with the page tables (the DEBUG_VM / page_table_check view).

One pass over every mm's page tables tallies, per folio, the entries that map it (PTE per page,
PMD, PUD), per mm the pages mapped by kind, and then compares with the folios' refcount,
mapcounts, nr_pages_mapped, deferred-split state, the mms' RSS counters and the vmstat items
NR_ANON_MAPPED, NR_FILE_MAPPED, NR_ANON_THPS, NR_*_PMDMAPPED and NR_FILE_PAGES. A broken
invariant yields a :class:`Violation` with a __dump_folio-style dump.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.kernel.debug import dump_folio
from foliosim.kernel.physmem import ENTIRELY_MAPPED, GUP_PIN_COUNTING_BIAS, Folio
from foliosim.kernel.smallpages import PAGE_SMALL_ANON, SMALL_EXCLUSIVE

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import MM


@dataclass
class Violation:
    invariant: str
    message: str
    dump: str = ""

    def render(self) -> str:
        return f"invariant {self.invariant} broken: {self.message}" + (
            f"\n{self.dump}" if self.dump else ""
        )


class Tally:
    """What the page tables say about one folio: PTE entries per page (large folios only),
    all PTE entries, PMD and PUD entries."""

    __slots__ = ("pmds", "pte_total", "ptes", "puds")

    def __init__(self) -> None:
        self.ptes: np.ndarray[Any, Any] | None = None
        self.pte_total = 0
        self.pmds = 0
        self.puds = 0

    def per_page(self, folio: Folio) -> np.ndarray[Any, Any]:
        if self.ptes is None:
            self.ptes = np.zeros(folio.nr_pages, dtype=np.int64)
        return self.ptes


def _extra_refs(k: Kernel) -> dict[int, int]:
    """References held by `pin ... get` sets (FOLL_GET): one per page grabbed."""
    extra: dict[int, int] = defaultdict(int)
    for pins in getattr(k, "pinsets", {}).values():
        if pins.released or pins.pin:
            continue
        for folio, _ in pins.pages:
            extra[id(folio)] += 1
    return extra


def check_all(k: Kernel) -> list[Violation]:
    """Run every invariant over the whole model."""
    geo = k.geometry
    tallies: dict[int, Tally] = defaultdict(Tally)
    folios: dict[int, Folio] = {}
    out: list[Violation] = []
    small_pfns: list[np.ndarray[Any, Any]] = []  # entries mapping pages held as arrays
    for mm in k.live_mms():
        rss = [0, 0, 0, 0]
        for kind_nr, leaves in (
            (k.config.pud_nr, mm.pgtables.pud_leaves),
            (k.config.pmd_nr, mm.pgtables.pmd_leaves),
        ):
            for n, leaf in leaves.items():
                shift = geo.pud_shift if kind_nr == k.config.pud_nr else geo.pmd_shift
                vma = mm.find_vma(n << shift)
                if vma is None or (n << shift) + (kind_nr << k.page_shift) > vma.end:
                    out.append(
                        Violation("leaf-in-vma", f"huge leaf at {n << shift:#x} outside a VMA")
                    )
                if leaf.special:
                    continue
                f = leaf.folio
                folios[id(f)] = f
                t = tallies[id(f)]
                if kind_nr == k.config.pud_nr:
                    t.puds += 1
                else:
                    t.pmds += 1
                rss[_rss_index(f)] += kind_nr
        for pmd_no, table in mm.pgtables.pte_tables.items():
            if not table.present:
                continue
            base = pmd_no << geo.pmd_shift
            slots, pfns = table.small_anon_slots()
            if slots.shape[0]:
                small_pfns.append(pfns)
                rss[1] += int(slots.shape[0])
                for first_slot, last_slot in _slot_runs(slots):
                    first_addr = base + (first_slot << k.page_shift)
                    last_addr = base + (last_slot << k.page_shift)
                    if mm.find_vma(first_addr) is None or mm.find_vma(last_addr) is None:
                        out.append(
                            Violation("leaf-in-vma", f"PTEs at {first_addr:#x} outside a VMA")
                        )
            for slot, nr, f, page, special in table.runs(skip_small=True):
                if special:
                    continue
                folios[id(f)] = f
                t = tallies[id(f)]
                t.pte_total += nr
                t.per_page(f)[page : page + nr] += 1
                rss[_rss_index(f)] += nr
                first_addr = base + (slot << k.page_shift)
                last_addr = first_addr + ((nr - 1) << k.page_shift)
                if mm.find_vma(first_addr) is None or mm.find_vma(last_addr) is None:
                    out.append(Violation("leaf-in-vma", f"PTEs at {first_addr:#x} outside a VMA"))
        out.extend(check_deposits(mm))
        for i, name in enumerate(("MM_FILEPAGES", "MM_ANONPAGES", "MM_SWAPENTS", "MM_SHMEMPAGES")):
            if i != 2 and mm.rss[i] != rss[i]:
                out.append(
                    Violation("rss", f"mm {mm.id} {name} is {mm.rss[i]}, page tables map {rss[i]}")
                )
    for f in k.physmem.all_folios():
        folios.setdefault(id(f), f)
    for file in k.files.values():
        for f in file.cache.values():
            folios.setdefault(id(f), f)
    for pins in getattr(k, "pinsets", {}).values():
        for f, _ in pins.pages:  # a pinned folio may be reachable from nowhere else
            folios.setdefault(id(f), f)
    extra = _extra_refs(k)
    stats: dict[str, int] = defaultdict(int)
    for key, f in folios.items():
        t = tallies.get(key, Tally())
        out.extend(_check_folio(k, f, t, extra.get(key, 0)))
        _add_stats(k, f, t, stats)
    out.extend(_check_small_pages(k, small_pfns, stats))
    out.extend(_check_stats(k, stats))
    out.extend(_check_deferred(k))
    return out


def _slot_runs(slots: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive slots in an ascending array."""
    breaks = np.flatnonzero(np.diff(slots) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [slots.shape[0] - 1]))
    return list(zip(slots[starts].tolist(), slots[ends].tolist(), strict=True))


def _check_small_pages(
    k: Kernel, mapped: list[np.ndarray[Any, Any]], stats: dict[str, int]
) -> list[Violation]:
    """The order-0 folio invariants for every order-0 anonymous page held as arrays
    (kernel/smallpages.py), in bulk: mapcount (and so refcount) equal to the entries that
    map it, AnonExclusive only while mapped once; its nr_anon_pages share. A broken page is
    diagnosed by _check_folio on a view of it. (Entries mapping a page no longer held as
    arrays, freed say, are found through page_folio() like any other entry.)"""
    mem = k.physmem
    live = np.flatnonzero(mem.state[: mem._bump] & PAGE_SMALL_ANON)
    if not live.shape[0]:
        return []
    counts = np.zeros(live.shape[0], dtype=np.int64)
    if mapped:
        pfns, times = np.unique(np.concatenate(mapped), return_counts=True)
        counts[np.searchsorted(live, pfns)] = times  # every mapped one is live (state)
    stats["nr_anon_pages"] += int(np.count_nonzero(counts))
    mapcount = mem.small.mapcount[live]
    exclusive = (mem.state[live] & SMALL_EXCLUSIVE) != 0
    broken = np.flatnonzero((mapcount != counts) | (exclusive & (counts > 1)))
    out: list[Violation] = []
    for i in broken.tolist():
        tally = Tally()
        tally.pte_total = int(counts[i])
        out.extend(_check_folio(k, mem.small_view(int(live[i])), tally, 0))
    return out


def check_deposits(mm: MM) -> list[Violation]:
    """Deposited page tables (mm_inc_nr_ptes at deposit, mm_dec_nr_ptes at withdraw) agree
    with the PMD leaves that carry one."""
    carried = sum(1 for leaf in mm.pgtables.pmd_leaves.values() if leaf.deposited)
    if mm.pgtables.deposits != carried:
        return [
            Violation(
                "deposit",
                f"mm {mm.id}: {mm.pgtables.deposits} tables deposited, "
                f"{carried} PMD leaves carry one",
            )
        ]
    return []


def _rss_index(f: Folio) -> int:
    if f.anon:
        return 1
    return 3 if f.swapbacked else 0


def cache_refs(f: Folio) -> int:
    """The references the page cache holds on f: nr_pages while f caches its file's index
    (an anonymous folio never does: swap cache is not modelled)."""
    mapping = f.mapping
    if f.anon or mapping is None or getattr(mapping, "cache", {}).get(f.index) is not f:
        return 0
    return int(f.nr_pages)


def _check_folio(k: Kernel, f: Folio, t: Tally, gets: int) -> list[Violation]:
    out: list[Violation] = []

    def bad(inv: str, msg: str) -> None:
        out.append(Violation(inv, msg, dump_folio(k, f)))

    mapped_entries = t.pte_total + t.pmds + t.puds
    if f.zero:
        return out
    if f.freed:
        if mapped_entries:
            bad("freed-unmapped", f"freed folio {f!r} still mapped by {mapped_entries} entries")
        if f.refcount:
            bad("freed-referenced", f"freed (or split) folio {f!r} still holds references")
        return out
    in_cache = cache_refs(f)
    pins = f.pincount if f.large else f.pins_small * GUP_PIN_COUNTING_BIAS
    idle = f.pgmap.idle_refcount if f.pgmap is not None else 0
    expected = mapped_entries + in_cache + pins + gets + idle
    if f.refcount != expected:
        bad(
            "refcount",
            f"refcount {f.refcount} != {mapped_entries} mappings + {in_cache} page cache + "
            f"{pins} pin + {gets} get + {idle} idle",
        )
    if f.large:
        if f.large_mapcount != mapped_entries:
            bad("large_mapcount", f"large mapcount {f.large_mapcount} != {mapped_entries} entries")
        if f.entire_mapcount != t.pmds + t.puds:
            bad(
                "entire_mapcount",
                f"entire mapcount {f.entire_mapcount} != {t.pmds + t.puds} PMD/PUD entries",
            )
        if t.pmds and t.puds:
            bad("pud-and-pmd", "folio mapped by both PUD and PMD entries")
        if k.config.page_mapcount:
            entire = ENTIRELY_MAPPED if t.pmds + t.puds else 0
            if t.ptes is None and f.page_mapcounts is None:
                expect_raw = entire  # no PTE tallied and no per-page mapcount: nothing to compare
            else:
                per_page = t.ptes if t.ptes is not None else np.zeros(f.nr_pages, dtype=np.int64)
                actual = (
                    f.page_mapcounts
                    if f.page_mapcounts is not None
                    else np.zeros(f.nr_pages, dtype=np.int32)
                )
                # (np.count_nonzero is C; ndarray.any() goes through a Python wrapper.)
                if per_page.shape != actual.shape or np.count_nonzero(per_page != actual):
                    first = int(np.flatnonzero(per_page != actual)[0])
                    bad(
                        "page_mapcount",
                        f"page {first}: mapcount {int(actual[first])} != "
                        f"{int(per_page[first])} PTEs",
                    )
                expect_raw = int(np.count_nonzero(per_page > 0)) + entire
            if f.nr_pages_mapped_raw != expect_raw:
                bad(
                    "nr_pages_mapped",
                    f"_nr_pages_mapped {f.nr_pages_mapped_raw:#x} != {expect_raw:#x}",
                )
        if f.pincount < 0:
            bad("pincount", f"negative pincount {f.pincount}")
        if f.mm_ids is not None:
            _check_mm_ids(f, bad)
    elif f.mapcount_small != t.pte_total:
        bad("mapcount", f"mapcount {f.mapcount_small} != {t.pte_total} PTEs")
    if f.anon:
        _check_anon(k, f, t, bad)
    if f.pgmap is not None and f.pgmap.type == "fsdax" and f.refcount > f.pgmap.idle_refcount:
        owner = f.mapping
        if owner is None or getattr(owner, "entries", {}).get(f.index) is None:
            bad(
                "fsdax-owner",
                "a referenced fs-dax folio no file entry owns (its blocks were freed)",
            )
    return out


def _check_mm_ids(f: Folio, bad: Callable[[str, str], None]) -> None:
    """The CONFIG_MM_ID slots (include/linux/rmap.h, 7.1.8): a free slot (MM_ID_DUMMY) holds
    no mapcount, the slots never hold more than the large mapcount, and a folio not marked
    "maybe mapped shared" has one slot holding every mapping (what COW reuse relies on)."""
    slots = f.mm_ids
    assert slots is not None
    for i in (0, 1):
        if slots.mapcounts[i] < 0 or (slots.ids[i] == 0 and slots.mapcounts[i]):
            bad("mm-id", f"slot {i}: mm {slots.ids[i]} with mapcount {slots.mapcounts[i]}")
    total = f.large_mapcount
    if sum(slots.mapcounts) > total:
        bad("mm-id", f"slots hold {slots.mapcounts} mappings, large mapcount {total}")
    if total and not slots.shared and total not in slots.mapcounts:
        bad("mm-id", f"not maybe-shared, yet no slot holds all {total} ({slots.mapcounts})")


def _check_anon(k: Kernel, f: Folio, t: Tally, bad: Callable[[str, str], None]) -> None:
    """PageAnonExclusive only on pages mapped once (the VM_WARN_ON_FOLIO checks of
    __folio_add_anon_rmap), and a large anon folio with some pages unmapped and no entire
    mapping is marked partially mapped and on the deferred-split queue
    (__folio_remove_rmap -> deferred_split_folio)."""
    exclusive = f.anon_exclusive
    if not f.large:
        if exclusive is not None and exclusive[0] and t.pte_total > 1:
            bad("anon-exclusive", f"page 0 is AnonExclusive but mapped {t.pte_total} times")
        return
    if exclusive is not None and np.count_nonzero(exclusive):
        per_page = t.ptes if t.ptes is not None else np.zeros(f.nr_pages, dtype=np.int64)
        if f.large and (t.pmds or t.puds):
            if exclusive[0] and t.pmds + t.puds + int(per_page[0]) > 1:
                bad("anon-exclusive", "exclusive head page mapped more than once")
        else:
            counts = per_page if f.large else np.array([t.pte_total])
            shared = np.flatnonzero(exclusive & (counts > 1))
            if shared.size:
                bad(
                    "anon-exclusive",
                    f"page {int(shared[0])} is AnonExclusive but mapped "
                    f"{int(counts[shared[0]])} times",
                )
    if f.order > 1 and not t.pmds and not t.puds and k.config.page_mapcount:
        mapped = np.count_nonzero(t.ptes > 0) if t.ptes is not None else 0
        if 0 < mapped < f.nr_pages and not (f.partially_mapped and f.deferred):
            bad(
                "deferred-split",
                f"{mapped} of {f.nr_pages} pages mapped but not queued as partially mapped",
            )


def _add_stats(k: Kernel, f: Folio, t: Tally, stats: dict[str, int]) -> None:
    if f.zero or f.freed:
        return
    pages_mapped = 0
    if t.pmds + t.puds or (f.large and not k.config.page_mapcount and t.pte_total):
        # Without per-page mapcounts a large folio counts whole while mapped at all.
        pages_mapped = f.nr_pages
    elif t.ptes is not None:
        pages_mapped = int(np.count_nonzero(t.ptes > 0))
    elif not f.large and t.pte_total:
        pages_mapped = 1
    stats["nr_anon_pages" if f.anon else "nr_mapped"] += pages_mapped
    pmd_levels = t.pmds + (t.puds if k.variant.pud_counts_pmdmapped else 0)
    if pmd_levels:
        item = (
            "nr_anon_transparent_hugepages"
            if f.anon
            else ("nr_shmem_pmdmapped" if f.swapbacked else "nr_file_pmdmapped")
        )
        stats[item] += f.nr_pages


def _check_stats(k: Kernel, stats: dict[str, int]) -> list[Violation]:
    out = []
    for item in (
        "nr_anon_pages",
        "nr_mapped",
        "nr_anon_transparent_hugepages",
        "nr_shmem_pmdmapped",
        "nr_file_pmdmapped",
    ):
        have = k.vmstat.counters.get(item, 0)
        if have != stats.get(item, 0):
            out.append(
                Violation("vmstat", f"{item} is {have}, folios account {stats.get(item, 0)}")
            )
    cached = sum(f.nr_pages for file in k.files.values() for f in file.cache.values())
    if k.vmstat.counters.get("nr_file_pages", 0) != cached:
        out.append(
            Violation(
                "vmstat",
                f"nr_file_pages {k.vmstat.counters.get('nr_file_pages', 0)} != {cached} cached",
            )
        )
    return out


def _check_deferred(k: Kernel) -> list[Violation]:
    out = []
    queue = k.physmem.deferred_split_queue
    for pfn, f in queue.items():
        if f.freed or not f.deferred or f.pfn != pfn or not f.anon or f.order <= 1:
            out.append(Violation("deferred-split", f"bad queue entry {f!r}", dump_folio(k, f)))
    for f in k.physmem.folios.values():
        if f.deferred and f.pfn not in queue:
            out.append(
                Violation(
                    "deferred-split", f"{f!r} marked queued but not on the queue", dump_folio(k, f)
                )
            )
        if f.partially_mapped and not f.deferred:
            out.append(
                Violation("deferred-split", f"partially mapped {f!r} not queued", dump_folio(k, f))
            )
    return out
