"""A Python API over the model that reads like drgn scripts or kernel code.

>>> from foliosim import Kernel
>>> k = Kernel(arch="x86_64", thp="always")
>>> t = k.task("A")
>>> m = t.mmap(2 << 20)
>>> t.write(m, 4096)
>>> folio = k.folio(t, m)
>>> folio.order, folio.entire_mapcount, folio.refcount
(9, 1, 1)

The objects are thin views: ``Kernel`` wraps foliosim.kernel.kernel.Kernel (``k.model``),
``Task`` wraps a task, ``FolioView`` a folio; every call goes to the model functions the
scenario runner uses (do_mmap, handle_mm_fault via touch, do_madvise, do_fork, ...). A call
the kernel refuses raises :class:`SyscallError` with the errno.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from foliosim.kernel.mmap import SyscallError
from foliosim.scenario.runner import build_kernel, touch
from foliosim.scenario.statements import parse_text

if TYPE_CHECKING:
    from foliosim.kernel.files import BackingFile
    from foliosim.kernel.kernel import Kernel as ModelKernel
    from foliosim.kernel.kernel import Task as ModelTask
    from foliosim.kernel.physmem import Folio

__all__ = ["FolioView", "Kernel", "SyscallError", "Task"]


class Kernel:
    """A modelled machine. Keyword arguments are those of the scenario ``config`` statement:
    arch, levels, granule, thp, mthp, mapcount, variant, swap and CONFIG_*=y|n; ``memory``
    is the RAM size ("64G" by default)."""

    def __init__(self, memory: str | None = None, **config: str | bool | int) -> None:
        words = []
        for key, value in config.items():
            if isinstance(value, bool):
                value = "y" if value else "n"
            words.append(f"{key}={value}")
        text = (f"memory {memory}\n" if memory else "") + (
            f"config {' '.join(words)}\n" if words else ""
        )
        self.model: ModelKernel = build_kernel("<api>", parse_text("<api>", text), None)
        self._tasks: dict[str, Task] = {}

    # -- objects -----------------------------------------------------------------------------
    def task(self, name: str) -> Task:
        """The task of that name, created on first use (the scenario ``task`` statement)."""
        if name not in self._tasks:
            model = self.model.tasks.get(name) or self.model.new_task(name)
            self._tasks[name] = Task(self, model)
        return self._tasks[name]

    def devdax(self, name: str, size: int, align: int | None = None) -> BackingFile:
        """A device-dax instance (/dev/NAME) of ``size`` bytes and alignment ``align``."""
        from foliosim.kernel.dax import make_devdax

        return make_devdax(self.model, name, size, align or self.model.geometry.pmd_size)

    def file(
        self, name: str, size: int, fs: str = "pagecache", huge: str = "never", filled: bool = False
    ) -> BackingFile:
        """A page-cache or shmem file (the scenario ``file`` statement)."""
        from foliosim.kernel.filemap import fill_file
        from foliosim.kernel.files import BackingFile as File

        file = File(name=name, size=size, kind=fs, huge=huge, page_mkwrite=fs == "pagecache")
        self.model.add_file(file)
        if filled:
            fill_file(self.model, file)
        return file

    def folio(self, task: Task, addr: int) -> FolioView | None:
        """The folio mapped at ``addr`` in ``task`` (page_folio(follow_page())), or None."""
        from foliosim.scenario.queries import resolve

        m = self.model.lookup(task.model.mm, addr)
        if m is None:
            return None
        folio, page = resolve(self.model, m.folio, m.page)
        return FolioView(self, folio, page)

    def shrink(self) -> None:
        """Run the deferred-split shrinker (deferred_split_scan)."""
        from foliosim.kernel.huge_memory_split import deferred_split_scan

        deferred_split_scan(self.model)

    # -- counters ------------------------------------------------------------------------------
    @property
    def vmstat(self) -> dict[str, int]:
        """/proc/vmstat as printed (THP node items in huge pages)."""
        from foliosim.procfs.vm import vmstat_values

        return vmstat_values(self.model)

    def proc(self, name: str) -> str:
        """/proc/NAME: ``vmstat`` or ``meminfo``."""
        from foliosim.procfs import render_proc

        return render_proc(self.model, None, name)

    def check(self) -> list[str]:
        """Every invariant now; the broken ones, rendered (empty when all hold)."""
        from foliosim.check import check_all

        return [v.render() for v in check_all(self.model)]

    @property
    def reports(self) -> list[str]:
        """Kernel-style WARN/BUG reports raised so far."""
        return [r.render() for r in self.model.reports.reports]


class Task:
    """A task and its mm: system calls and memory accesses."""

    def __init__(self, kernel: Kernel, model: ModelTask) -> None:
        self.kernel = kernel
        self.model = model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def pid(self) -> int:
        return self.model.pid

    def mmap(
        self,
        length: int,
        prot: str = "rw",
        shared: bool | None = None,
        fd: BackingFile | None = None,
        off: int = 0,
        at: int | None = None,
        align: int | None = None,
    ) -> int:
        """mmap(2): the address of the new mapping (do_mmap)."""
        from foliosim.kernel import mmap

        share = shared if shared is not None else fd is not None
        return mmap.do_mmap(self.kernel.model, self.model, length, prot, share, fd, off, at, align)

    def munmap(self, addr: int, length: int) -> None:
        from foliosim.kernel import mmap

        mmap.do_munmap(self.kernel.model, self.model, addr, length)

    def read(self, addr: int, length: int = 1) -> None:
        """Touch every page for read, faulting as needed; SIGSEGV/SIGBUS raise SyscallError."""
        self._touch(addr, length, False)

    def write(self, addr: int, length: int = 1) -> None:
        """Touch every page for write, faulting as needed."""
        self._touch(addr, length, True)

    def _touch(self, addr: int, length: int, write: bool) -> None:
        signal = touch(self.kernel.model, self.model, addr, length, write)
        if signal:
            raise SyscallError(signal, f"{'write' if write else 'read'} at {addr:#x}")

    def madvise(self, addr: int, length: int, advice: str) -> None:
        """madvise(2) with MADV_<advice> (DONTNEED, HUGEPAGE, COLLAPSE, ...)."""
        from foliosim.kernel import madvise

        madvise.do_madvise(self.kernel.model, self.model, addr, length, advice.upper())

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        from foliosim.kernel import mprotect

        mprotect.do_mprotect(self.kernel.model, self.model, addr, length, prot)

    def fork(self, child: str) -> Task:
        """fork(2): the child task (copy_process -> dup_mmap)."""
        from foliosim.kernel import process

        model = process.do_fork(self.kernel.model, self.model, child)
        view = Task(self.kernel, model)
        self.kernel._tasks[child] = view
        return view

    def exit(self) -> None:
        from foliosim.kernel import process

        process.do_exit(self.kernel.model, self.model)

    # -- what the task sees -------------------------------------------------------------------
    @property
    def rss(self) -> dict[str, int]:
        """MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS and MM_SHMEMPAGES, in pages."""
        r = self.model.mm.rss
        return {"file": r[0], "anon": r[1], "swap": r[2], "shmem": r[3]}

    def level(self, addr: int) -> str | None:
        """The page-table level mapping addr: "pte", "pmd", "pud" or None."""
        m = self.kernel.model.lookup(self.model.mm, addr)
        return None if m is None else m.level

    def proc(self, name: str) -> str:
        """/proc/PID/NAME (status, maps, smaps, smaps_rollup, pagemap, kpageflags, ...), with
        the kernel's side effects (a walk splits huge PUDs)."""
        from foliosim.procfs import render_proc

        return render_proc(self.kernel.model, self.model, name)


