"""Semantic variants of the kernel: small policy objects, not forks of the model.

- ``mainline``: Linux 7.1.8 (the merged "fs/dax: Fix ZONE_DEVICE page reference counts"
  series, vmf_insert_folio_pmd/pud, rmap with PGTABLE_LEVEL_PUD, and the May 2026 fix
  40990c87a26e that updates the file PUD counter before folio_put()).
- ``seed``: v1 of the series (June 2024) with patch 07 "huge_memory: Allow mappings of PUD
  sized pages": dax_insert_pfn_pud, PUD rmap through the PMD branch (so NR_FILE_PMDMAPPED
  moves by HPAGE_PUD_NR), BUG_ON for anonymous PUD zap, folio_put before the RSS update in
  __split_huge_pud_locked, and the build guard that broke x86_64 allnoconfig. Its PMD/PTE
  paths are modelled as mainline's (the series' v1 dax_insert_pfn_pmd behaves the same for
  what a scenario can observe).
- ``legacy``: before the series (6.1): DAX mapped by vmf_insert_pfn_pmd/pud and
  vmf_insert_mixed as special devmap entries: no reference, mapcount or RSS for the mapping;
  idle ZONE_DEVICE pages sit at refcount 1.

Mutants (deliberately broken variants for the fuzzer) are Variants too: see mutants.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    # DAX mappings hold a folio reference, an rmap entry and RSS (seed, mainline).
    dax_refcounted: bool = True
    # Idle refcount of fs-dax folios (0 after the series, 1 before it).
    fsdax_idle_refcount: int = 0
    # A PUD rmap goes through the PMD branch and so feeds NR_FILE_PMDMAPPED (seed).
    pud_counts_pmdmapped: bool = False
    # __split_huge_pud_locked drops the folio reference before reading it for the RSS
    # counter (seed; fixed upstream by 40990c87a26e).
    split_pud_put_before_rss: bool = False
    # zap_huge_pud on an anonymous VMA is BUG_ON (seed) rather than VM_WARN_ON_ONCE.
    anon_pud_zap_is_bug: bool = False
    # change_pud_range() runs pud_none_or_clear_bad() and has no huge-PUD case, so mprotect of
    # a PUD leaf prints "bad pud" and clears it (before 6.12's "mm/mprotect: fix dax pud
    # handlings"; legacy).
    mprotect_pud_clears_bad: bool = False
    # DAX mappings keep mapcounts (rmap add/remove) as well as the reference and RSS; False
    # is the review's "refcount-only" alternative (study variant, not a kernel).
    dax_mapcount: bool = True
    # ---- mutant switches (all False in real variants) ----
    pud_rmap_as_pages: bool = False
    deferred_split_never_queues: bool = False
    cow_keeps_exclusive: bool = False
    dup_skips_mm_id: bool = False
    copy_huge_pud_skips_refcounted: bool = False
    split_pud_forgets_put: bool = False
    zap_pud_forgets_rss: bool = False
    fork_skips_pmd_dup: bool = False
    dax_zero_pmd_withdraws_deposit: bool = False
    mremap_pud_drops_rss: bool = False
    pin_takes_one_ref: bool = False
    truncate_ignores_pins: bool = False
    zap_pmd_forgets_rss: bool = False
    split_pmd_forgets_ref: bool = False
    zap_pte_forgets_rmap: bool = False
    fault_pud_forgets_ref: bool = False
    unpin_forgets_pincount: bool = False
    deferred_split_skips_unqueue: bool = False
    split_pud_forgets_rmap: bool = False
    dax_pmd_forgets_rss: bool = False
    fork_pte_skips_ref: bool = False
    fork_pte_skips_dup: bool = False
    zap_small_forgets_rss: bool = False
    munmap_keeps_deposit: bool = False
    cow_forgets_old_rmap: bool = False
    exit_skips_zap: bool = False
    collapse_forgets_old_ref: bool = False
    split_page_forgets_tail_ref: bool = False
    shrinker_splits_mapped_whole: bool = False
    split_ignores_extra_refs: bool = False
    # reference-ownership mutants: a put before the last use of the folio
    zap_pmd_put_early: bool = False
    cow_put_early: bool = False
    truncate_put_early: bool = False
    unpin_put_early: bool = False
    zero_pmd_takes_ref: bool = False
    dax_pte_double_ref: bool = False

    # A fix for the 6.18/7.x mremap defect: move_page_tables() looks for a huge PUD before
    # pud_none_or_clear_bad(), as zap_pud_range() does, and moves it with move_huge_pud().
    mremap_checks_huge_pud_first: bool = False
    # 6.18 asserts mmap_lock in zap_pud_range before splitting a PUD (gone by 7.1).
    zap_pud_asserts_mmap_lock: bool = False
    # MADV_GUARD_INSTALL/REMOVE exist (added in 6.13; 6.1 answers EINVAL).
    has_guard_regions: bool = True
    # Fault-around maps a large page-cache folio whole (and installs the PTE table) for any
    # folio within EOF, as before the 2025 "do not populate page table entries beyond i_size"
    # fixes; since them the file must go on past it (filemap._ends_before_eof).
    fault_around_maps_to_eof: bool = False

    def mutate(self, name: str, description: str, **switches: bool) -> Variant:
        return replace(self, name=name, description=description, **switches)


MAINLINE = Variant(
    "mainline",
    "Linux 7.1.8: DAX folios refcounted and rmapped; vmf_insert_folio_pmd/pud",
)
SEED = Variant(
    "seed",
    "v1 patch 07 (June 2024): dax_insert_pfn_pud, PUD rmap via the PMD branch",
    pud_counts_pmdmapped=True,
    split_pud_put_before_rss=True,
    anon_pud_zap_is_bug=True,
    fault_around_maps_to_eof=True,
)
LEGACY = Variant(
    "legacy",
    "before the series (6.1): special devmap entries, no ref/mapcount/RSS for DAX",
    dax_refcounted=False,
    fsdax_idle_refcount=1,
    has_guard_regions=False,
    mprotect_pud_clears_bad=True,
    fault_around_maps_to_eof=True,
)

VARIANTS: dict[str, Variant] = {v.name: v for v in (LEGACY, SEED, MAINLINE)}

# Variants for studies (foliosim study): resolvable by name, not run by `foliosim diff`.
REFCOUNT_ONLY = Variant(
    "refcount-only",
    "mainline, but DAX mappings take a reference and RSS and no mapcount (no rmap calls)",
    dax_mapcount=False,
)
MAINLINE_FIXED = MAINLINE.mutate(
    "mainline-fixed",
    "mainline with fixes for mremap of huge PUDs (look for pud_trans_huge before "
    "pud_none_or_clear_bad, then move_huge_pud) and for fork of a refcounted PUD in a file "
    "VMA (copy_huge_pud leaves it to the child's fault, as copy_huge_pmd does)",
    mremap_checks_huge_pud_first=True,
    copy_huge_pud_skips_refcounted=True,
)
V6_18 = MAINLINE.mutate(
    "v6.18",
    "6.18 (the host's and the guests' kernel): mainline, plus the mmap_lock assertion in "
    "zap_pud_range that warns when a per-VMA-locked MADV_DONTNEED splits a PUD",
    zap_pud_asserts_mmap_lock=True,
)
STUDY_VARIANTS: dict[str, Variant] = {v.name: v for v in (REFCOUNT_ONLY, MAINLINE_FIXED, V6_18)}


def variant_for_kernel(version: str) -> str:
    """The variant that models a real kernel release (the host's or a guest's): the series
    "fs/dax: Fix FS DAX page reference counts" was merged for 6.15; 6.18 has its own."""
    m = re.match(r"(\d+)\.(\d+)", version)
    major_minor = (int(m[1]), int(m[2])) if m else (0, 0)
    if major_minor == (6, 18):
        return "v6.18"
    return "mainline" if major_minor >= (6, 15) else "legacy"


def get_variant(name: str) -> Variant:
    if name in VARIANTS:
        return VARIANTS[name]
    if name in STUDY_VARIANTS:
        return STUDY_VARIANTS[name]
    from foliosim.mutants import MUTANTS

    if name in MUTANTS:
        return MUTANTS[name]
    raise KeyError(name)
