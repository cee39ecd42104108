"""Geometry and Kconfig: page sizes, page-table levels, HPAGE_*_ORDER and what may build.

Models include/linux/huge_mm.h (HPAGE_PMD_SHIFT/HPAGE_PUD_SHIFT and the derived ORDER/NR
macros), arch/x86/include/asm/pgtable_64_types.h and arch/arm64/include/asm/pgtable-hwdef.h
(shifts per level), and the Kconfig dependencies of mm/Kconfig, fs/Kconfig,
drivers/dax/Kconfig and arch/Kconfig in Linux 7.1.8.

A configuration the kernel could not build is refused with :class:`BuildError`, naming the
option, as the kernel's BUILD_BUG() or Kconfig "depends on" would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

ARCHES = ("x86_64", "arm64")
GRANULES = {"4K": 12, "16K": 14, "64K": 16}


class BuildError(Exception):
    """A configuration the kernel cannot build (BUILD_BUG or an unmet Kconfig dependency)."""


@dataclass(frozen=True)
class Geometry:
    """Page-table geometry of one architecture configuration.

    Shifts follow the kernel: each level below the top indexes PAGE_SHIFT-3 bits (8-byte
    entries), so PMD_SHIFT = PAGE_SHIFT + (PAGE_SHIFT-3) and PUD_SHIFT adds one more level.
    """

    arch: str
    page_shift: int
    levels: int

    @cached_property
    def bits_per_level(self) -> int:
        return self.page_shift - 3

    @cached_property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @cached_property
    def ptrs_per_pte(self) -> int:
        return 1 << self.bits_per_level

    @cached_property
    def pmd_shift(self) -> int:
        return self.page_shift + self.bits_per_level

    @cached_property
    def pud_shift(self) -> int:
        return self.pmd_shift + self.bits_per_level

    @cached_property
    def pmd_size(self) -> int:
        return 1 << self.pmd_shift

    @cached_property
    def pud_size(self) -> int:
        return 1 << self.pud_shift

    @cached_property
    def pmd_order(self) -> int:
        return self.pmd_shift - self.page_shift

    @cached_property
    def pud_order(self) -> int:
        return self.pud_shift - self.page_shift

    @cached_property
    def va_bits(self) -> int:
        """Virtual address bits: page_shift + levels * bits_per_level (48 / 57 on x86-64)."""
        if self.arch == "arm64" and self.page_shift == 14 and self.levels == 4:
            return 47
        return min(self.page_shift + self.levels * self.bits_per_level, 57)

    @cached_property
    def task_size(self) -> int:
        """TASK_SIZE_MAX of a 64-bit task: the top of user space minus one guard page on x86."""
        if self.arch == "x86_64":
            return (1 << (self.va_bits - 1)) - self.page_size
        return 1 << self.va_bits


@dataclass
class KernelConfig:
    """The configuration of the modelled kernel: geometry, THP policy and Kconfig switches."""

    geometry: Geometry
    options: dict[str, bool] = field(default_factory=dict)
    thp: str = "madvise"
    mthp: dict[int, str] = field(default_factory=dict)
    variant: str = "mainline"
    memory_bytes: int = 64 << 30
    swap_bytes: int = 0
    # How the model keeps order-0 anonymous pages that batched faults create: "arrays"
    # (kernel/smallpages.py) or "objects" (a Folio each). Not a kernel option: both mean
    # the same; the switch exists to compare them.
    small_pages: str = "arrays"

    def enabled(self, option: str) -> bool:
        return self.options.get(option, False)

    # -- include/linux/huge_mm.h --------------------------------------------------------
    def hpage_pmd_order(self) -> int:
        """HPAGE_PMD_ORDER; a BUILD_BUG without PGTABLE_HAS_HUGE_LEAVES."""
        if not self.enabled("PGTABLE_HAS_HUGE_LEAVES"):
            raise BuildError(
                "HPAGE_PMD_SHIFT is BUILD_BUG() without CONFIG_TRANSPARENT_HUGEPAGE "
                "(or CONFIG_HUGETLB_PAGE)"
            )
        return self.geometry.pmd_order

    def hpage_pud_order(self) -> int:
        """HPAGE_PUD_ORDER; a BUILD_BUG without PGTABLE_HAS_HUGE_LEAVES (seed's robot report)."""
        if not self.enabled("PGTABLE_HAS_HUGE_LEAVES"):
            raise BuildError(
                "HPAGE_PUD_SHIFT is BUILD_BUG() without CONFIG_TRANSPARENT_HUGEPAGE "
                "(or CONFIG_HUGETLB_PAGE): BUILD_BUG failed in folio_add_file_rmap_pud"
            )
        return self.geometry.pud_order

    @cached_property  # the configuration never changes once built
    def pmd_nr(self) -> int:
        return 1 << self.geometry.pmd_order

    @cached_property  # the configuration never changes once built
    def pud_nr(self) -> int:
        return 1 << self.geometry.pud_order

    @cached_property  # the configuration never changes once built
    def thp_pud(self) -> bool:
        """PUD-level huge leaves of THP/DAX exist: THP && HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD."""
        return self.enabled("TRANSPARENT_HUGEPAGE") and self.enabled(
            "HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD"
        )

    @cached_property  # the configuration never changes once built
    def page_mapcount(self) -> bool:
        return self.enabled("PAGE_MAPCOUNT")


# Kconfig symbols a scenario may set, with what they depend on (mm/Kconfig, fs/Kconfig,
# drivers/dax/Kconfig, arch/Kconfig in 7.1.8).
USER_OPTIONS = {
    "TRANSPARENT_HUGEPAGE",
    "HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD",
    "NO_PAGE_MAPCOUNT",
    "ZONE_DEVICE",
    "FS_DAX",
    "FS_DAX_PMD",
    "DEV_DAX",
    "DEBUG_VM",
    "HUGETLB_PAGE",
    "PERSISTENT_HUGE_ZERO_FOLIO",
    "ARCH_ENABLE_THP_MIGRATION",
}


def make_geometry(arch: str, levels: int, granule: str) -> Geometry:
    """Build the geometry; arm64 may choose a granule, x86-64 is always 4K."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r} (x86_64, arm64)")
    if granule not in GRANULES:
        raise ValueError(f"unknown granule {granule!r} (4K, 16K, 64K)")
    if arch == "x86_64" and granule != "4K":
        raise ValueError("x86_64 only has 4K pages")
    if levels not in (4, 5) if arch == "x86_64" else levels not in (3, 4, 5):
        raise ValueError(f"{arch} cannot have {levels} page-table levels")
    return Geometry(arch=arch, page_shift=GRANULES[granule], levels=levels)


def default_options(arch: str) -> dict[str, bool]:
    """Options as a distribution kernel of 7.1.8 sets them for this arch."""
    return {
        "TRANSPARENT_HUGEPAGE": True,
        # arch/x86/Kconfig selects it for X86_64; arch/arm64/Kconfig does not.
        "HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD": arch == "x86_64",
        "NO_PAGE_MAPCOUNT": False,
        "ZONE_DEVICE": True,
        "FS_DAX": True,
        "FS_DAX_PMD": True,
        "DEV_DAX": True,
        "DEBUG_VM": False,
        "HUGETLB_PAGE": True,
        "PERSISTENT_HUGE_ZERO_FOLIO": False,
        "ARCH_ENABLE_THP_MIGRATION": True,
    }


def resolve_options(arch: str, overrides: dict[str, bool]) -> dict[str, bool]:
    """Apply the user's CONFIG_X settings and derive dependent symbols as Kconfig does.

    Derived: PGTABLE_HAS_HUGE_LEAVES = THP || HUGETLB_PAGE; PAGE_MAPCOUNT = !NO_PAGE_MAPCOUNT;
    MM_ID selected by THP; NO_PAGE_MAPCOUNT and FS_DAX_PMD and DEV_DAX depend on THP, so they
    silently turn off without it (Kconfig drops symbols whose dependencies are unmet).
    """
    opts = default_options(arch)
    opts.update(overrides)
    if arch == "arm64" and opts.get("HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD"):
        raise BuildError(
            "CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD is not selectable on arm64 "
            "(arch/arm64/Kconfig does not select it)"
        )
    thp = opts["TRANSPARENT_HUGEPAGE"]
    if not thp:
        for dependent in ("NO_PAGE_MAPCOUNT", "FS_DAX_PMD", "DEV_DAX"):
            if overrides.get(dependent):
                raise BuildError(f"CONFIG_{dependent} depends on CONFIG_TRANSPARENT_HUGEPAGE")
            opts[dependent] = False
    if not opts["ZONE_DEVICE"]:
        for dependent in ("FS_DAX", "DEV_DAX", "FS_DAX_PMD"):
            if overrides.get(dependent):
                raise BuildError(f"CONFIG_{dependent} depends on CONFIG_ZONE_DEVICE")
            opts[dependent] = False
    if not opts["FS_DAX"]:
        opts["FS_DAX_PMD"] = False
    opts["PGTABLE_HAS_HUGE_LEAVES"] = thp or opts["HUGETLB_PAGE"]
    opts["PAGE_MAPCOUNT"] = not opts["NO_PAGE_MAPCOUNT"]
    opts["MM_ID"] = thp
    return opts


def check_variant_builds(cfg: KernelConfig) -> None:
    """Refuse a kernel the variant's source could not compile.

    The seed (v1 patch 07) guarded folio_add_file_rmap_pud/folio_remove_rmap_pud only with
    CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD, which x86-64 selects unconditionally, so with
    TRANSPARENT_HUGEPAGE=n (x86_64 allnoconfig) HPAGE_PUD_NR expanded to BUILD_BUG() at
    mm/rmap.c:1513 and :1660 (kernel test robot, 202406280637.147dyRrV-lkp@intel.com).
    Mainline 7.1.8 guards both symbols, so it builds.
    """
    if (
        cfg.variant == "seed"
        and cfg.enabled("HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD")
        and not cfg.enabled("TRANSPARENT_HUGEPAGE")
        and not cfg.enabled("HUGETLB_PAGE")
    ):
        raise BuildError(
            "mm/rmap.c:1513: BUILD_BUG failed: HPAGE_PUD_NR used by folio_add_file_rmap_pud "
            "with CONFIG_TRANSPARENT_HUGEPAGE=n (guarded only by "
            "CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD)"
        )
