"""/proc renderers: status, maps, smaps, smaps_rollup, pagemap, numa_maps (fs/proc/task_mmu.c).

Formats follow Linux 7.1.8's task_mem(), show_map_vma(), __show_smap() and pagemap_read()
for the fields the model knows. Side effect kept from the kernel: smaps, smaps_rollup,
pagemap and numa_maps walk page tables with walk_page_range(), whose walk_pud_range() calls
split_huge_pud() on a huge PUD when the walk has no pud_entry handler (none of these has
one): reading them over a PUD-mapped device-dax range unmaps that PUD (mm/pagewalk.c).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel import huge_memory
from foliosim.kernel.mm import MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, VM, VMA

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task


def _kb(k: Kernel, pages: int) -> int:
    return pages << (k.page_shift - 10)


def _line(name: str, value_kb: int) -> str:
    return f"{name + ':':<16}{value_kb:>8} kB"


def split_puds_for_walk(k: Kernel, task: Task) -> None:
    """walk_pud_range(): split every huge PUD the walk meets (no pud_entry handler)."""
    for vma in list(task.mm.vmas):
        for pud_no in [n for n in task.mm.pgtables.pud_leaves
                       if vma.start <= n << k.geometry.pud_shift < vma.end]:
            huge_memory.__split_huge_pud(k, vma, pud_no << k.geometry.pud_shift)


def render_status(k: Kernel, task: Task) -> str:
    """task_mem() lines of /proc/PID/status."""
    rss = task.mm.rss
    anon, file, shmem = rss[MM_ANONPAGES], rss[MM_FILEPAGES], rss[MM_SHMEMPAGES]
    total_vm = sum(v.end - v.start for v in task.mm.vmas) >> k.page_shift
    pte_bytes = task.mm.pgtables.nr_ptes() * k.page_size
    rows = [
        f"Name:\t{task.name}",
        f"Pid:\t{task.pid}",
        f"VmSize:\t{_kb(k, total_vm):>8} kB",
        f"VmRSS:\t{_kb(k, anon + file + shmem):>8} kB",
        f"RssAnon:\t{_kb(k, anon):>8} kB",
        f"RssFile:\t{_kb(k, file):>8} kB",
        f"RssShmem:\t{_kb(k, shmem):>8} kB",
        f"VmPTE:\t{pte_bytes >> 10:>8} kB",
    ]
    return "\n".join(rows)


def _vma_line(k: Kernel, vma: VMA) -> str:
    perms = "".join(c if vma.flags & f else "-" for c, f in (("r", VM.READ), ("w", VM.WRITE), ("x", VM.EXEC)))
    perms += "s" if vma.flags & VM.MAYSHARE else "p"
    off = (vma.pgoff << k.page_shift) if vma.file is not None else 0
    name = f"/{vma.file.name}" if vma.file is not None else ""
    return f"{vma.start:08x}-{vma.end:08x} {perms} {off:08x} 00:00 0{' ' * 10 if name else ''}{name}".rstrip()


def render_maps(k: Kernel, task: Task) -> str:
    return "\n".join(_vma_line(k, v) for v in task.mm.vmas)


def smaps_counts(k: Kernel, vma: VMA) -> dict[str, int]:
    """smaps_pte_range()/smaps_pmd_entry() tallies for one VMA, in pages."""
    geo = k.geometry
    counts = {"Rss": 0, "Anonymous": 0, "AnonHugePages": 0, "ShmemPmdMapped": 0,
              "FilePmdMapped": 0, "Shared": 0, "Private": 0}
    addr = vma.start
    while addr < vma.end:
        m = k.lookup(vma.mm, addr)
        if m is None:
            addr += k.page_size
            continue
        if m.level == "pte":
            n = 1
        else:
            size = geo.pmd_size if m.level == "pmd" else geo.pud_size
            n = ((addr & ~(size - 1)) + size - addr) >> k.page_shift
        if not m.folio.zero:
            counts["Rss"] += n
            shared = m.folio.folio_mapcount() > 1
            counts["Shared" if shared else "Private"] += n
            if m.folio.anon:
                counts["Anonymous"] += n
            if m.level == "pmd":
                if m.folio.anon:
                    counts["AnonHugePages"] += n
                elif m.folio.swapbacked:
                    counts["ShmemPmdMapped"] += n
                else:
                    counts["FilePmdMapped"] += n
        addr += n << k.page_shift
    return counts


def _smap_rows(k: Kernel, counts: dict[str, int], size_pages: int | None) -> list[str]:
    rows = []
    if size_pages is not None:
        rows.append(_line("Size", _kb(k, size_pages)))
    for name in ("Rss", "Anonymous", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"):
        rows.append(_line(name, _kb(k, counts[name])))
    return rows


def render_smaps(k: Kernel, task: Task, rollup: bool) -> str:
    split_puds_for_walk(k, task)
    if rollup:
        total = {key: 0 for key in ("Rss", "Anonymous", "AnonHugePages", "ShmemPmdMapped",
                                    "FilePmdMapped", "Shared", "Private")}
        for vma in task.mm.vmas:
            for key, value in smaps_counts(k, vma).items():
                total[key] += value
        lo = task.mm.vmas[0].start if task.mm.vmas else 0
        hi = task.mm.vmas[-1].end if task.mm.vmas else 0
        return "\n".join([f"{lo:08x}-{hi:08x} ---p 00000000 00:00 0                          [rollup]"]
                         + _smap_rows(k, total, None))
    out = []
    for vma in task.mm.vmas:
        out.append(_vma_line(k, vma))
        out.extend(_smap_rows(k, smaps_counts(k, vma), (vma.end - vma.start) >> k.page_shift))
    return "\n".join(out)


def render_pagemap(k: Kernel, task: Task) -> str:
    """pagemap entries of mapped pages, one line each (address, pfn, flags): bit 63 present,
    56 exclusively mapped, 61 file-page or shared-anon (fs/proc/task_mmu.c)."""
    split_puds_for_walk(k, task)
    out = []
    for vma in task.mm.vmas:
        addr = vma.start
        while addr < vma.end:
            m = k.lookup(task.mm, addr)
            if m is not None:
                flags = ["present"]
                if m.folio.folio_mapcount() == 1:
                    flags.append("exclusive")
                if not m.folio.anon:
                    flags.append("file")
                out.append(f"{addr:012x} pfn={m.folio.pfn + m.page:#x} {','.join(flags)}")
            addr += k.page_size
    return "\n".join(out)


def render_proc(k: Kernel, task: Task, name: str) -> str:
    if task.exited:
        return f"/proc/{task.pid}/{name}: No such process"
    if name == "status":
        return render_status(k, task)
    if name == "maps":
        return render_maps(k, task)
    if name in ("smaps", "smaps_rollup"):
        return render_smaps(k, task, rollup=name == "smaps_rollup")
    if name == "pagemap":
        return render_pagemap(k, task)
    split_puds_for_walk(k, task)  # numa_maps walks page tables too
    return "\n".join(f"{v.start:08x} default" for v in task.mm.vmas)
