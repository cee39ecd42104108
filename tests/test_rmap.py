"""mm/rmap.c accounting at PTE, PMD and PUD level, values from the 7.1.8 source.

Expected numbers follow __folio_add_rmap/__folio_remove_rmap: per-page mapcounts and
_nr_pages_mapped for PTEs, the entire mapcount plus ENTIRELY_MAPPED for PMD/PUD, the large
mapcount counting entries, NR_FILE_MAPPED counting pages newly mapped, and NR_FILE_PMDMAPPED
only for PMD mappings (the seed also counted PUD ones).
"""

from __future__ import annotations

from conftest import make_kernel

from foliosim.kernel import rmap
from foliosim.kernel.mm import MM, VM, VMA
from foliosim.kernel.physmem import ENTIRELY_MAPPED


def file_vma(k) -> VMA:  # type: ignore[no-untyped-def]
    mm = MM(k.geometry.ptrs_per_pte, k.mmap_base(), k.physmem)
    return VMA(mm, 0, 1 << 40, VM.READ | VM.SHARED)


def test_pte_maps_count_pages_once() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(9)
    vma = file_vma(k)
    rmap.folio_add_file_rmap_ptes(k, folio, 0, 16, vma)
    assert folio.large_mapcount == 16
    assert folio.folio_nr_pages_mapped() == 16
    assert k.vmstat.counters["nr_mapped"] == 16
    # A second mapping of the same pages: mapcounts grow, NR_FILE_MAPPED does not.
    rmap.folio_add_file_rmap_ptes(k, folio, 0, 16, vma)
    assert folio.large_mapcount == 32
    assert folio.precise_page_mapcount(3) == 2
    assert folio.folio_nr_pages_mapped() == 16
    assert k.vmstat.counters["nr_mapped"] == 16


def test_pmd_map_over_pte_mapped_pages_counts_the_rest() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(9)
    vma = file_vma(k)
    rmap.folio_add_file_rmap_ptes(k, folio, 0, 100, vma)
    rmap.folio_add_file_rmap_pmd(k, folio, vma)
    # nr = folio_nr_pages - pages already PTE-mapped = 512 - 100
    assert k.vmstat.counters["nr_mapped"] == 512
    assert folio.nr_pages_mapped_raw == ENTIRELY_MAPPED + 100
    assert folio.entire_mapcount == 1
    assert folio.large_mapcount == 101
    assert k.vmstat.counters["nr_file_pmdmapped"] == 512
    rmap.folio_remove_rmap_pmd(k, folio, vma)
    assert k.vmstat.counters["nr_mapped"] == 100
    assert k.vmstat.counters["nr_file_pmdmapped"] == 0


def test_pud_rmap_is_an_entire_mapping_without_pmdmapped() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(18)
    vma = file_vma(k)
    assert rmap.folio_add_file_rmap_pud(k, folio, vma)
    assert folio.entire_mapcount == 1
    assert folio.large_mapcount == 1
    assert folio.entirely_mapped()
    assert folio.page_mapcounts is None  # no per-page state for a PUD mapping
    assert k.vmstat.counters["nr_mapped"] == 262144
    assert k.vmstat.counters.get("nr_file_pmdmapped", 0) == 0
    rmap.folio_remove_rmap_pud(k, folio, vma)
    assert folio.entire_mapcount == 0
    assert k.vmstat.counters["nr_mapped"] == 0


def test_seed_pud_rmap_feeds_nr_file_pmdmapped() -> None:
    k = make_kernel("seed")
    folio = k.physmem.alloc_folio(18)
    vma = file_vma(k)
    rmap.folio_add_file_rmap_pud(k, folio, vma)
    assert k.vmstat.counters["nr_file_pmdmapped"] == 262144


def test_pud_rmap_of_wrong_size_warns() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(9)
    assert not rmap.folio_add_file_rmap_pud(k, folio, file_vma(k))
    assert folio.entire_mapcount == 0
    assert any("HPAGE_PUD_NR" in r.message for r in k.reports.reports)


def test_anon_pud_rmap_warns_once() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(18)
    folio.anon = True
    vma = file_vma(k)
    rmap.folio_add_anon_rmap_pud(k, folio, vma)
    rmap.folio_add_anon_rmap_pud(k, folio, vma)
    warnings = [r for r in k.reports.reports if "anonymous PUD" in r.message]
    assert len(warnings) == 1


