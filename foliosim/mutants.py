"""Mutants: deliberately broken variants of mainline, each tied to a real code path.

The fuzzer must catch every one (issue: stateful fuzzer and mutant catalogue).
"""

from __future__ import annotations

from foliosim.variants import MAINLINE, MAINLINE_FIXED, SEED, Variant

_CATALOGUE: list[tuple[str, str, Variant, dict[str, bool]]] = [
    (
        "split-pud-no-put",
        "__split_huge_pud_locked forgets folio_put",
        MAINLINE,
        {"split_pud_forgets_put": True},
    ),
    (
        "zap-pud-no-rss",
        "zap_huge_pud forgets add_mm_counter(-HPAGE_PUD_NR)",
        MAINLINE,
        {"zap_pud_forgets_rss": True},
    ),
    (
        "pud-rmap-per-page",
        "PUD rmap bumps every page's _mapcount as PTEs would",
        MAINLINE,
        {"pud_rmap_as_pages": True},
    ),
    (
        "fork-skips-pmd-dup",
        "copy_huge_pmd skips folio_try_dup_anon_rmap_pmd",
        MAINLINE,
        {"fork_skips_pmd_dup": True},
    ),
    (
        "cow-keeps-exclusive",
        "fork dup forgets to clear PageAnonExclusive",
        MAINLINE,
        {"cow_keeps_exclusive": True},
    ),
    (
        "dup-skips-mm-id",
        "__folio_dup_file_rmap adds to the large mapcount but not to the child's MM-id slot",
        MAINLINE,
        {"dup_skips_mm_id": True},
    ),
    (
        "deferred-never-queues",
        "deferred_split_folio never queues",
        MAINLINE,
        {"deferred_split_never_queues": True},
    ),
    (
        "mremap-pud-drops-rss",
        "mremap moves a PUD (with the mremap fix) and also drops its RSS",
        MAINLINE_FIXED,
        {"mremap_pud_drops_rss": True},
    ),
    (
        "pin-one-ref",
        "FOLL_PIN of a small folio takes one reference, not the bias",
        MAINLINE,
        {"pin_takes_one_ref": True},
    ),
    (
        "truncate-ignores-pins",
        "dax truncate ignores a pinned DAX page",
        MAINLINE,
        {"truncate_ignores_pins": True},
    ),
    (
        "zap-pmd-no-rss",
        "zap_huge_pmd forgets the RSS update",
        MAINLINE,
        {"zap_pmd_forgets_rss": True},
    ),
    (
        "split-pmd-no-put",
        "file PMD split forgets folio_put",
        MAINLINE,
        {"split_pmd_forgets_ref": True},
    ),
    (
        "zap-pte-no-rmap",
        "zap_present_ptes forgets folio_remove_rmap_ptes",
        MAINLINE,
        {"zap_pte_forgets_rmap": True},
    ),
    (
        "pud-fault-no-ref",
        "vmf_insert_folio_pud forgets folio_get",
        MAINLINE,
        {"fault_pud_forgets_ref": True},
    ),
    (
        "unpin-no-pincount",
        "unpin of a large folio forgets _pincount",
        MAINLINE,
        {"unpin_forgets_pincount": True},
    ),
    (
        "split-pud-no-rmap",
        "__split_huge_pud_locked forgets folio_remove_rmap_pud",
        MAINLINE,
        {"split_pud_forgets_rmap": True},
    ),
    (
        "dax-pmd-no-rss",
        "vmf_insert_folio_pmd forgets add_mm_counter",
        MAINLINE,
        {"dax_pmd_forgets_rss": True},
    ),
    (
        "fork-pte-no-ref",
        "copy_present_ptes forgets folio_ref_add",
        MAINLINE,
        {"fork_pte_skips_ref": True},
    ),
    (
        "cow-no-old-rmap",
        "wp_page_copy forgets folio_remove_rmap_pte on the old page",
        MAINLINE,
        {"cow_forgets_old_rmap": True},
    ),
    (
        "exit-skips-zap",
        "exit_mmap forgets to unmap (leaks everything)",
        MAINLINE,
        {"exit_skips_zap": True},
    ),
    (
        "collapse-no-put",
        "collapse_huge_page forgets to put the old folios",
        MAINLINE,
        {"collapse_forgets_old_ref": True},
    ),
    (
        "dax-pte-double-ref",
        "vmf_insert_page_mkwrite takes two references",
        MAINLINE,
        {"dax_pte_double_ref": True},
    ),
    (
        "zero-pmd-withdraws-dax",
        "zap_huge_pmd withdraws a deposit a DAX zero PMD never had",
        MAINLINE,
        {"dax_zero_pmd_withdraws_deposit": True},
    ),
    (
        "split-ignores-pins",
        "__folio_split skips the refcount freeze check (splits a pinned folio)",
        MAINLINE,
        {"split_ignores_extra_refs": True},
    ),
    (
        "seed-split-pud-no-put",
        "seed's PUD split without the folio_put",
        SEED,
        {"split_pud_forgets_put": True},
    ),
    (
        "zap-pmd-put-early",
        "zap_huge_pmd puts the folio before its last use (mm_counter)",
        MAINLINE,
        {"zap_pmd_put_early": True},
    ),
    (
        "cow-put-early",
        "wp_page_copy drops the old folio's references before copying it",
        MAINLINE,
        {"cow_put_early": True},
    ),
    (
        "truncate-put-early",
        "truncate drops the page cache's references before its last use",
        MAINLINE,
        {"truncate_put_early": True},
    ),
    (
        "unpin-put-early",
        "unpin_user_page puts before updating _pincount",
        MAINLINE,
        {"unpin_put_early": True},
    ),
    (
        "zap-small-no-rss",
        "zap_pte_range forgets add_mm_counter(MM_ANONPAGES) for order-0 anonymous folios",
        MAINLINE,
        {"zap_small_forgets_rss": True},
    ),
    (
        "fork-pte-skips-dup",
        "copy_present_ptes maps an order-0 anon folio in the child without "
        "folio_try_dup_anon_rmap_pte or folio_get",
        MAINLINE,
        {"fork_pte_skips_dup": True},
    ),
    (
        "deferred-no-requeue",
        "deferred_split_scan drops a folio whose split failed",
        MAINLINE,
        {"deferred_split_skips_unqueue": True},
    ),
]

MUTANTS: dict[str, Variant] = {
    name: base.mutate(name, description, **switches)
    for name, description, base, switches in _CATALOGUE
}
