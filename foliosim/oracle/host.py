"""`foliosim oracle host`: run a scenario on this machine's kernel and on the model, and
compare every value the host can observe.

The model runs first (it decides where each mapping goes: top-down from its mmap base with
the kernel's alignment rules); the host then maps each one at the same address shifted down
by ``SHIFT`` (a multiple of 1 GiB, so every alignment is kept) with MAP_FIXED_NOREPLACE.
That keeps the scenario's mappings in one window far below the Python interpreter's own
mappings and makes RSS per window exact. A `mremap` that the model moved is done with
MREMAP_FIXED to the shifted address the model chose.

Values compared, per statement: the errno and signal of every task statement, and the left
side of every `expect`/`print`. What the kernel does not expose (refcount, entire/large
mapcounts, pincount, PageAnonExclusive, warnings, ...) is reported "not observable here".
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foliosim.oracle import libc, observe
from foliosim.oracle.sysfs import HostSettings, drop_caches, kernel_version
from foliosim.oracle.worker import Workers
from foliosim.scenario.expect import compare
from foliosim.scenario.parser import Addr, Num, Query, Stmt
from foliosim.scenario.runner import Run, execute
from foliosim.variants import variant_for_kernel

SHIFT = 0x4000_0000_0000
WINDOW = (0x1000_0000_0000, 0x5000_0000_0000)  # where shifted scenario mappings live
NOT_OBSERVABLE = "not observable here"
OBSERVABLE_FOLIO = ("nr_pages", "order", "anon", "zero")
HUGE_WORDS = ("thp", "huge", "pmdmapped")  # vmstat names recorded per statement in the JSON
UNSUPPORTED = ("devdax", "fsdax", "pin", "unpin")


class Untranslatable(Exception):
    """The scenario uses something the host oracle cannot do on a real kernel."""


@dataclass
class Row:
    line: int
    source: str
    what: str
    model: Any
    kernel: Any
    status: str  # agree | disagree | not observable
    expect_model: bool | None = None
    expect_kernel: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class HostResult:
    path: str
    kernel: str
    settings: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    vmstat_deltas: dict[int, dict[str, int]] = field(default_factory=dict)
    attempts: int = 1

    @property
    def disagreements(self) -> list[Row]:
        return [r for r in self.rows if r.status == "disagree"]

    @property
    def expect_failures(self) -> list[Row]:
        return [r for r in self.rows if r.expect_model is False or r.expect_kernel is False]

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "kernel": self.kernel,
            "thp_settings": self.settings,
            "error": self.error,
            "agree": not self.disagreements,
            "vmstat_deltas": self.vmstat_deltas,
            "attempts": self.attempts,
            "rows": [r.as_dict() for r in self.rows],
        }


def scenario_config(stmts: list[Stmt]) -> tuple[str, dict[int, str]]:
    """thp= and mthp= of the scenario; Untranslatable for configurations the host is not."""
    thp, mthp = "madvise", {}
    host_fixed = {
        "arch": "x86_64",
        "levels": "4",
        "granule": "4K",
        "mapcount": "page",
        "variant": "mainline",
        "swap": "0",
    }
    for stmt in stmts:
        if stmt.kind != "config":
            continue
        kv: dict[str, tuple[str, int]] = stmt.args["kv"]  # type: ignore[assignment]
        for key, (value, _) in kv.items():
            if key == "thp":
                thp = value
            elif key == "mthp":
                for item in filter(None, value.split(",")):
                    size, _, mode = item.partition(":")
                    num = int(size.rstrip("KMG"), 0) * {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
                    mthp[num] = mode
            elif key in host_fixed:
                if value != host_fixed[key]:
                    raise Untranslatable(f"config {key}={value}: this host is {host_fixed[key]}")
            else:
                raise Untranslatable(f"config {key}={value} cannot be set on a running kernel")
    for stmt in stmts:
        if stmt.kind in UNSUPPORTED:
            raise Untranslatable(
                f"line {stmt.line}: '{stmt.kind}' is not translated "
                "(no DAX device, no user-space pin on the host)"
            )
        if stmt.kind == "file" and stmt.pair("fs")[0] not in ("pagecache", "shmem"):
            raise Untranslatable(f"line {stmt.line}: fs-dax files are not translated")
    return thp, mthp


def run_model(
    path: str, stmts: list[Stmt], variant: str | None = None
) -> tuple[Run, dict[int, dict[str, Any]]]:
    """The model's run plus, per statement line, the names and task outcomes after it;
    ``variant``: the one that models this host's release (variant_for_kernel)."""
    after: dict[int, dict[str, Any]] = {}

    def obs(run: Run) -> dict[str, Any]:
        line = run.results[-1].line
        snap = {
            "names": dict(run.names),
            "tasks": {n: (t.errno, t.signal, t.exited) for n, t in run.kernel.tasks.items()},
            "global_errno": run.kernel.global_errno,
        }
        after[line] = snap
        return snap

    run = execute(path, stmts, observe=obs, variant=variant)
    return run, after


