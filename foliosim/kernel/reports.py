"""Kernel-style WARN/BUG reports and vmstat counters.

Where the kernel would WARN_ON, VM_WARN_ON, BUG_ON or print "BUG: Bad rss-counter", the model
records a :class:`Report` instead of crashing or carrying on silently. VM_* reports exist only
with CONFIG_DEBUG_VM=y, as in include/linux/mmdebug.h; WARN_ON_ONCE reports once per site.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    """One kernel report: its kind (WARNING, BUG, ...), where, and the message."""

    kind: str
    site: str
    message: str
    line: int = 0
    details: str = ""

    def render(self) -> str:
        head = f"{self.kind}: {self.message}"
        if self.kind == "WARNING":
            head = f"WARNING: CPU: 0 at {self.site}: {self.message}"
        elif self.kind.startswith("BUG") and self.site:
            head = f"{self.kind}: {self.message} ({self.site})"
        return head + (f"\n{self.details}" if self.details else "")


@dataclass
class ReportLog:
    """Every report since boot, with the WARN_ON_ONCE sites that already fired."""

    debug_vm: bool = False
    reports: list[Report] = field(default_factory=list)
    once_fired: set[str] = field(default_factory=set)
    current_line: int = 0

    def add(self, kind: str, site: str, message: str, details: str = "") -> Report:
        report = Report(kind, site, message, self.current_line, details)
        self.reports.append(report)
        return report

    def warn(self, site: str, message: str, *, once: bool = False, details: str = "") -> None:
        """WARN_ON / WARN_ON_ONCE."""
        if once:
            if site in self.once_fired:
                return
            self.once_fired.add(site)
        self.add("WARNING", site, message, details)

    def vm_warn(self, site: str, message: str, *, once: bool = False, details: str = "") -> None:
        """VM_WARN_ON*: compiled out without CONFIG_DEBUG_VM."""
        if self.debug_vm:
            self.warn(site, message, once=once, details=details)

    def bug(self, site: str, message: str, details: str = "") -> None:
        """BUG_ON: the kernel would oops; the model records it and goes on."""
        self.add("kernel BUG", site, message, details)

    def vm_bug(self, site: str, message: str, details: str = "") -> None:
        """VM_BUG_ON*: compiled out without CONFIG_DEBUG_VM."""
        if self.debug_vm:
            self.bug(site, message, details)


# /proc/vmstat names the model maintains, in the units the kernel keeps them (pages). Those in
# THP_PRINTED_PER_PMD are divided by HPAGE_PMD_NR on printing (mm/vmstat.c,
# vmstat_item_print_in_thp()).
NODE_STATS = (  # in the order of vmstat_text[] (mm/vmstat.c, 7.1.8)
    "nr_anon_pages",  # NR_ANON_MAPPED
    "nr_mapped",  # NR_FILE_MAPPED
    "nr_file_pages",
    "nr_shmem",
    "nr_shmem_hugepages",
    "nr_shmem_pmdmapped",
    "nr_file_hugepages",
    "nr_file_pmdmapped",
    "nr_anon_transparent_hugepages",  # NR_ANON_THPS
    "nr_foll_pin_acquired",
    "nr_foll_pin_released",
)
THP_PRINTED_PER_PMD = frozenset(
    {
        "nr_anon_transparent_hugepages",
        "nr_shmem_hugepages",
        "nr_shmem_pmdmapped",
        "nr_file_hugepages",
        "nr_file_pmdmapped",
    }
)
EVENTS = (  # in the order of vmstat_text[] (mm/vmstat.c, 7.1.8)
    "pgfault",
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_file_alloc",
    "thp_file_fallback",
    "thp_file_mapped",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_underused_split_page",
    "thp_split_pmd",
    "thp_scan_exceed_none_pte",
    "thp_split_pud",
    "thp_zero_page_alloc",
    "thp_zero_page_alloc_failed",
)
# Items that exist only with some configuration (include/linux/vm_event_item.h).
THP_ONLY = frozenset(e for e in EVENTS if e.startswith("thp_")) | THP_PRINTED_PER_PMD


@dataclass
class VmStat:
    """Node counters and VM events, both as running totals since boot."""

    counters: Counter[str] = field(default_factory=Counter)

    def mod(self, item: str, delta: int) -> None:
        if delta:
            self.counters[item] += delta

    def count_event(self, item: str, n: int = 1) -> None:
        self.counters[item] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)