def test_partial_unmap_of_anon_thp_queues_deferred_split() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(9)
    vma = file_vma(k)
    rmap.folio_add_new_anon_rmap(k, folio, vma)
    assert k.vmstat.counters["nr_anon_transparent_hugepages"] == 512
    rmap.folio_add_anon_rmap_ptes(k, folio, 0, 512, vma, True)
    rmap.folio_remove_rmap_pmd(k, folio, vma)
    assert k.vmstat.counters["nr_anon_transparent_hugepages"] == 0
    assert k.vmstat.counters["nr_anon_pages"] == 512
    rmap.folio_remove_rmap_ptes(k, folio, 7, 1, vma)
    assert folio.partially_mapped and folio.deferred
    assert k.vmstat.counters["thp_deferred_split_page"] == 1
    rmap.folio_remove_rmap_ptes(k, folio, 8, 1, vma)
    assert k.vmstat.counters["thp_deferred_split_page"] == 1  # counted once
    assert k.vmstat.counters["nr_anon_pages"] == 510


def test_no_page_mapcount_counts_whole_folio() -> None:
    k = make_kernel(NO_PAGE_MAPCOUNT=True)
    folio = k.physmem.alloc_folio(9)
    vma = file_vma(k)
    rmap.folio_add_file_rmap_ptes(k, folio, 0, 1, vma)
    # Without per-page mapcounts the first mapping accounts the whole folio.
    assert k.vmstat.counters["nr_mapped"] == 512
    assert folio.page_mapcounts is None
    rmap.folio_add_file_rmap_ptes(k, folio, 1, 1, vma)
    assert k.vmstat.counters["nr_mapped"] == 512
    rmap.folio_remove_rmap_ptes(k, folio, 0, 1, vma)
    rmap.folio_remove_rmap_ptes(k, folio, 1, 1, vma)
    assert k.vmstat.counters["nr_mapped"] == 0


def test_average_page_mapcount() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(9)
    vma = file_vma(k)
    rmap.folio_add_file_rmap_pmd(k, folio, vma)
    rmap.folio_add_file_rmap_ptes(k, folio, 0, 512, vma)
    # (513 - 1) / 512 rounded = 1, plus entire 1 = 2
    assert folio.average_page_mapcount() == 2


def test_try_dup_anon_refuses_pinned_exclusive() -> None:
    k = make_kernel()
    folio = k.physmem.alloc_folio(0)
    vma = file_vma(k)
    rmap.folio_add_new_anon_rmap(k, folio, vma)
    assert not rmap.folio_try_dup_anon_rmap_ptes(k, folio, 0, 1, vma, maybe_pinned=True)
    assert folio.mapcount_small == 1
    assert rmap.folio_try_dup_anon_rmap_ptes(k, folio, 0, 1, vma, maybe_pinned=False)
    assert folio.mapcount_small == 2
    assert not folio.page_exclusive(0)


def test_file_rmap_walk_finds_what_a_full_scan_finds() -> None:
    """rmap_walk_file visits only the VMAs of the folio's file at its linear addresses; after
    every statement of fuzzed programs (mremap, fork, COW, partial munmap, truncate) it finds
    the same entries as scanning every page table of every mm."""
    from foliosim.fuzz.program import Generator
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.walk import file_mappings_of, mappings_of
    from foliosim.scenario.runner import Run, StmtResult, build_kernel, run_statement
    from foliosim.scenario.statements import parse_text

    compared = 0
    for seed in range(12):
        stmts = parse_text("<t>", "\n".join(Generator(seed).program(60)) + "\n")
        k = build_kernel("<t>", stmts, None)
        run = Run("<t>", k)
        k.pinsets = run.pins  # type: ignore[attr-defined]
        geo = k.geometry
        for stmt in stmts:
            if stmt.kind in ("config", "memory"):
                continue
            run_statement(run, stmt, StmtResult(stmt.line, stmt.source))
            mms = k.live_mms()
            for file in k.files.values():
                if not isinstance(file, BackingFile):
                    continue
                for folio in file.cache.values():
                    scan = mappings_of(mms, folio, geo.pmd_shift, geo.pud_shift, geo.page_shift)
                    walk = file_mappings_of(mms, folio, geo.pmd_shift, geo.page_shift)

                    def key(r):  # type: ignore[no-untyped-def]
                        return (r.mm.id, r.addr, r.level, r.page, r.nr)

                    assert sorted(map(key, walk)) == sorted(map(key, scan)), (seed, stmt.source)
                    compared += len(scan)
    assert compared > 1000  # the programs did map page-cache and shmem folios