class HostRun:
    """One scenario on the real kernel."""

    def __init__(self, path: str, stmts: list[Stmt], settings: HostSettings, workdir: Path) -> None:
        self.path, self.stmts, self.settings, self.workdir = path, stmts, settings, workdir
        self.names: dict[str, int] = {}
        self.files: dict[str, Path] = {}
        self.mounts: dict[str, Path] = {}
        self.errno: dict[str, str | None] = {}
        self.signal: dict[str, str | None] = {}
        self.global_errno: str | None = None
        self.vmstat: dict[str, int] = {}
        self.workers: Workers | None = None

    # --- addresses -----------------------------------------------------------------
    def address(self, addr: Addr | None) -> int | None:
        if addr is None:
            return None
        if addr.name is None:
            return addr.offset - SHIFT if addr.offset >= SHIFT else addr.offset
        base = self.names.get(addr.name)
        return None if base is None else base + addr.offset

    def shmem_dirs(self) -> tuple[str, ...]:
        return tuple(str(p) + "/" for p in self.mounts.values())

    # --- setup ---------------------------------------------------------------------
    def make_file(self, stmt: Stmt) -> None:
        name, size = str(stmt.args["name"]), stmt.num("size")
        fs, huge = stmt.pair("fs")[0], str(stmt.args["huge"])
        if fs == "shmem":
            mnt = self.mounts.get(huge)
            if mnt is None:
                mnt = self.workdir / f"tmpfs-{huge}"
                mnt.mkdir()
                subprocess.run(
                    [
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        f"huge={huge},size=16G",
                        f"foliosim-{huge}",
                        str(mnt),
                    ],
                    check=True,
                )
                self.mounts[huge] = mnt
            path = mnt / name
        else:
            (self.workdir / "pagecache").mkdir(exist_ok=True)
            path = self.workdir / "pagecache" / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if stmt.args["filled"]:
                chunk = 2 << 20 if fs == "shmem" or huge == "always" else 4096
                data = b"\x5a" * chunk
                for off in range(0, size, chunk):
                    os.pwrite(fd, data[: min(chunk, size - off)], off)
                os.fsync(fd)
            else:
                os.ftruncate(fd, size)
                os.posix_fadvise(fd, 0, 0, libc.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        self.files[name] = path

    # --- statements ----------------------------------------------------------------
    def run_statement(self, stmt: Stmt, model_after: dict[str, Any] | None) -> None:
        w = self.workers
        assert w is not None
        if stmt.kind == "task":
            w.new_task(str(stmt.args["name"]))
            return
        if stmt.kind == "file":
            self.make_file(stmt)
            return
        if stmt.task is None:
            if stmt.kind in ("truncate", "punch", "shrink"):
                self.global_errno = self._global(stmt)
            return
        task = stmt.task
        self.errno[task], self.signal[task] = None, None
        reply = self._task(stmt, model_after or {})
        if reply[0] == "err":
            self.errno[task] = str(reply[1])
        elif reply[0] in ("signal", "dead"):
            self.signal[task] = str(reply[1])

    def _global(self, stmt: Stmt) -> str | None:
        try:
            if stmt.kind == "shrink":
                drop_caches(2)
            elif stmt.kind == "truncate":
                os.truncate(self.files[str(stmt.args["file"])], stmt.num("size"))
            else:
                fd = os.open(self.files[str(stmt.args["file"])], os.O_RDWR)
                try:
                    libc.punch_hole(fd, stmt.num("off"), stmt.num("len"))
                finally:
                    os.close(fd)
        except libc.SysError as exc:
            return exc.name
        except OSError as exc:
            import errno as errno_mod

            return errno_mod.errorcode.get(exc.errno or 0, "EIO")
        return None

    def _task(self, stmt: Stmt, model_after: dict[str, Any]) -> tuple[str, Any]:
        w = self.workers
        assert w is not None and stmt.task is not None
        task, a, kind = stmt.task, stmt.args, stmt.kind

        def length(key: str = "len") -> int:
            n = a[key]
            assert isinstance(n, Num)
            return n.value

        addr = self.address(stmt.addr("addr")) if "addr" in a else None
        if "addr" in a and addr is None:
            return ("err", "EFAULT")
        model_names: dict[str, int] = model_after.get("names", {})
        if kind == "mmap":
            shared = a["shared"] if a["shared"] is not None else a["fd"] is not None
            flags = libc.MAP_SHARED if shared else libc.MAP_PRIVATE
            path = None
            if a["fd"] is None:
                flags |= libc.MAP_ANONYMOUS
            else:
                path = str(self.files[stmt.pair("fd")[0]])
            where = 0
            if a["at"] is not None:
                where = self.address(stmt.addr("at")) or 0
                flags |= libc.MAP_FIXED
            elif str(a["bind"]) in model_names:
                where = model_names[str(a["bind"])] - SHIFT
                flags |= libc.MAP_FIXED_NOREPLACE
            if a["populate"]:
                flags |= libc.MAP_POPULATE
            reply = w.call(
                task,
                "mmap",
                where,
                length(),
                libc.PROT[str(a["prot"])],
                flags,
                path,
                stmt.num("off"),
            )
            if reply[0] == "ok":
                self.names[str(a["bind"])] = int(reply[1])
            return reply
        assert addr is not None or kind in ("fork", "exit", "proc")
        if kind == "munmap":
            return w.call(task, "munmap", addr, length())
        if kind == "mprotect":
            return w.call(task, "mprotect", addr, length(), libc.PROT[str(a["prot"])])
        if kind == "madvise":
            return w.call(task, "madvise", addr, length(), libc.ADVICE[str(a["advice"])])
        if kind == "mremap":
            assert addr is not None
            flags, new_addr = 0, 0
            if a["fixed"] is not None:
                flags = libc.MREMAP_FIXED | (libc.MREMAP_MAYMOVE if a["maymove"] else 0)
                new_addr = self.address(stmt.addr("fixed")) or 0
            elif a["maymove"]:
                flags = libc.MREMAP_MAYMOVE
                moved = model_names.get(str(a["bind"]))
                if moved is not None and moved - SHIFT != addr:
                    flags |= libc.MREMAP_FIXED
                    new_addr = moved - SHIFT
            reply = w.call(task, "mremap", addr, length("old"), length("new"), flags, new_addr)
            if reply[0] == "ok":
                self.names[str(a["bind"])] = int(reply[1])
            return reply
        if kind in ("read", "write"):
            assert addr is not None
            pid, write, end = w.tasks[task].pid, kind == "write", addr + length()
            stop, sig = observe.touch_limit(pid, addr, length(), write)
            reply = w.call(task, "touch", addr, stop, write)
            while reply[0] == "ok" and sig == "SIGBUS" and stop < end:
                # The faults so far may have mapped pages past EOF (a tmpfs PMD across
                # i_size): those do not fault, so the touch goes on over them.
                further, sig = observe.touch_limit(pid, stop, end - stop, write)
                if further == stop:
                    break
                reply, stop = w.call(task, "touch", stop, further, write), further
            if reply[0] == "ok" and sig is not None:
                return ("signal", sig)
            return reply
        if kind == "fork":
            return w.fork(task, str(a["child"]))
        if kind == "exit":
            w.exit(task)
            return ("ok", None)
        if kind == "proc":
            target = w.tasks[str(a["of"])]
            with open(f"/proc/{target.pid}/{a['file']}", "rb") as f:
                f.read()
            return ("ok", None)
        return ("ok", None)

    # --- queries -------------------------------------------------------------------
    def query(self, q: Query) -> Any:
        """The host's value of a query, or NOT_OBSERVABLE."""
        w = self.workers
        assert w is not None
        if q.kind == "global_errno":
            return self.global_errno or 0
        if q.kind == "vmstat":
            return self.vmstat.get(q.field, 0) if q.field in self._vmstat_names() else None
        if q.kind in ("warnings", "free"):
            return NOT_OBSERVABLE
        assert q.task is not None
        if q.kind == "var":
            value = self.names.get(q.field)
            return None if value is None else value + SHIFT
        proc = w.tasks.get(q.task)
        if proc is None:
            return None
        if q.kind == "errno":
            return self.errno.get(q.task) or 0
        if q.kind == "signal":
            return self.signal.get(q.task)
        if proc.dead is not None:
            return None
        if q.kind == "rss":
            if q.field == "swap":
                return NOT_OBSERVABLE
            return observe.window_rss(proc.pid, *WINDOW, self.shmem_dirs())[q.field]
        addr = self.address(q.addr)
        if addr is None:
            return None
        if q.kind == "level":
            return observe.level(proc.pid, addr)
        observable = OBSERVABLE_FOLIO if q.kind == "folio" else ("mapcount", "precise_mapcount")
        if q.field not in observable:
            return NOT_OBSERVABLE
        facts = observe.page_facts(proc.pid, addr)
        if facts is None:
            return None
        flags = facts["flags"]
        zero = bool(flags >> observe.KPF_ZERO_PAGE & 1)
        if q.kind == "page":
            if q.field == "precise_mapcount" and zero:
                return NOT_OBSERVABLE
            return 0 if zero else facts["kpagecount"]
        if q.field == "nr_pages":
            return facts["nr_pages"]
        if q.field == "order":
            return facts["nr_pages"].bit_length() - 1
        if q.field == "anon":
            return int(bool(flags >> observe.KPF_ANON & 1))
        return int(zero)

    _names: set[str] | None = None

    def _vmstat_names(self) -> set[str]:
        if self._names is None:
            self._names = set(observe.vmstat())
        return self._names


def value_of(host: HostRun, value: Any) -> Any:
    if isinstance(value, Query):
        return host.query(value)
    if isinstance(value, Num):
        return value.value
    return None if value == "none" else value


def run_scenario(
    path: str, stmts: list[Stmt], settings: HostSettings, attempts: int = 3
) -> HostResult:
    """Model and kernel for one parsed scenario; settings must be entered already.

    /proc/vmstat is system-wide: another process faulting or splitting a THP while one of
    our statements runs lands in our delta. A scenario whose only disagreements are vmstat
    values is therefore run again, up to ``attempts`` times; a real difference between
    model and kernel repeats on every attempt, noise does not. The result says how many
    attempts it took."""
    result = run_once(path, stmts, settings)
    tries = 1
    while (
        tries < attempts
        and result.disagreements
        and all(r.what.startswith("vmstat.") for r in result.disagreements)
    ):
        result = run_once(path, stmts, settings)
        tries += 1
    result.attempts = tries
    return result


def run_once(path: str, stmts: list[Stmt], settings: HostSettings) -> HostResult:
    """One attempt of a scenario on the model and the kernel."""
    thp, mthp = scenario_config(stmts)
    model, after = run_model(path, stmts, variant_for_kernel(kernel_version()))
    applied = settings.apply(thp, mthp)
    result = HostResult(path, kernel_version(), applied)
    model_results = {r.line: r for r in model.results}
    workdir = Path(tempfile.mkdtemp(prefix="foliosim-oracle-", dir="/tmp"))
    host = HostRun(path, stmts, settings, workdir)
    host.workers = Workers()
    try:
        for stmt in stmts:
            if stmt.kind in ("config", "memory"):
                continue
            snap = after.get(stmt.line, {})
            before = observe.vmstat()
            host.run_statement(stmt, snap)
            deltas = {
                key: value - before.get(key, 0)
                for key, value in observe.vmstat().items()
                if value != before.get(key, 0)
            }
            for key, delta in deltas.items():
                host.vmstat[key] = host.vmstat.get(key, 0) + delta
            huge = {k: v for k, v in deltas.items() if any(w in k for w in HUGE_WORDS)}
            if huge:
                result.vmstat_deltas[stmt.line] = huge
            _compare(result, host, stmt, snap, model_results.get(stmt.line))
    finally:
        host.workers.close()
        for mnt in host.mounts.values():
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return result


def _compare(
    result: HostResult, host: HostRun, stmt: Stmt, snap: dict[str, Any], model_result: Any
) -> None:
    def add(what: str, model_value: Any, kernel_value: Any, **kw: Any) -> None:
        if kernel_value == NOT_OBSERVABLE or model_value == NOT_OBSERVABLE:
            status = "not observable"
        else:
            status = "agree" if model_value == kernel_value else "disagree"
        result.rows.append(
            Row(stmt.line, stmt.source, what, model_value, kernel_value, status, **kw)
        )

    if stmt.task is not None and stmt.kind not in ("proc",):
        m_errno, m_signal, _ = snap.get("tasks", {}).get(stmt.task, (None, None, False))
        add("errno", m_errno or 0, host.errno.get(stmt.task) or 0)
        add("signal", m_signal, host.signal.get(stmt.task))
    elif stmt.kind in ("truncate", "punch", "shrink"):
        add("errno", snap.get("global_errno") or 0, host.global_errno or 0)
    elif stmt.kind in ("expect", "print"):
        q = stmt.args["query"]
        assert isinstance(q, Query)
        model_value = model_result.values.get(q.text()) if model_result is not None else None
        kernel_value = host.query(q)
        if stmt.kind == "print":
            add(q.text(), model_value, kernel_value)
            return
        op, raw = str(stmt.args["op"]), stmt.args["value"]
        kernel_ok = None
        if kernel_value != NOT_OBSERVABLE:
            right = value_of(host, raw)
            kernel_ok = None if right == NOT_OBSERVABLE else compare(op, kernel_value, right)
        add(
            q.text(),
            model_value,
            kernel_value,
            expect_model=model_result.ok if model_result is not None else None,
            expect_kernel=kernel_ok,
        )
    elif stmt.kind in ("expect_warning", "expect_no_warnings"):
        add(
            "warnings",
            NOT_OBSERVABLE,
            NOT_OBSERVABLE,
            expect_model=model_result.ok if model_result is not None else None,
        )