@dataclass
class FolioView:
    """A folio as drgn would show it: counters by their kernel accessor names."""

    kernel: Kernel
    folio: Folio
    page: int = 0

    @property
    def refcount(self) -> int:
        """folio_ref_count()."""
        return self.folio.refcount

    @property
    def mapcount(self) -> int:
        """folio_mapcount()."""
        return self.folio.folio_mapcount()

    @property
    def entire_mapcount(self) -> int:
        """folio_entire_mapcount()."""
        return self.folio.entire_mapcount

    @property
    def large_mapcount(self) -> int:
        """folio_large_mapcount()."""
        return self.folio.large_mapcount

    @property
    def nr_pages_mapped(self) -> int:
        """folio_nr_pages_mapped()."""
        return self.folio.folio_nr_pages_mapped()

    @property
    def pincount(self) -> int:
        return self.folio.pincount

    @property
    def order(self) -> int:
        """folio_order()."""
        return self.folio.order

    @property
    def nr_pages(self) -> int:
        """folio_nr_pages()."""
        return self.folio.nr_pages

    @property
    def pfn(self) -> int:
        """folio_pfn()."""
        return self.folio.pfn

    @property
    def flags(self) -> list[str]:
        return self.folio.flag_names()

    def page_mapcount(self, i: int | None = None) -> int:
        """folio_precise_page_mapcount() of page ``i`` (default: the page looked up)."""
        return self.folio.precise_page_mapcount(self.page if i is None else i)

    def dump(self) -> str:
        """dump_page() of the page looked up: mm/debug.c __dump_folio's lines."""
        from foliosim import views

        dump = getattr(views, "__dump_folio")
        return str(dump(self.kernel.model, self.folio, self.page))
