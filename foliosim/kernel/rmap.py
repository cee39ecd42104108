"""The reverse map's counters: adding, removing and duplicating mappings of a folio.

Models mm/rmap.c and include/linux/rmap.h of Linux 7.1.8: __folio_add_rmap,
__folio_remove_rmap, __folio_mod_stat, the file/anon wrappers at PTE, PMD and PUD level,
folio_add_new_anon_rmap and the fork-time duplication helpers. Left out: the rmap *walk*
(anon_vma chains, i_mmap trees: the model finds mappings by scanning page tables), mlock
accounting, KSM and hugetlb. The large mapcount moves through the CONFIG_MM_ID helpers
(folio_set/add/sub_large_mapcount), which keep the two MM-id slots and the "maybe mapped
shared" bit that COW reuse and folio_maybe_mapped_shared() read.

Counters are values, not the kernel's value-1 encoding (see physmem).
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from foliosim.kernel.physmem import ENTIRELY_MAPPED, FOLIO_PAGES_MAPPED, Folio, MmIdSlots

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA


class Level(IntEnum):
    """enum pgtable_level (include/linux/pgtable.h, 7.1.8), formerly enum rmap_level."""

    PTE = 0
    PMD = 1
    PUD = 2


# Module constants: reading an enum member through its class costs a descriptor call, and
# these are read on every rmap add and remove.
LEVEL_PTE, LEVEL_PMD, LEVEL_PUD = Level.PTE, Level.PMD, Level.PUD
# Report sites, made once rather than formatted on every call.
_ADD_SITES = {level: f"__folio_add_rmap+{level.name.lower()}" for level in Level}
_REMOVE_SITES = {level: f"__folio_remove_rmap+{level.name.lower()}" for level in Level}


def _sanity_checks(k: Kernel, folio: Folio, nr_pages: int, level: Level, site: str) -> bool:
    """__folio_rmap_sanity_checks() (include/linux/rmap.h, 7.1.8).

    VM_WARN_ON_FOLIO checks: the zero folio is never rmapped; a PMD mapping needs a folio of
    exactly HPAGE_PMD_NR pages mapped whole; a PUD mapping needs exactly HPAGE_PUD_NR (the
    seed's rule: "a single entire mapping of the folio"). Returns False when the kernel's
    check fired so callers can refuse work the model cannot represent (the kernel would go
    on and corrupt counters; a report is what the user needs).
    """
    ok = True
    if folio.zero:
        k.reports.vm_warn(site, "rmap of the zero folio: never touch ref+mapcount of zeropages")
        ok = False
    if level == LEVEL_PTE and not 1 <= nr_pages <= folio.nr_pages:
        k.reports.vm_warn(site, f"bad nr_pages {nr_pages} for a PTE rmap")
        ok = False
    if level == LEVEL_PMD and (folio.nr_pages != k.config.pmd_nr or nr_pages != k.config.pmd_nr):
        k.reports.warn(
            site,
            f"PMD rmap of a folio of {folio.nr_pages} pages (needs HPAGE_PMD_NR={k.config.pmd_nr})",
        )
        ok = False
    if level == LEVEL_PUD and (folio.nr_pages != k.config.pud_nr or nr_pages != k.config.pud_nr):
        # VM_WARN_ON_FOLIO in the kernel; always recorded here because the model cannot map
        # a wrongly sized folio with one entry.
        k.reports.warn(
            site,
            f"PUD rmap of a folio of {folio.nr_pages} pages (needs HPAGE_PUD_NR="
            f"{k.config.pud_nr}): a PUD maps one entire folio",
        )
        ok = False
    return ok


# ---- CONFIG_MM_ID large mapcount (include/linux/rmap.h, 7.1.8) -----------------------------
def folio_set_large_mapcount(folio: Folio, mapcount: int, vma: VMA) -> None:
    """folio_set_large_mapcount(): a new folio's first mappings, all owned by vma's mm."""
    slots = folio.mm_ids = MmIdSlots()
    folio.large_mapcount = mapcount
    slots.mapcounts[0] = mapcount
    slots.ids[0] = vma.mm.id


def folio_add_return_large_mapcount(folio: Folio, diff: int, vma: VMA) -> int:
    """folio_add_return_large_mapcount() (folio_add/inc_large_mapcount), 64-bit: the mm's
    slot grows; an mm without a slot takes a free one, and the folio is marked maybe mapped
    shared unless that mm now holds every mapping; with both slots taken by other mms only
    the total moves (the shared bit was set when the second slot was taken)."""
    slots = folio.mm_ids
    if slots is None:
        slots = folio.mm_ids = MmIdSlots()
    mm_id = vma.mm.id
    new = folio.large_mapcount + diff
    folio.large_mapcount = new
    ids = slots.ids
    if ids[0] == mm_id:
        slots.mapcounts[0] += diff
    elif ids[1] == mm_id:
        slots.mapcounts[1] += diff
    elif ids[0] == 0:
        ids[0] = mm_id
        slots.mapcounts[0] = diff
        if new != diff:  # other mappings exist already
            slots.shared = True
    elif ids[1] == 0:
        ids[1] = mm_id
        slots.mapcounts[1] = diff
        slots.shared = True  # slot 0 certainly has mappings as well
    return new


def folio_sub_return_large_mapcount(folio: Folio, diff: int, vma: VMA) -> int:
    """folio_sub_return_large_mapcount() (folio_sub/dec_large_mapcount): the mm's slot
    shrinks and is freed when it reaches zero (or would go below: mappings added while no slot
    was free); then, if one slot holds every remaining mapping (or none is left), the folio is
    exclusive again. An mm without a slot leaves the bit alone unless a slot now holds all."""
    slots = folio.mm_ids
    if slots is None:
        slots = folio.mm_ids = MmIdSlots()
    mm_id = vma.mm.id
    new = folio.large_mapcount - diff
    folio.large_mapcount = new
    ids, counts = slots.ids, slots.mapcounts
    for i in (0, 1):
        if ids[i] == mm_id:
            counts[i] -= diff
            if counts[i] > 0:
                return new
            counts[i] = 0
            ids[i] = 0
            break
    if counts[0] == new or counts[1] == new:
        slots.shared = False
    return new


def folio_maybe_mapped_shared(k: Kernel, folio: Folio) -> bool:
    """folio_maybe_mapped_shared() (include/linux/mm.h, 7.1.8): a small folio is shared when
    mapped more than once; a large one without CONFIG_MM_ID always "maybe" is; with it, one
    mapping means exclusive, more the FOLIO_MM_IDS_SHARED bit."""
    mapcount = folio.folio_mapcount()
    if not folio.large:
        return mapcount > 1
    if not k.config.enabled("MM_ID"):
        return True
    if mapcount <= 1:
        return False
    return folio.mm_ids is not None and folio.mm_ids.shared


def __folio_mod_stat(k: Kernel, folio: Folio, nr: int, nr_pmdmapped: int) -> None:
    """__folio_mod_stat() (mm/rmap.c, 7.1.8): NR_ANON_MAPPED/NR_FILE_MAPPED by ``nr``;
    NR_ANON_THPS, NR_SHMEM_PMDMAPPED or NR_FILE_PMDMAPPED by ``nr_pmdmapped``."""
    if nr:
        k.vmstat.mod("nr_anon_pages" if folio.anon else "nr_mapped", nr)
    if nr_pmdmapped:
        if folio.anon:
            item = "nr_anon_transparent_hugepages"
        elif folio.swapbacked:
            item = "nr_shmem_pmdmapped"
        else:
            item = "nr_file_pmdmapped"
        k.vmstat.mod(item, nr_pmdmapped)


def __folio_add_rmap(
    k: Kernel, folio: Folio, page: int, nr_pages: int, vma: VMA, level: Level
) -> bool:
    """__folio_add_rmap() (mm/rmap.c, 7.1.8). ``page`` is the index of the first page.

    PTE: per-page mapcounts (PAGE_MAPCOUNT) and _nr_pages_mapped count pages newly mapped;
    the large mapcount grows by nr_pages. PMD/PUD: one entire mapping; the first one sets
    ENTIRELY_MAPPED and accounts the pages not yet PTE-mapped. Only PMD mappings of
    PMD-sized folios feed NR_*_PMDMAPPED/NR_ANON_THPS (the seed variant also fed PUD ones).
    """
    site = _ADD_SITES[level]
    if not _sanity_checks(k, folio, nr_pages, level, site):
        return False
    nr = 0
    nr_pmdmapped = 0
    variant = k.variant
    if level == LEVEL_PTE:
        if not folio.large:
            folio.mapcount_small += 1
            nr = 1 if folio.mapcount_small == 1 else 0
        elif not k.config.page_mapcount:
            folio_add_return_large_mapcount(folio, nr_pages, vma)
            nr = folio.nr_pages if folio.large_mapcount == nr_pages else 0
        else:
            counts = folio.mapcounts_array()
            window = counts[page : page + nr_pages]
            window += 1
            first = int((window == 1).sum())
            if first:
                folio.nr_pages_mapped_raw += first
                if folio.nr_pages_mapped_raw < ENTIRELY_MAPPED:
                    nr = first
            folio_add_return_large_mapcount(folio, nr_pages, vma)
    else:
        if variant.pud_rmap_as_pages and level == LEVEL_PUD:
            # Mutant: a PUD rmap that bumps every page's mapcount as PTEs would.
            folio.mapcounts_array()[:] += 1
        folio.entire_mapcount += 1
        first = folio.entire_mapcount == 1
        counts_pmd = level == LEVEL_PMD or (level == LEVEL_PUD and variant.pud_counts_pmdmapped)
        if not k.config.page_mapcount:
            if counts_pmd and first:
                nr_pmdmapped = folio.nr_pages
            folio_add_return_large_mapcount(folio, 1, vma)
            nr = folio.nr_pages if folio.large_mapcount == 1 else 0
        else:
            if first:
                folio.nr_pages_mapped_raw += ENTIRELY_MAPPED
                raw = folio.nr_pages_mapped_raw
                if raw < 2 * ENTIRELY_MAPPED:
                    if counts_pmd:
                        nr_pmdmapped = folio.nr_pages
                    nr = max(folio.nr_pages - (raw & FOLIO_PAGES_MAPPED), 0)
            folio_add_return_large_mapcount(folio, 1, vma)
    __folio_mod_stat(k, folio, nr, nr_pmdmapped)
    return True


def __folio_remove_rmap(
    k: Kernel, folio: Folio, page: int, nr_pages: int, vma: VMA, level: Level
) -> None:
    """__folio_remove_rmap() (mm/rmap.c, 7.1.8).

    The mirror of __folio_add_rmap; a large anon folio that is left partially mapped is
    queued for deferred split (deferred_split_folio(folio, true)) unless already marked.
    """
    site = _REMOVE_SITES[level]
    if not _sanity_checks(k, folio, nr_pages, level, site):
        return
    nr = 0
    nr_pmdmapped = 0
    partially_mapped = False
    variant = k.variant
    if level == LEVEL_PTE:
        if not folio.large:
            folio.mapcount_small -= 1
            nr = 1 if folio.mapcount_small == 0 else 0
        elif not k.config.page_mapcount:
            folio_sub_return_large_mapcount(folio, nr_pages, vma)
            if folio.large_mapcount == 0:
                nr = folio.nr_pages
            else:
                partially_mapped = (
                    folio.large_mapcount < folio.nr_pages and folio.entire_mapcount == 0
                )
        else:
            folio_sub_return_large_mapcount(folio, nr_pages, vma)
            counts = folio.mapcounts_array()
            window = counts[page : page + nr_pages]
            window -= 1
            last = int((window == 0).sum())
            if last:
                folio.nr_pages_mapped_raw -= last
                if folio.nr_pages_mapped_raw < ENTIRELY_MAPPED:
                    nr = last
            partially_mapped = bool(nr) and folio.nr_pages_mapped_raw != 0
            if not folio.nr_pages_mapped_raw & FOLIO_PAGES_MAPPED:
                folio.release_page_state()  # no page counted as PTE-mapped: maybe nothing left
    else:
        if variant.pud_rmap_as_pages and level == LEVEL_PUD:
            folio.mapcounts_array()[:] -= 1
        counts_pmd = level == LEVEL_PMD or (level == LEVEL_PUD and variant.pud_counts_pmdmapped)
        if not k.config.page_mapcount:
            folio.entire_mapcount -= 1
            last = folio.entire_mapcount == 0
            if counts_pmd and last:
                nr_pmdmapped = folio.nr_pages
            folio_sub_return_large_mapcount(folio, 1, vma)
            if folio.large_mapcount == 0:
                nr = folio.nr_pages
            else:
                partially_mapped = last and folio.large_mapcount < folio.nr_pages
        else:
            folio_sub_return_large_mapcount(folio, 1, vma)
            folio.entire_mapcount -= 1
            if folio.entire_mapcount == 0:
                folio.nr_pages_mapped_raw -= ENTIRELY_MAPPED
                raw = folio.nr_pages_mapped_raw
                if raw < ENTIRELY_MAPPED:
                    if counts_pmd:
                        nr_pmdmapped = folio.nr_pages
                    nr = max(folio.nr_pages - raw, 0)
            partially_mapped = bool(nr) and nr < nr_pmdmapped
    if partially_mapped and folio.anon and not folio.partially_mapped:
        deferred_split_folio(k, folio, True)
    __folio_mod_stat(k, folio, -nr, -nr_pmdmapped)


def deferred_split_folio(k: Kernel, folio: Folio, partially_mapped: bool) -> None:
    """deferred_split_folio() (mm/huge_memory.c, 7.1.8).

    Order <= 1 folios are never queued. With partially_mapped, the folio is marked and
    THP_DEFERRED_SPLIT_PAGE counted (PMD-mappable folios only) the first time; without it
    (a fresh anon THP, for the underused-THP shrinker) it is only queued, if
    split_underused_thp is on (default). Queue membership is idempotent.
    """
    if folio.order <= 1:
        return
    if not partially_mapped and not k.policy.split_underused_thp:
        return
    if k.variant.deferred_split_never_queues:
        return
    if partially_mapped and not folio.partially_mapped:
        folio.partially_mapped = True
        if folio.order == k.config.geometry.pmd_order:
            k.vmstat.count_event("thp_deferred_split_page")
    if not folio.deferred:
        folio.deferred = True
        k.physmem.deferred_split_queue[folio.pfn] = folio


# ---- file wrappers (mm/rmap.c) -------------------------------------------------------------
def folio_add_file_rmap_ptes(k: Kernel, folio: Folio, page: int, nr: int, vma: VMA) -> None:
    """folio_add_file_rmap_ptes() -> __folio_add_file_rmap (WARN if anon), 7.1.8."""
    if folio.anon:
        k.reports.vm_warn("__folio_add_file_rmap", "file rmap of an anon folio")
    __folio_add_rmap(k, folio, page, nr, vma, LEVEL_PTE)


def folio_add_file_rmap_pmd(k: Kernel, folio: Folio, vma: VMA) -> None:
    """folio_add_file_rmap_pmd() (mm/rmap.c, 7.1.8): needs CONFIG_TRANSPARENT_HUGEPAGE."""
    if not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        k.reports.warn("folio_add_file_rmap_pmd", "called without THP", once=True)
        return
    __folio_add_rmap(k, folio, 0, k.config.pmd_nr, vma, LEVEL_PMD)


def folio_add_file_rmap_pud(k: Kernel, folio: Folio, vma: VMA) -> bool:
    """folio_add_file_rmap_pud() (mm/rmap.c, 7.1.8; added by the seed as v1 patch 07).

    Mainline needs THP && HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD, else WARN_ON_ONCE and nothing.
    (The seed guarded only on the arch symbol and broke allnoconfig: see config.)
    """
    if not k.config.thp_pud:
        k.reports.warn("folio_add_file_rmap_pud", "PUD rmap without PUD THP", once=True)
        return False
    return __folio_add_rmap(k, folio, 0, k.config.pud_nr, vma, LEVEL_PUD)


def folio_remove_rmap_ptes(k: Kernel, folio: Folio, page: int, nr: int, vma: VMA) -> None:
    """folio_remove_rmap_ptes() (mm/rmap.c, 7.1.8)."""
    __folio_remove_rmap(k, folio, page, nr, vma, LEVEL_PTE)


def folio_remove_rmap_pmd(k: Kernel, folio: Folio, vma: VMA) -> None:
    """folio_remove_rmap_pmd() (mm/rmap.c, 7.1.8)."""
    __folio_remove_rmap(k, folio, 0, k.config.pmd_nr, vma, LEVEL_PMD)


def folio_remove_rmap_pud(k: Kernel, folio: Folio, vma: VMA) -> None:
    """folio_remove_rmap_pud() (mm/rmap.c, 7.1.8): THP && arch PUD support, else WARN_ON_ONCE."""
    if not k.config.thp_pud:
        k.reports.warn("folio_remove_rmap_pud", "PUD rmap without PUD THP", once=True)
        return
    __folio_remove_rmap(k, folio, 0, k.config.pud_nr, vma, LEVEL_PUD)


# ---- anon wrappers ---------------------------------------------------------------------
def folio_add_new_anon_rmap(k: Kernel, folio: Folio, vma: VMA, exclusive: bool = True) -> None:
    """folio_add_new_anon_rmap() (mm/rmap.c, 7.1.8).

    Sets swapbacked and anon; small: mapcount 1; large not PMD-mappable: every page mapped
    once (PTE-mapped mTHP); PMD-mappable: one entire mapping, counted in NR_ANON_THPS.
    """
    folio.swapbacked = True
    folio.anon = True
    folio.mapping = vma.anon_vma
    nr = 1
    nr_pmdmapped = 0
    if not folio.large:
        folio.mapcount_small = 1
        if exclusive:
            folio.set_exclusive(True)
    elif folio.order != k.config.geometry.pmd_order:
        nr = folio.nr_pages
        if k.config.page_mapcount:
            folio.mapcounts_array()[:] = 1
            folio.nr_pages_mapped_raw = nr
        if exclusive:
            folio.set_exclusive(True, 0, nr)
        folio_set_large_mapcount(folio, nr, vma)
    else:
        nr = folio.nr_pages
        folio.entire_mapcount = 1
        folio_set_large_mapcount(folio, 1, vma)
        if k.config.page_mapcount:
            folio.nr_pages_mapped_raw = ENTIRELY_MAPPED
        if exclusive:
            folio.set_exclusive(True)
        nr_pmdmapped = nr
    __folio_mod_stat(k, folio, nr, nr_pmdmapped)


def folio_add_anon_rmap_ptes(
    k: Kernel, folio: Folio, page: int, nr: int, vma: VMA, exclusive: bool
) -> None:
    """folio_add_anon_rmap_ptes() (mm/rmap.c, 7.1.8): RMAP_EXCLUSIVE sets each page's bit."""
    __folio_add_rmap(k, folio, page, nr, vma, LEVEL_PTE)
    if exclusive:
        folio.set_exclusive(True, page, nr)


def folio_add_anon_rmap_pmd(k: Kernel, folio: Folio, vma: VMA, exclusive: bool) -> None:
    """folio_add_anon_rmap_pmd() (mm/rmap.c, 7.1.8): RMAP_EXCLUSIVE marks the head page only."""
    __folio_add_rmap(k, folio, 0, k.config.pmd_nr, vma, LEVEL_PMD)
    if exclusive:
        folio.set_exclusive(True)


def folio_add_anon_rmap_pud(k: Kernel, folio: Folio, vma: VMA) -> None:
    """The anon PUD case of __folio_add_anon_rmap (mm/rmap.c, 7.1.8 and seed): no anonymous
    PUD THP exists, so the kernel WARNs ("keep the compiler happy") after the counters moved."""
    __folio_add_rmap(k, folio, 0, k.config.pud_nr, vma, LEVEL_PUD)
    k.reports.warn("__folio_add_anon_rmap", "anonymous PUD mappings are not supported", once=True)


# ---- fork-time duplication (include/linux/rmap.h) -------------------------------------------
def folio_dup_file_rmap_ptes(k: Kernel, folio: Folio, page: int, nr: int, dst: VMA) -> None:
    """__folio_dup_file_rmap() at PTE level: mapcounts only (the large one in dst's MM-id
    slot), no _nr_pages_mapped, no vmstat."""
    if not folio.large:
        folio.mapcount_small += 1
        return
    if k.config.page_mapcount:
        folio.mapcounts_array()[page : page + nr] += 1
    if k.variant.dup_skips_mm_id:
        folio.large_mapcount += nr  # mutant: the slots never hear of the child
    else:
        folio_add_return_large_mapcount(folio, nr, dst)


def folio_dup_file_rmap_pmd(k: Kernel, folio: Folio, dst: VMA) -> None:
    """The PMD/PUD case of __folio_dup_file_rmap(): entire and large mapcount + 1 each.

    (7.1.8's folio_dup_file_rmap_pmd wrapper passes PTE level and has no callers; the model
    uses the level-correct form for the entire mappings it duplicates.)
    """
    folio.entire_mapcount += 1
    if k.variant.dup_skips_mm_id:
        folio.large_mapcount += 1  # mutant: the slots never hear of the child
    else:
        folio_add_return_large_mapcount(folio, 1, dst)


def folio_try_dup_anon_rmap_ptes(
    k: Kernel, folio: Folio, page: int, nr: int, dst: VMA, maybe_pinned: bool
) -> bool:
    """__folio_try_dup_anon_rmap() at PTE level (include/linux/rmap.h, 7.1.8).

    Fails (-EBUSY, returns False) if the folio may be DMA-pinned and any page is exclusive:
    the caller must copy instead. Otherwise clears PageAnonExclusive and adds mapcounts.
    """
    exclusive = folio.anon_exclusive
    if maybe_pinned and exclusive is not None and exclusive[page : page + nr].any():
        return False
    if exclusive is not None:
        if not k.variant.cow_keeps_exclusive:
            folio.set_exclusive(False, page, nr)
    folio_dup_file_rmap_ptes(k, folio, page, nr, dst)
    return True


def folio_try_dup_anon_rmap_pmd(k: Kernel, folio: Folio, dst: VMA, maybe_pinned: bool) -> bool:
    """__folio_try_dup_anon_rmap() at PMD level: head exclusive + maybe pinned -> -EBUSY."""
    if folio.page_exclusive(0):
        if maybe_pinned:
            return False
        if not k.variant.cow_keeps_exclusive:
            folio.set_exclusive(False)
    folio_dup_file_rmap_pmd(k, folio, dst)
    return True
