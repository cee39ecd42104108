"""Geometry and Kconfig: HPAGE_* values per architecture and what may build.

The build robot's report on the seed (x86_64 allnoconfig) is the reason this runs a matrix.
"""

from __future__ import annotations

import itertools

import pytest
from conftest import run_text

from foliosim.config import (
    BuildError,
    KernelConfig,
    check_variant_builds,
    make_geometry,
    resolve_options,
)
from foliosim.scenario.parser import ScenarioError


@pytest.mark.parametrize(
    ("arch", "granule", "levels", "pmd_order", "pud_order"),
    [
        ("x86_64", "4K", 4, 9, 18),
        ("x86_64", "4K", 5, 9, 18),
        ("arm64", "4K", 4, 9, 18),
        ("arm64", "16K", 4, 11, 22),
        ("arm64", "64K", 3, 13, 26),
    ],
)
def test_orders(arch: str, granule: str, levels: int, pmd_order: int, pud_order: int) -> None:
    geo = make_geometry(arch, levels, granule)
    assert geo.pmd_order == pmd_order
    assert geo.pud_order == pud_order
    cfg = KernelConfig(geo, resolve_options(arch, {}))
    assert cfg.hpage_pmd_order() == pmd_order
    assert cfg.pud_nr == 1 << pud_order


def test_x86_hpage_pud_nr() -> None:
    cfg = KernelConfig(make_geometry("x86_64", 4, "4K"), resolve_options("x86_64", {}))
    assert cfg.pud_nr == 262144
    assert cfg.pmd_nr == 512
    assert cfg.thp_pud


def test_arm64_has_no_pud_thp() -> None:
    cfg = KernelConfig(make_geometry("arm64", 4, "4K"), resolve_options("arm64", {}))
    assert not cfg.thp_pud
    with pytest.raises(BuildError):
        resolve_options("arm64", {"HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD": True})


def test_hpage_pud_without_huge_leaves_is_build_bug() -> None:
    opts = resolve_options("x86_64", {"TRANSPARENT_HUGEPAGE": False, "HUGETLB_PAGE": False})
    cfg = KernelConfig(make_geometry("x86_64", 4, "4K"), opts)
    with pytest.raises(BuildError, match="CONFIG_TRANSPARENT_HUGEPAGE"):
        cfg.hpage_pud_order()


def test_seed_allnoconfig_fails_like_the_robot_said() -> None:
    opts = resolve_options("x86_64", {"TRANSPARENT_HUGEPAGE": False, "HUGETLB_PAGE": False})
    cfg = KernelConfig(make_geometry("x86_64", 4, "4K"), opts, variant="seed")
    with pytest.raises(BuildError, match="folio_add_file_rmap_pud"):
        check_variant_builds(cfg)
    check_variant_builds(KernelConfig(cfg.geometry, opts, variant="mainline"))


def test_seed_allnoconfig_scenario_exits_2_naming_the_option() -> None:
    with pytest.raises(ScenarioError, match="CONFIG_TRANSPARENT_HUGEPAGE"):
        run_text(
            "config variant=seed CONFIG_TRANSPARENT_HUGEPAGE=n CONFIG_HUGETLB_PAGE=n\ntask A\n"
        )


def test_dependent_options_drop_without_thp() -> None:
    opts = resolve_options("x86_64", {"TRANSPARENT_HUGEPAGE": False})
    assert not opts["DEV_DAX"] and not opts["FS_DAX_PMD"] and not opts["NO_PAGE_MAPCOUNT"]
    assert opts["PAGE_MAPCOUNT"]
    with pytest.raises(BuildError, match="CONFIG_DEV_DAX depends on CONFIG_TRANSPARENT_HUGEPAGE"):
        resolve_options("x86_64", {"TRANSPARENT_HUGEPAGE": False, "DEV_DAX": True})


MATRIX = list(
    itertools.product(
        ["x86_64", "arm64"], ["y", "n"], ["page", "nopage"], ["legacy", "seed", "mainline"]
    )
)

WORKLOAD = """\
config arch={arch} CONFIG_TRANSPARENT_HUGEPAGE={thp} mapcount={mapcount} variant={variant}
config thp=always
task A
A: m = mmap 4M
A: write m 4M
A: fork B
B: write m 4K
A: munmap m+4K 4K
A: madvise m 2M DONTNEED
shrink
B: exit
A: exit
check
"""


@pytest.mark.parametrize(("arch", "thp", "mapcount", "variant"), MATRIX)
def test_model_runs_across_configurations(arch: str, thp: str, mapcount: str, variant: str) -> None:
    text = WORKLOAD.format(arch=arch, thp=thp, mapcount=mapcount, variant=variant)
    if thp == "n" and mapcount == "nopage":
        with pytest.raises(ScenarioError, match="NO_PAGE_MAPCOUNT"):
            run_text(text)
        return
    run = run_text(text)
    assert not run.failed, [v.render() for v in run.violations]
    # Everything was unmapped at exit: no RSS report, nothing left mapped.
    assert not [r for r in run.kernel.reports.reports if "rss-counter" in r.message]
