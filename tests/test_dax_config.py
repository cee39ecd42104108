"""Configurations the kernel cannot build, or that have no device-dax: refused with exit 2.

The scenario runner exits 2 for these, so they are tested here rather than as scenarios.

- seed, CONFIG_TRANSPARENT_HUGEPAGE=n CONFIG_HUGETLB_PAGE=n (x86_64 allnoconfig): v1 patch 07
  guards folio_add_file_rmap_pud/folio_remove_rmap_pud only by
  CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD (selected unconditionally on x86_64), so
  HPAGE_PUD_NR expands to BUILD_BUG() (include/linux/huge_mm.h without
  PGTABLE_HAS_HUGE_LEAVES) -- kernel test robot 202406280637.147dyRrV-lkp@intel.com.
- mainline/legacy build that configuration (7.1.8 mm/rmap.c guards with
  CONFIG_TRANSPARENT_HUGEPAGE && CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD; 6.1 had no PUD rmap).
- with HUGETLB_PAGE=y the seed builds: PGTABLE_HAS_HUGE_LEAVES defines HPAGE_PUD_SHIFT.
- drivers/dax/Kconfig: DEV_DAX depends on TRANSPARENT_HUGEPAGE, so a kernel without THP has no
  device-dax: asking for CONFIG_DEV_DAX=y is refused, and a `devdax` device cannot be created.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FOLIOSIM = [sys.executable, "-c", "from foliosim.cli import app; app()"]


def run(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "s.fsim"
    path.write_text(text)
    return subprocess.run(
        [*FOLIOSIM, "run", str(path), *args], capture_output=True, text=True, timeout=60
    )


NO_THP_NO_HUGETLB = "config CONFIG_TRANSPARENT_HUGEPAGE=n CONFIG_HUGETLB_PAGE=n{extra}\ntask A\n"


@pytest.mark.parametrize("how", ["config", "flag"])
def test_seed_allnoconfig_build_bug(tmp_path: Path, how: str) -> None:
    if how == "config":
        proc = run(tmp_path, NO_THP_NO_HUGETLB.format(extra=" variant=seed"))
    else:
        proc = run(tmp_path, NO_THP_NO_HUGETLB.format(extra=""), "--variant", "seed")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stdout + proc.stderr
    assert "CONFIG_TRANSPARENT_HUGEPAGE" in message
    assert "BUILD_BUG" in message
    assert "folio_add_file_rmap_pud" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("variant", ["mainline", "legacy"])
def test_other_variants_build_allnoconfig(tmp_path: Path, variant: str) -> None:
    text = NO_THP_NO_HUGETLB.format(extra="")
    text += "A: m = mmap 8K\nA: write m 4K\nexpect A.rss.anon == 1\n"
    proc = run(tmp_path, text, "--variant", variant)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_seed_builds_with_hugetlb(tmp_path: Path) -> None:
    proc = run(tmp_path, "config variant=seed CONFIG_TRANSPARENT_HUGEPAGE=n\ntask A\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dev_dax_needs_thp_option(tmp_path: Path) -> None:
    proc = run(tmp_path, "config CONFIG_TRANSPARENT_HUGEPAGE=n CONFIG_DEV_DAX=y\n")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stdout + proc.stderr
    assert "CONFIG_DEV_DAX" in message
    assert "CONFIG_TRANSPARENT_HUGEPAGE" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("variant", ["legacy", "seed", "mainline"])
def test_devdax_device_refused_without_thp(tmp_path: Path, variant: str) -> None:
    text = "config CONFIG_TRANSPARENT_HUGEPAGE=n\ndevdax dax0 size=1G align=2M\n"
    proc = run(tmp_path, text, "--variant", variant)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stdout + proc.stderr
    assert "CONFIG_DEV_DAX" in message
    assert "CONFIG_TRANSPARENT_HUGEPAGE" in message
    assert ":2:" in message  # FILE:LINE:COL of the devdax line
