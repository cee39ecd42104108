"""/proc renderers in the formats of Linux 7.1.8.

- ``task_mmu``: /proc/PID/status (memory lines), maps, smaps, smaps_rollup, pagemap
  (fs/proc/task_mmu.c)
- ``page``: /proc/kpagecount, /proc/kpageflags (fs/proc/page.c)
- ``vm``: /proc/vmstat (mm/vmstat.c), /proc/meminfo huge-page lines (fs/proc/meminfo.c)

Side effect kept from the kernel: smaps, smaps_rollup, pagemap and numa_maps walk page tables
with walk_page_range(), whose walk_pud_range() calls split_huge_pud() on a huge PUD when the
walk has no pud_entry handler (none of these has one): reading them over a PUD-mapped
device-dax range unmaps that PUD (mm/pagewalk.c).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.procfs.page import kpage_bytes, render_kpage
from foliosim.procfs.task_mmu import (
    pagemap_bytes,
    render_maps,
    render_pagemap,
    render_smaps,
    show_smaps_rollup,
    task_mem,
)
from foliosim.procfs.vm import meminfo_proc_show, vmstat_show

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task

TASK_FILES = ("status", "maps", "smaps", "smaps_rollup", "pagemap", "numa_maps")
GLOBAL_FILES = ("kpagecount", "kpageflags", "vmstat", "meminfo")
PROC_FILES = TASK_FILES + GLOBAL_FILES
WALKING = ("smaps", "smaps_rollup", "pagemap", "numa_maps")

__all__ = [
    "GLOBAL_FILES",
    "PROC_FILES",
    "TASK_FILES",
    "kpage_bytes",
    "pagemap_bytes",
    "render_proc",
    "split_puds_for_walk",
    "task_pfn_ranges",
]


def split_puds_for_walk(k: Kernel, task: Task) -> None:
    """walk_pud_range() (mm/pagewalk.c, 7.1.8): with no pud_entry handler, every huge PUD the
    walk meets is split (split_huge_pud -> __split_huge_pud)."""
    for vma in list(task.mm.vmas):
        for pud_no in [
            n
            for n in task.mm.pgtables.pud_leaves
            if vma.start <= n << k.geometry.pud_shift < vma.end
        ]:
            huge_memory.__split_huge_pud(k, vma, pud_no << k.geometry.pud_shift)


def task_pfn_ranges(k: Kernel, task: Task) -> list[tuple[int, int]]:
    """The PFN ranges a task's page tables map, merged and sorted: what page-types -p PID
    would look up in /proc/kpageflags."""
    from foliosim.procfs.task_mmu import PM_PFRAME_MASK, PM_PRESENT, pagemap_entries

    pfns: set[int] = set()
    for vma in task.mm.vmas:
        entries = pagemap_entries(k, task, vma.start, vma.end)
        present = entries[(entries & PM_PRESENT) != 0] & PM_PFRAME_MASK
        pfns.update(int(p) for p in present.tolist())
    ranges: list[tuple[int, int]] = []
    for pfn in sorted(pfns):
        if ranges and ranges[-1][0] + ranges[-1][1] == pfn:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + 1)
        else:
            ranges.append((pfn, 1))
    return ranges


def render_proc(k: Kernel, task: Task | None, name: str) -> str:
    """The text of /proc/PID/NAME (task files) or /proc/NAME (global files)."""
    if name == "vmstat":
        return vmstat_show(k)
    if name == "meminfo":
        return meminfo_proc_show(k)
    if task is None:
        raise ValueError(f"/proc/PID/{name} needs a task")
    if task.exited:
        return f"/proc/{task.pid}/{name}: No such process"
    if name in WALKING:
        split_puds_for_walk(k, task)
    if name == "status":
        return task_mem(k, task)
    if name == "maps":
        return render_maps(k, task)
    if name == "smaps":
        return render_smaps(k, task)
    if name == "smaps_rollup":
        return show_smaps_rollup(k, task)
    if name == "pagemap":
        return render_pagemap(k, task)
    if name in ("kpagecount", "kpageflags"):
        split_puds_for_walk(k, task)  # the PFNs are found by reading pagemap
        return render_kpage(k, task_pfn_ranges(k, task), count=name == "kpagecount")
    if name == "numa_maps":
        return "".join(f"{v.start:08x} default\n" for v in task.mm.vmas)
    raise ValueError(f"unknown /proc file '{name}'")
