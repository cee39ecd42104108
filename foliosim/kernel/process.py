"""Process lifetime: fork and exit (kernel/fork.c, mm/mmap.c exit_mmap, Linux 7.1.8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel.fork import dup_mmap
from foliosim.kernel.mm import RSS_NAMES
from foliosim.kernel.zap import unmap_page_range

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task


def do_fork(k: Kernel, parent: Task, child_name: str) -> Task:
    """copy_process() -> dup_mm() -> dup_mmap(): a child with a copy of the address space."""
    k.enter("copy_process")
    child = k.new_task(child_name)
    child.mm.mmap_base = parent.mm.mmap_base
    dup_mmap(k, parent.mm, child.mm)
    return child


def do_exit(k: Kernel, task: Task) -> None:
    """do_exit() -> exit_mm() -> mmput() -> __mmput(): exit_mmap() zaps every VMA (fullmm),
    mm_put_huge_zero_folio(), then check_mm() reports any RSS counter left non-zero as
    "BUG: Bad rss-counter state" (printed from __mmdrop in 7.1.8)."""
    k.enter("exit_mmap")
    mm = task.mm
    if not k.variant.exit_skips_zap:
        for vma in list(mm.vmas):
            unmap_page_range(k, vma, vma.start, vma.end, drop_markers=True)
    for vma in list(mm.vmas):
        mm.remove_vma(vma)
    if mm.huge_zero_folio and not k.config.enabled("PERSISTENT_HUGE_ZERO_FOLIO"):
        k.physmem.put_huge_zero_folio()
        mm.huge_zero_folio = False
    task.exited = True
    from foliosim.kernel.truncate import release_unused_anon_shmem

    release_unused_anon_shmem(k)
    check_mm(k, task)


def check_mm(k: Kernel, task: Task) -> None:
    """check_mm() (kernel/fork.c, 7.1.8)."""
    for i, value in enumerate(task.mm.rss):
        if value:
            k.reports.add(
                "BUG",
                "check_mm",
                f"Bad rss-counter state mm:{task.mm.id:016x} type:{RSS_NAMES[i]} val:{value} "
                f"Comm:{task.name} Pid:{task.pid}",
            )
