"""foliosim study review: the measured answers, against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from foliosim import study
from foliosim.cli import app
from foliosim.variants import VARIANTS, get_variant

TIB = 1 << 40
GIB = 1 << 30
MIB = 1 << 20


def test_refcount_only_is_a_study_variant_not_a_diff_variant() -> None:
    assert "refcount-only" not in VARIANTS
    assert get_variant("refcount-only").dax_mapcount is False
    assert get_variant("mainline").dax_mapcount is True


def test_vmemmap_bytes_of_a_1tib_device() -> None:
    rows = {r["align"]: r for r in study.vmemmap_study(TIB)["rows"]}
    # 2**28 pages x 64-byte struct page = 2**34 bytes = 16 GiB, whatever the alignment.
    for align in (4096, 2 * MIB, GIB):
        assert rows[align]["plain_bytes"] == 16 * GIB
    # 4K: order-0 pgmap, nothing to optimise.
    assert rows[4096]["optimised_bytes"] == 16 * GIB
    # 1G: 1024 folios x 2 vmemmap pages x 4 KiB = 8 MiB.
    assert rows[GIB]["optimised_bytes"] == 1024 * 2 * 4096 == 8 * MIB
    # 2M: 524288 folios x 2 x 4 KiB = 4 GiB.
    assert rows[2 * MIB]["optimised_bytes"] == 524288 * 2 * 4096 == 4 * GIB


def test_vmemmap_sharing_under_the_optimisation() -> None:
    rows = {r["align"]: r for r in study.vmemmap_study(TIB)["rows"]}
    # 1G folio: 262144 x 64 / 4096 = 4096 vmemmap pages, 2 distinct frames remain.
    assert rows[GIB]["vmemmap_pages_per_folio"] == 4096
    assert rows[GIB]["distinct_vmemmap_pages_per_folio"] == 2
    # 2 frames x 64 struct pages each are initialised.
    assert rows[GIB]["struct_pages_initialised"] == 128
    # Page 200 sits at slot 200 % 64 = 8 of the shared frame; pages 72, 136, ..., 262216-64
    # share it: (262144 - 64) / 64 = 4095 pages in the class, 4094 besides page 200.
    assert rows[GIB]["pages_aliasing_page_200"] == 4094
    # 2M folio: 512 x 64 / 4096 = 8 vmemmap pages; (512 - 64) / 64 = 7 in the class.
    assert rows[2 * MIB]["vmemmap_pages_per_folio"] == 8
    assert rows[2 * MIB]["pages_aliasing_page_200"] == 6
    assert study.vmemmap_frame_of(63, 512, True) == 0
    assert study.vmemmap_frame_of(64, 512, True) == 1
    assert study.vmemmap_frame_of(511, 512, True) == 1
    assert study.vmemmap_frame_of(511, 512, False) == 7


def test_folio_mapcount_cost() -> None:
    rows = {r["case"]: r for r in study.mapcount_cost_study()}
    pud = rows["1G folio, one PUD"]
    assert (pud["large_value"], pud["large_reads"]) == (1, 1)
    assert (pud["summed_value"], pud["summed_reads"]) == (1, 262144 + 1)
    ptes = rows["1G folio, every page by a PTE"]
    assert (ptes["large_value"], ptes["summed_value"], ptes["summed_reads"]) == (
        262144,
        262144,
        262145,
    )
    pmd = rows["2M folio, one PMD"]
    assert (pmd["large_value"], pmd["summed_reads"]) == (1, 513)
    small = rows["2M folio, every page by a PTE"]
    assert (small["large_value"], small["large_reads"], small["summed_reads"]) == (512, 1, 513)


def test_refcount_only_devdax_pud() -> None:
    o = study.run_scenario("devdax-1g-pud")
    main, ro = o.values["mainline"][-1]["A:m"], o.values["refcount-only"][-1]["A:m"]
    # idle device-dax reference 1 + the PUD's reference; RSS 1G / 4K pages.
    assert main["refcount"] == ro["refcount"] == 2
    assert main["rss.file"] == ro["rss.file"] == 262144
    assert (main["mapcount"], main["entire_mapcount"], main["vmstat.nr_mapped"]) == (1, 1, 262144)
    assert (ro["mapcount"], ro["entire_mapcount"], ro["vmstat.nr_mapped"]) == (0, 0, 0)
    assert o.invariants["mainline"] == {}
    assert set(o.invariants["refcount-only"]) == {
        "large_mapcount",
        "entire_mapcount",
        "nr_pages_mapped",
        "vmstat",
    }
    assert "refcount" not in o.differing["A:m"] and "kpagecount" not in o.differing["A:m"]


def test_refcount_only_sharing_and_busy() -> None:
    o = study.run_scenario("fsdax-pmd-two-tasks")
    main, ro = o.values["mainline"][-1]["A:m"], o.values["refcount-only"][-1]["A:m"]
    # fs-dax idles at 0: two PMD mappings = refcount 2.
    assert main["refcount"] == ro["refcount"] == 2
    assert (main["maybe_mapped_shared"], main["smaps_shared"], main["dax_busy_page"]) == (1, 1, 0)
    assert (ro["maybe_mapped_shared"], ro["smaps_shared"], ro["dax_busy_page"]) == (0, 0, 1)
    pin = study.run_scenario("fsdax-pin-truncate")
    assert pin.outputs["mainline"] == pin.outputs["refcount-only"] == ["truncate: EBUSY"]


def test_mixed_pud_pmd_is_refused_at_every_layer() -> None:
    b = study.mixed_pud_pmd_study()
    outputs = [s["output"] for s in b["device_level"]]
    assert outputs == [["B: mmap: EINVAL"], [], ["B: munmap: EINVAL"]]
    assert b["dev_dax_huge_fault_pmd"] == "SIGBUS"
    assert b["vmf_insert_folio_pmd"]["result"] == "SIGBUS"
    assert b["folio_add_file_rmap_pmd"]["accepted"] is False
    assert "262144 pages" in b["folio_add_file_rmap_pmd"]["reports"][0]
    forced = b["forced"]
    assert forced["invariants"] == ["pud-and-pmd"]
    assert forced["counters_after"]["entire_mapcount"] == 2
    assert forced["precise_mapcount_page_1000"] == 2
    assert forced["entries_mapping_page_1000"] == 1


def test_cli_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "review.md"
    result = CliRunner().invoke(app, ["study", "review", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("# Patch 07 review questions")
    assert "Generated by `foliosim study review --output" in text
    assert "| 1 GiB | 1024 | True | 16 GiB | 8 MiB |" in text
