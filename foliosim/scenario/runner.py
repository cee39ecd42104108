"""Running a parsed scenario on the model: setup, task statements, expectations, checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foliosim.check import Violation, check_all
from foliosim.config import (
    BuildError,
    KernelConfig,
    check_variant_builds,
    make_geometry,
    resolve_options,
)
from foliosim.gc_policy import collect_less
from foliosim.kernel import (
    gup,
    huge_memory,
    madvise,
    memory,
    mmap,
    mprotect,
    mremap,
    process,
    truncate,
)
from foliosim.kernel.files import BackingFile
from foliosim.kernel.huge_memory_split import deferred_split_scan
from foliosim.kernel.kernel import Kernel, Task
from foliosim.kernel.mm import VM
from foliosim.kernel.mmap import SyscallError
from foliosim.kernel.pgtable import (
    PTE_DIRTY,
    PTE_MARKER_GUARD,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_YOUNG,
)
from foliosim.kernel.physmem import WRITTEN_ONE
from foliosim.kernel.pte_batch import MIN_BLOCK, fault_small_tables
from foliosim.kernel.smallpages import SMALL_WRITTEN
from foliosim.scenario.parser import Addr, Num, ScenarioError, Stmt, size_value
from foliosim.scenario.queries import QValue, UnknownCounter
from foliosim.variants import get_variant

SNAPSHOT_COUNTERS = ("rss", "vmstat")


@dataclass
class StmtResult:
    line: int
    source: str
    ok: bool = True
    output: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    changes: dict[str, tuple[int, int]] = field(default_factory=dict)
    values: dict[str, QValue] = field(default_factory=dict)


@dataclass
class Run:
    """The state of one scenario run."""

    path: str
    kernel: Kernel
    names: dict[str, int] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    pins: dict[str, gup.PinSet] = field(default_factory=dict)
    results: list[StmtResult] = field(default_factory=list)
    failed: bool = False
    violations: list[Violation] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)

    def address(self, addr: Addr | None) -> int | None:
        if addr is None:
            return None
        if addr.name is None:
            return addr.offset
        base = self.names.get(addr.name)
        return None if base is None else base + addr.offset


def build_kernel(
    path: str,
    stmts: list[Stmt],
    variant_override: str | None,
    small_pages_override: str | None = None,
) -> Kernel:
    """Create the kernel from the leading `config` and `memory` statements."""
    arch, levels, granule = "x86_64", 4, "4K"
    thp, variant, mapcount = "madvise", "mainline", "page"
    mthp: dict[int, str] = {}
    overrides: dict[str, bool] = {}
    memory_bytes = 64 << 30
    swap = 0
    small_pages = "arrays"
    where = (1, 1)
    mthp_text = ""
    for stmt in stmts:
        if stmt.kind == "memory":
            size = stmt.args["size"]
            assert isinstance(size, Num)
            memory_bytes = size.value
            continue
        if stmt.kind != "config":
            continue
        kv: dict[str, tuple[str, int]] = stmt.args["kv"]  # type: ignore[assignment]
        where = (stmt.line, stmt.col)
        for key, (value, col) in kv.items():

            def bad(msg: str, col: int = col, line: int = stmt.line) -> ScenarioError:
                return ScenarioError(path, line, col, msg)

            if key == "arch":
                arch = value
            elif key == "levels":
                if value not in ("3", "4", "5"):
                    raise bad(f"bad levels '{value}'")
                levels = int(value)
            elif key == "granule":
                granule = value
            elif key == "thp":
                if value not in ("always", "madvise", "never"):
                    raise bad(f"bad thp '{value}' (always, madvise, never)")
                thp = value
            elif key == "mapcount":
                if value not in ("page", "nopage"):
                    raise bad(f"bad mapcount '{value}' (page, nopage)")
                mapcount = value
            elif key == "variant":
                variant = value
            elif key == "swap":
                swap_bytes = size_value(value)
                if swap_bytes is None:
                    raise bad(f"bad swap size '{value}'")
                swap = swap_bytes
            elif key == "smallpages":
                if value not in ("arrays", "objects"):
                    raise bad(f"bad smallpages '{value}' (arrays, objects)")
                small_pages = value
            elif key == "mthp":
                mthp_text = value
                where = (stmt.line, col)
            elif key.startswith("CONFIG_"):
                if value not in ("y", "n"):
                    raise bad(f"{key} must be y or n")
                from foliosim.config import USER_OPTIONS

                if key[7:] not in USER_OPTIONS:
                    raise bad(f"unknown option {key}")
                overrides[key[7:]] = value == "y"
    if variant_override is not None:
        variant = variant_override
    if small_pages_override is not None:
        small_pages = small_pages_override
    line, col = where
    try:
        geometry = make_geometry(arch, levels, granule)
        if mapcount == "nopage":
            overrides["NO_PAGE_MAPCOUNT"] = True
        options = resolve_options(arch, overrides)
        for item in filter(None, mthp_text.split(",")):
            size_text, _, mode = item.partition(":")
            size = size_value(size_text)
            if size is None or mode not in ("always", "madvise", "inherit", "never"):
                raise ValueError(f"bad mthp item '{item}' (SIZE:always|madvise|inherit|never)")
            pages = size // geometry.page_size
            order = pages.bit_length() - 1
            if pages != 1 << order or not 2 <= order <= geometry.pmd_order:
                raise ValueError(f"no mTHP size {size_text}")
            mthp[order] = mode
        try:
            chosen = get_variant(variant)
        except KeyError:
            raise ValueError(f"unknown variant '{variant}' (legacy, seed, mainline)") from None
        config = KernelConfig(
            geometry, options, thp, mthp, chosen.name, memory_bytes, swap, small_pages
        )
        check_variant_builds(config)
    except (ValueError, BuildError) as exc:
        raise ScenarioError(path, line, col, str(exc)) from None
    return Kernel(config, chosen)


def execute(
    path: str,
    stmts: list[Stmt],
    *,
    variant: str | None = None,
    check_each: bool = False,
    trace: bool = False,
    observe: Callable[[Run], dict[str, Any]] | None = None,
    small_pages: str | None = None,
) -> Run:
    """Run a parsed scenario. ``small_pages`` overrides `config smallpages=` (how the model
    keeps order-0 anonymous pages: "arrays" or "objects"; both must give the same run)."""
    with collect_less():
        return _execute(path, stmts, variant, check_each, trace, observe, small_pages)


def _execute(
    path: str,
    stmts: list[Stmt],
    variant: str | None,
    check_each: bool,
    trace: bool,
    observe: Callable[[Run], dict[str, Any]] | None,
    small_pages: str | None = None,
) -> Run:
    kernel = build_kernel(path, stmts, variant, small_pages)
    run = Run(path, kernel)
    kernel.pinsets = run.pins  # type: ignore[attr-defined]
    for stmt in stmts:
        if stmt.kind in ("config", "memory"):
            continue
        result = StmtResult(stmt.line, stmt.source)
        kernel.reports.current_line = stmt.line
        kernel.trace_log = [] if trace else None
        before = _counters(kernel) if trace else {}
        try:
            run_statement(run, stmt, result)
        except UnknownCounter as exc:
            raise ScenarioError(
                path, stmt.line, stmt.col, f"unknown vmstat counter '{exc}'"
            ) from None
        if trace:
            result.trace = list(kernel.trace_log or [])
            after = _counters(kernel)
            result.changes = {
                key: (before.get(key, 0), value)
                for key, value in after.items()
                if before.get(key, 0) != value
            }
        if check_each and stmt.kind != "check":
            _run_check(run, result)
        run.results.append(result)
        if observe is not None:
            run.observations.append(observe(run))
    return run


def _counters(k: Kernel) -> dict[str, int]:
    out = {f"vmstat.{key}": value for key, value in k.vmstat.counters.items()}
    for name, task in k.tasks.items():
        for label, i in (("file", 0), ("anon", 1), ("shmem", 3)):
            out[f"{name}.rss.{label}"] = task.mm.rss[i]
    return out


def _run_check(run: Run, result: StmtResult) -> None:
    violations = check_all(run.kernel)
    if violations:
        run.failed = True
        run.violations.extend(violations)
        result.ok = False
        result.output.extend(
            f"{run.path}:{result.line}: after `{result.source}`: {v.render()}" for v in violations
        )


def run_statement(run: Run, stmt: Stmt, result: StmtResult) -> None:
    k = run.kernel
    args = stmt.args
    if stmt.task is not None:
        task = k.tasks[stmt.task]
        task.errno = None
        task.signal = None
        try:
            task_statement(run, task, stmt, result)
        except SyscallError as exc:
            task.errno = exc.errno
            result.output.append(f"{stmt.task}: {stmt.kind}: {exc.errno}")
        k.run_dax_waiters()
        return
    if stmt.kind in ("unpin", "truncate", "punch", "shrink"):
        k.global_errno = None
        try:
            global_statement(run, stmt)
        except SyscallError as exc:
            k.global_errno = exc.errno
            result.output.append(f"{stmt.kind}: {exc.errno}")
        k.run_dax_waiters()
        return
    if stmt.kind == "task":
        k.new_task(str(args["name"]))
    elif stmt.kind == "devdax":
        _setup_devdax(run, stmt)
    elif stmt.kind == "fsdax":
        from foliosim.kernel.fsdax import make_fsdax

        _setup(run, stmt, lambda: make_fsdax(k, str(args["name"]), stmt.num("size")))
    elif stmt.kind == "file":
        _setup_file(run, stmt)
    elif stmt.kind == "check":
        _run_check(run, result)
    elif stmt.kind in ("expect", "expect_warning", "expect_no_warnings", "print"):
        from foliosim.scenario.expect import run_expect

        run_expect(run, stmt, result)


def _setup(run: Run, stmt: Stmt, make: Any) -> None:
    try:
        device = make()
    except (SyscallError, BuildError) as exc:
        raise ScenarioError(run.path, stmt.line, stmt.col, str(exc)) from None
    run.devices[str(stmt.args["name"])] = device


def _setup_devdax(run: Run, stmt: Stmt) -> None:
    from foliosim.kernel.dax import make_devdax

    k = run.kernel
    size = stmt.num("size")
    align_value = stmt.num("align") if stmt.args["align"] is not None else k.geometry.pmd_size
    allowed = (k.page_size, k.geometry.pmd_size, k.geometry.pud_size)
    if align_value not in allowed:
        raise ScenarioError(run.path, stmt.line, stmt.col, f"align must be one of {allowed}")
    if not k.config.enabled("DEV_DAX"):
        raise ScenarioError(
            run.path,
            stmt.line,
            stmt.col,
            "CONFIG_DEV_DAX is not set (it depends on CONFIG_TRANSPARENT_HUGEPAGE and "
            "CONFIG_ZONE_DEVICE)",
        )
    if align_value == k.geometry.pud_size and not k.config.thp_pud:
        pass  # the driver accepts it; PUD faults fall back and PTE/PMD faults SIGBUS
    if size % align_value or size == 0:
        raise ScenarioError(run.path, stmt.line, stmt.col, "size must be a multiple of align")
    _setup(run, stmt, lambda: make_devdax(k, str(stmt.args["name"]), size, align_value))


def _setup_file(run: Run, stmt: Stmt) -> None:
    k = run.kernel
    name = str(stmt.args["name"])
    fs, _col = stmt.pair("fs")
    size = stmt.num("size")
    if fs in ("pagecache", "shmem"):
        file = BackingFile(
            name=name,
            size=size,
            kind=fs,
            huge=str(stmt.args["huge"]),
            page_mkwrite=fs == "pagecache",
        )
        k.add_file(file)
        if stmt.args["filled"]:
            from foliosim.kernel.filemap import fill_file

            fill_file(k, file)
        return
    device = run.devices.get(fs)
    from foliosim.kernel.fsdax import FsdaxFs

    if not isinstance(device, FsdaxFs):
        raise ScenarioError(run.path, stmt.line, stmt.col, f"'{fs}' is not an fsdax filesystem")
    try:
        file = device.create_file(k, name, size, bool(stmt.args["filled"]))
    except SyscallError as exc:
        raise ScenarioError(run.path, stmt.line, stmt.col, f"cannot create {name}: {exc}") from None
    k.add_file(file)


def task_statement(run: Run, task: Task, stmt: Stmt, result: StmtResult) -> None:
    k = run.kernel
    a = stmt.args
    kind = stmt.kind

    def addr(key: str = "addr") -> int:
        value = run.address(stmt.addr(key))
        if value is None:
            raise SyscallError("EFAULT", "name is unbound (its mmap failed)")
        return value

    def length(key: str = "len") -> int:
        n = a[key]
        assert isinstance(n, Num)
        return n.value

    if kind == "mmap":
        file = None
        if a["fd"] is not None:
            fname, _ = stmt.pair("fd")
            file = run.devices.get(fname) or k.files.get(fname)
        shared = a["shared"] if a["shared"] is not None else file is not None
        at = run.address(stmt.addr("at")) if a["at"] is not None else None
        align = stmt.num("align") if a["align"] is not None else None
        address = mmap.do_mmap(
            k, task, length(), str(a["prot"]), bool(shared), file, stmt.num("off"), at, align
        )
        run.names[str(a["bind"])] = address
        if a["populate"]:
            # MAP_POPULATE (populate_vma_page_range): write faults (FOLL_WRITE) only for a
            # private writable mapping, read faults otherwise; GUP stores nothing.
            writable_private = "w" in str(a["prot"]) and not shared
            touch(k, task, address, length(), write=writable_private, store=False)
    elif kind == "munmap":
        mmap.do_munmap(k, task, addr(), length())
    elif kind in ("read", "write"):
        signal = touch(k, task, addr(), length(), write=kind == "write")
        if signal:
            task.signal = signal
            result.output.append(f"{task.name}: {kind}: {signal}")
    elif kind == "madvise":
        madvise.do_madvise(k, task, addr(), length(), str(a["advice"]))
    elif kind == "mprotect":
        mprotect.do_mprotect(k, task, addr(), length(), str(a["prot"]))
    elif kind == "mremap":
        fixed = run.address(stmt.addr("fixed")) if a["fixed"] is not None else None
        new = mremap.do_mremap(
            k, task, addr(), length("old"), length("new"), bool(a["maymove"]), fixed
        )
        run.names[str(a["bind"])] = new
    elif kind == "fork":
        process.do_fork(k, task, str(a["child"]))
    elif kind == "exit":
        process.do_exit(k, task)
    elif kind == "pin":
        pins = gup.pin_user_pages(
            k,
            task,
            addr(),
            length(),
            pin=not a["get"],
            longterm=bool(a["longterm"]),
            write=not a["ro"],
            name=str(a["bind"]),
        )
        run.pins[str(a["bind"])] = pins
        run.names[str(a["bind"])] = addr()
    elif kind == "proc":
        from foliosim.procfs import render_proc

        target = k.tasks[str(a["of"])]
        result.output.append(render_proc(k, target, str(a["file"])).rstrip("\n"))


def global_statement(run: Run, stmt: Stmt) -> None:
    k = run.kernel
    a = stmt.args
    if stmt.kind == "unpin":
        pins = run.pins.get(str(a["name"]))
        if pins is None:
            raise SyscallError("EINVAL", "pin failed, nothing to unpin")
        gup.unpin(k, pins)
    elif stmt.kind == "shrink":
        deferred_split_scan(k)
    elif stmt.kind in ("truncate", "punch"):
        file = k.files[str(a["file"])]
        if file.kind == "fsdax":
            from foliosim.kernel.fsdax import fsdax_punch, fsdax_truncate

            if stmt.kind == "truncate":
                fsdax_truncate(k, file, stmt.num("size"))
            else:
                fsdax_punch(k, file, stmt.num("off"), stmt.num("len"))
        elif stmt.kind == "truncate":
            truncate.do_truncate(k, file, stmt.num("size"))
        else:
            truncate.do_punch_hole(k, file, stmt.num("off"), stmt.num("len"))


def touch(
    k: Kernel, task: Task, start: int, length: int, write: bool, store: bool = True
) -> str | None:
    """Touch every page of [start, start+length) like a program would: fault where the page
    is not mapped (or not writable for a write); a write leaves non-zero data in each page
    unless ``store`` is false (GUP faulting pages in, as MAP_POPULATE does).
    Returns the signal that stopped it, if any."""
    page = k.page_size
    addr = start & ~(page - 1)
    end = start + max(length, 1)
    mm = task.mm
    pgt = mm.pgtables
    geo = k.geometry
    vma = None
    while addr < end:
        # Faults never change the VMA list: the VMA found stays valid while addr is inside it.
        if vma is None or addr >= vma.end:
            vma = mm.find_vma(addr)
            if vma is None:
                return "SIGSEGV"
            if (write and not vma.flags & VM.WRITE) or not vma.flags & (VM.READ | VM.WRITE):
                return "SIGSEGV"
        pmd_no = addr >> geo.pmd_shift
        stop = min(end, vma.end)  # the next VMA may not allow the access
        if pmd_no not in pgt.pmd_leaves and (addr >> geo.pud_shift) not in pgt.pud_leaves:
            # PTE level, read straight from the table (what k.lookup would find, without
            # building a Mapping per page): touch, or fault first, then touch.
            table = pgt.pte_tables.get(pmd_no)
            slot = (addr >> k.page_shift) & (geo.ptrs_per_pte - 1)
            present = table is not None and table.pfn[slot] >= 0
            if present and (not write or table.bits[slot] & PTE_WRITE):  # type: ignore[union-attr]
                addr += _touch_pte_run(k, table, slot, addr, stop, write, store) << k.page_shift
                continue
            if not present:
                batched = _anon_batch(k, vma, addr, end, write, store)
                if batched:
                    # The new entries are young, dirty and written already: nothing to touch.
                    addr += batched << k.page_shift
                    continue
            signal = memory.handle_mm_fault(k, task, vma, addr, write)
            if signal:
                return signal
            if pmd_no not in pgt.pmd_leaves and (addr >> geo.pud_shift) not in pgt.pud_leaves:
                table = pgt.pte_tables.get(pmd_no)
                if table is None or table.pfn[slot] < 0:
                    return "SIGBUS"
                addr += _touch_pte_run(k, table, slot, addr, stop, write, store) << k.page_shift
                continue
            m = k.lookup(mm, addr)  # the fault mapped a huge leaf
        else:
            m = k.lookup(mm, addr)
            if m is not None and write and not m.write:
                signal = memory.handle_mm_fault(k, task, vma, addr, write)
                if signal:
                    return signal
                m = k.lookup(mm, addr)
        if m is None:
            return "SIGBUS"
        # Skip ahead over a whole present huge leaf in one step.
        step = page
        if m.level != "pte" and (not write or m.write):
            leaf_pages = m.folio.nr_pages if m.level in ("pmd", "pud") and not m.special else None
            size = k.geometry.pud_size if m.level == "pud" else k.geometry.pmd_size
            leaf_end = (addr & ~(size - 1)) + size
            if store and write and not m.special and leaf_pages and not m.folio.zone_device:
                first = m.page
                last = min(leaf_end, end + page - 1) - (addr & ~(size - 1))
                m.folio.mark_written(first, (last >> k.page_shift) - first)
            step = max(min(leaf_end, (end + page - 1) & ~(page - 1)) - addr, page)
            if m.leaf is not None:
                m.leaf.young = True
                m.leaf.dirty = m.leaf.dirty or write
        else:
            assert m.table is not None
            step = _touch_pte_run(k, m.table, m.slot, addr, stop, write, store) << k.page_shift
        addr += step
    return None


def _anon_batch(k: Kernel, vma: Any, addr: int, end: int, write: bool, store: bool) -> int:
    """Fault a run of empty PTEs of an anonymous VMA in one batch when each fault would take
    do_anonymous_page()'s order-0 path (see memory.do_anonymous_pages). Returns the number
    of pages faulted and touched; 0: no batch (or memory ran out: the caller faults the
    next page alone and sees the failure)."""
    if not vma.is_anonymous or vma.shared:
        return 0
    geo = k.geometry
    pmd_no = addr >> geo.pmd_shift
    pgt = vma.mm.pgtables
    table = pgt.pte_tables.get(pmd_no)
    if pmd_no in pgt.pmd_leaves or (addr >> geo.pud_shift) in pgt.pud_leaves:
        return 0
    if table is None or table.all_none():
        if geo.pmd_order in huge_memory.thp_vma_allowable_orders(k, vma):
            return 0  # create_huge_pmd gets the first say
    if huge_memory.thp_vma_allowable_orders(k, vma, below_pmd=True):
        return 0
    if write and k.small_anon and table is None and not addr & (geo.pmd_size - 1):
        # Several whole PMD ranges without tables: fault them as one block of tables.
        limit = min(end, vma.end) >> geo.pmd_shift
        count = 0
        while (
            pmd_no + count < limit
            and pmd_no + count not in pgt.pte_tables
            and pmd_no + count not in pgt.pmd_leaves
        ):
            count += 1
        if count >= MIN_BLOCK:
            done = fault_small_tables(k, vma, pmd_no, count, written=store)
            if done:
                return done
    stop = min(end, vma.end, (pmd_no + 1) << geo.pmd_shift)
    first = (addr >> k.page_shift) & (geo.ptrs_per_pte - 1)
    nr = (stop - addr + k.page_size - 1) >> k.page_shift
    if nr < 2:
        return 0
    if table is not None:
        window_p = table.pfn[first : first + nr]
        window_b = table.bits[first : first + nr]
        busy = np.flatnonzero((window_p >= 0) | (window_b & PTE_MARKER_GUARD != 0))
        if busy.size:
            nr = int(busy[0])
    if nr < 2:
        return 0
    done = memory.do_anonymous_pages(k, vma, addr, nr, write, written=write and store)
    return done if done == nr else 0


def _touch_pte_run(
    k: Kernel, table: Any, slot: int, addr: int, end: int, write: bool, store: bool = True
) -> int:
    """Access present PTEs from ``slot`` on without faulting: the run stops at the first entry
    that needs a fault (none, or read-only for a write), the end of the range or the table.
    Young (and dirty, written) are set for the run; returns the number of pages touched."""
    last = min(k.geometry.ptrs_per_pte, slot + ((end - addr + k.page_size - 1) >> k.page_shift))
    nxt = slot + 1
    if nxt >= last or table.pfn[nxt] < 0 or (write and not table.bits[nxt] & PTE_WRITE):
        # One page (the common case right after a fault): no NumPy slicing.
        bits = table.bits[slot] | PTE_YOUNG | (PTE_DIRTY if write else 0)
        table.bits[slot] = bits
        if store and write and not bits & PTE_SPECIAL:
            pfn = int(table.pfn[slot])
            mem = table.mem
            if mem.is_small_anon(pfn):  # held as arrays (smallpages.py)
                mem._state[pfn] |= SMALL_WRITTEN
                return 1
            folio = mem.page_folio(pfn, table, slot)
            if folio.pgmap is None:  # device memory keeps no "written" record
                if folio.large:
                    folio.mark_written(pfn - folio.pfn)
                else:
                    folio.written = WRITTEN_ONE  # Folio.mark_written() of an order-0 folio
        return 1
    bits = table.bits[slot:last]
    ok = table.pfn[slot:last] >= 0
    if write:
        ok &= (bits & PTE_WRITE) != 0
    bad = np.flatnonzero(~ok)
    n = int(bad[0]) if bad.size else last - slot
    n = max(n, 1)
    table.bits[slot : slot + n] |= PTE_YOUNG | (PTE_DIRTY if write else 0)
    if store and write:
        slots, pfns = table.small_anon_slots(slot, slot + n)
        if slots.shape[0]:  # held as arrays (smallpages.py)
            table.mem.state[pfns] |= SMALL_WRITTEN
        for _, nr, folio, page, special in table.runs(slot, slot + n, skip_small=True):
            if not special and not folio.zone_device:
                folio.mark_written(page, nr)
    return n
