"""/proc/vmstat (mm/vmstat.c) and the huge-page lines of /proc/meminfo (fs/proc/meminfo.c),
Linux 7.1.8, for the counters the model keeps (a real kernel prints many more)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel.reports import EVENTS, NODE_STATS

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel

# The model's items in the order of vmstat_text[] (mm/vmstat.c, 7.1.8).
VMSTAT_ORDER = NODE_STATS + EVENTS


def vmstat_values(k: Kernel) -> dict[str, int]:
    """The items vmstat_show() would print, as printed (THP node items divided by
    HPAGE_PMD_NR, vmstat_item_print_in_thp); items the configuration lacks are left out."""
    from foliosim.scenario.queries import vmstat_value

    out: dict[str, int] = {}
    for name in VMSTAT_ORDER:
        value = vmstat_value(k, name)
        if isinstance(value, int):
            out[name] = value
    return out


def vmstat_show(k: Kernel) -> str:
    """vmstat_show() (mm/vmstat.c, 7.1.8): ``name value`` per line."""
    return "".join(f"{name} {value}\n" for name, value in vmstat_values(k).items())


def meminfo_proc_show(k: Kernel) -> str:
    """The CONFIG_TRANSPARENT_HUGEPAGE block of meminfo_proc_show() (fs/proc/meminfo.c,
    7.1.8): show_val_kb() of NR_ANON_THPS, NR_SHMEM_THPS, NR_SHMEM_PMDMAPPED, NR_FILE_THPS and
    NR_FILE_PMDMAPPED, which the kernel keeps in base pages."""
    if not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        return ""
    c = k.vmstat.counters
    shift = k.page_shift - 10
    rows = (
        ("AnonHugePages:  ", c.get("nr_anon_transparent_hugepages", 0)),
        ("ShmemHugePages: ", c.get("nr_shmem_hugepages", 0)),
        ("ShmemPmdMapped: ", c.get("nr_shmem_pmdmapped", 0)),
        ("FileHugePages:  ", c.get("nr_file_hugepages", 0)),
        ("FilePmdMapped:  ", c.get("nr_file_pmdmapped", 0)),
    )
    return "".join(f"{label}{pages << shift:>8} kB\n" for label, pages in rows)
