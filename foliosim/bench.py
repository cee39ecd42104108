"""`foliosim bench`: model workloads timed in one run, against the plain per-page model and the
host kernel doing the same system calls, with ratios and peak memory.

Times are wall clock from one run on whatever machine this is: compare the ratios printed
beside each other, not absolute numbers across machines. Peak memory is the resident growth
of a second run of each model workload in a fresh process (bench_memory.py: the model's
per-page arrays are handed out by the OS lazily, so resident memory is what they cost). The
per-page model is benchmarks/perpage.py of a source checkout
(not part of the package): its column is empty when that file is not there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from foliosim.bench_host import host_description, host_times
from foliosim.bench_memory import fuzz_peak_growth, peak_growth, write_growth
from foliosim.gc_policy import collect_less
from foliosim.scenario.runner import Run, StmtResult, build_kernel, execute, run_statement
from foliosim.scenario.statements import parse_text

Key = TypeVar("Key")

PAGE = 4096


@dataclass
class Result:
    name: str
    detail: str
    model_s: float | None = None
    perpage_s: float | None = None
    kernel_s: float | None = None
    peak_bytes: int | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def vs_kernel(self) -> float | None:
        """Model time / kernel time (the target is <= 1)."""
        if self.model_s is None or not self.kernel_s:
            return None
        return self.model_s / self.kernel_s

    @property
    def vs_perpage(self) -> float | None:
        """Per-page model time / model time: how many times faster the model is."""
        if self.perpage_s is None or not self.model_s:
            return None
        return self.perpage_s / self.model_s

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["vs_kernel"] = self.vs_kernel
        out["vs_perpage"] = self.vs_perpage
        return out


# ---- running the model statement by statement ------------------------------------------------
def timed_statements(text: str) -> dict[int, float]:
    """Run a scenario; seconds per statement, by 1-based line."""
    stmts = parse_text("<bench>", text)
    kernel = build_kernel("<bench>", stmts, None)
    run = Run("<bench>", kernel)
    kernel.pinsets = run.pins  # type: ignore[attr-defined]
    out: dict[int, float] = {}
    with collect_less():  # as `foliosim run` does
        for stmt in stmts:
            if stmt.kind in ("config", "memory"):
                continue
            start = time.perf_counter()
            run_statement(run, stmt, StmtResult(stmt.line, stmt.source))
            out[stmt.line] = time.perf_counter() - start
    return out


def anon_program(mib: int, thp: bool) -> str:
    """Lines 3-6: fault, fork, the child exits, munmap."""
    return (
        f"config thp={'always' if thp else 'never'}\ntask A\nA: m = mmap {mib}M\n"
        f"A: write m {mib}M\nA: fork B\nB: exit\nA: munmap m {mib}M\n"
    )


def devdax_pud_walk(size_gib: int) -> str:
    """Map a whole 1G-aligned device-dax with PUDs, fork, the child maps it too, both unmap."""
    return (
        f"memory 1G\ndevdax d size={size_gib}G align=1G\ntask A\n"
        f"A: m = mmap {size_gib}G shared fd=d\nA: write m {size_gib}G\nA: fork B\n"
        f"B: read m {size_gib}G\nA: munmap m {size_gib}G\nB: munmap m {size_gib}G\n"
        f"expect free(d) == {size_gib * 262144}\n"
    )


def split_program(n: int) -> str:
    """n PMD THPs, then munmap the first half of each: n PMD splits (line 5 on)."""
    lines = [f"config thp=always\ntask A\nA: m = mmap {2 * n}M\nA: write m {2 * n}M"]
    lines += [f"A: munmap m+{2 * i}M 1M" for i in range(n)]
    return "\n".join(lines) + "\n"


def long_scenario(statements: int) -> str:
    """A scenario of ``statements`` task statements and expectations (groups of four)."""
    lines = ["task A"]
    for i in range(statements // 4):
        lines += [
            f"A: m{i} = mmap 64K",
            f"A: write m{i} 64K",
            "expect A.rss.anon == 16",
            f"A: munmap m{i} 64K",
        ]
    return "\n".join(lines) + "\n"


# ---- the per-page reference model ----------------------------------------------------------------
def load_perpage() -> ModuleType | None:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "perpage.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("foliosim_bench_perpage", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def best_of(runs: list[dict[Key, float]]) -> dict[Key, float]:
    """Per key, the fastest of several repetitions (a slow one is the machine, not the code)."""
    return {key: min(run[key] for run in runs) for key in runs[0]}


def perpage_anon(pp: ModuleType, mib: int, thp: bool, repeats: int = 1) -> dict[str, float]:
    with collect_less():  # the same GC setting as the model's runs
        return best_of([_perpage_anon(pp, mib, thp) for _ in range(repeats)])


def _perpage_anon(pp: ModuleType, mib: int, thp: bool) -> dict[str, float]:
    model = pp.PerPageModel(thp=thp)
    model.task("A")
    addr, size = 1 << 40, mib << 20
    model.mmap("A", addr, size)
    out = {}
    start = time.perf_counter()
    model.touch("A", addr, size, write=True)
    out["fault"] = time.perf_counter() - start
    start = time.perf_counter()
    model.fork("A", "B")
    out["fork"] = time.perf_counter() - start
    model.exit("B")
    start = time.perf_counter()
    model.munmap("A", addr, size)
    out["munmap"] = time.perf_counter() - start
    return out


def perpage_split(pp: ModuleType, n: int, repeats: int = 1) -> float:
    with collect_less():
        return min(_perpage_split(pp, n) for _ in range(repeats))


def _perpage_split(pp: ModuleType, n: int) -> float:
    model = pp.PerPageModel(thp=True)
    model.task("A")
    addr = 1 << 40
    model.mmap("A", addr, 2 * n << 20)
    model.touch("A", addr, 2 * n << 20, write=True)
    start = time.perf_counter()
    for i in range(n):
        model.munmap("A", addr + (2 * i << 20), 1 << 20)
    return time.perf_counter() - start


# ---- workloads -----------------------------------------------------------------------------
def bench_anon(
    results: list[Result],
    mib: int,
    thp: bool,
    pp: ModuleType | None,
    host: dict[str, Any] | None,
    repeats: int = 1,
) -> None:
    kind = "PMD THP" if thp else "4K"
    text = anon_program(mib, thp)
    times = best_of([timed_statements(text) for _ in range(repeats)])
    peak = peak_growth(text)
    ref = perpage_anon(pp, mib, thp, repeats) if pp is not None else {}
    hk = host["thp" if thp else "4k"] if host else {}
    units = f"{mib * 256} PTEs" if not thp else f"{mib // 2} PMDs"
    for op, line in (("fault", 4), ("fork", 5), ("munmap", 7)):
        results.append(
            Result(
                f"anon {kind} {op} {_size(mib)}",
                units,
                model_s=times[line],
                perpage_s=ref.get(op),
                kernel_s=hk.get(op),
                peak_bytes=peak,
            )
        )


def bench_devdax(results: list[Result], size_gib: int, repeats: int = 1) -> None:
    """The issue's "PUD fault + fork + munmap" is the parent's write fault, fork and munmap
    (lines 5, 6, 8); the walk also has the child fault the device in (line 7) and unmap it
    (line 9), timed beside."""
    text = devdax_pud_walk(size_gib)
    stmts = parse_text("<bench>", text)
    run = execute("<bench>", stmts)
    assert not run.failed
    times = best_of([timed_statements(text) for _ in range(repeats)])
    issue = times[5] + times[6] + times[8]
    child = times[7] + times[9]
    peak = peak_growth(text)
    results.append(
        Result(
            f"devdax PUD fault+fork+munmap {_size(size_gib << 10)}",
            f"{size_gib} PUDs",
            model_s=issue,
            peak_bytes=peak,
            note=f"the child's refault + munmap add {child * 1e3:.1f} ms (whole walk "
            f"{(issue + child) * 1e3:.1f} ms); no device-dax on the host, none in the per-page "
            "model",
            extra={"child_s": child, "walk_s": issue + child},
        )
    )


def bench_split(
    results: list[Result],
    n: int,
    pp: ModuleType | None,
    host: dict[str, Any] | None,
    repeats: int = 1,
) -> None:
    text = split_program(n)
    times = best_of([timed_statements(text) for _ in range(repeats)])
    peak = peak_growth(text)
    results.append(
        Result(
            f"split {n} PMDs (munmap half of each THP)",
            f"{n} PMD splits",
            model_s=sum(t for line, t in times.items() if line >= 5),
            perpage_s=perpage_split(pp, n, repeats) if pp is not None else None,
            kernel_s=host["split"] if host else None,
            peak_bytes=peak,
        )
    )


def fuzz_rate(seeds: int, steps: int, ownership: bool) -> tuple[float, int]:
    from foliosim.fuzz.engine import program_for, run_program

    programs = [program_for(seed, steps, None) for seed in range(seeds)]
    done = 0
    with collect_less():  # as campaign workers run
        start = time.perf_counter()
        for lines in programs:
            done += run_program(lines, None, ownership=ownership).steps
        elapsed = time.perf_counter() - start
    return done / elapsed, done


def bench_fuzz(results: list[Result], seeds: int, steps: int) -> None:
    rate_on, done = fuzz_rate(seeds, steps, True)
    rate_off, _ = fuzz_rate(seeds, steps, False)
    peak = fuzz_peak_growth(0)
    results.append(
        Result(
            "fuzz steps/s, all invariants, ownership on",
            f"{done} steps",
            model_s=done / rate_on,
            peak_bytes=peak,
            note=f"{rate_on:.0f} steps/s; ownership off {rate_off:.0f} steps/s "
            f"(on/off = {rate_on / rate_off:.2f})",
            extra={"steps_per_s": rate_on, "steps_per_s_ownership_off": rate_off},
        )
    )


def bench_fuzz_parallel(results: list[Result], programs: int, steps: int) -> None:
    """The campaign as `foliosim fuzz --jobs N` runs it, one worker process per CPU: what a
    user fuzzing on this machine gets. Its time includes starting the workers."""
    from foliosim.fuzz.campaign import campaign

    jobs = max(1, os.cpu_count() or 1)
    summary = campaign(None, 0, programs, steps, jobs=jobs)
    rate = summary.steps_per_second
    results.append(
        Result(
            f"fuzz steps/s, all invariants, {jobs} processes",
            f"{summary.steps} steps",
            model_s=summary.steps / rate if rate else None,
            note=f"{rate:.0f} steps/s (foliosim fuzz --jobs {jobs}); "
            f"{len(summary.findings)} findings",
            extra={"steps_per_s": rate, "jobs": jobs},
        )
    )


def bench_scenario(results: list[Result], statements: int) -> None:
    text = long_scenario(statements)
    start = time.perf_counter()
    stmts = parse_text("<bench>", text)
    parsed = time.perf_counter()
    run = execute("<bench>", stmts)
    done = time.perf_counter()
    assert not run.failed
    peak = peak_growth(text)
    results.append(
        Result(
            f"scenario parse+run, {len(stmts)} statements",
            f"{len(stmts)} stmts",
            model_s=done - start,
            peak_bytes=peak,
            note=f"parse {parsed - start:.3f} s, run {done - parsed:.3f} s",
            extra={"parse_s": parsed - start, "run_s": done - parsed},
        )
    )


def bench_memory(results: list[Result], mib: int, big_gib: int) -> None:
    """Model state per PTE-mapped 4K anonymous page, as resident memory: writing ``mib`` MiB
    in a fresh process, and the whole process after writing ``big_gib`` GiB."""
    one = write_growth(mib, max(2 * mib >> 10, 4))
    big = write_growth(big_gib << 10, big_gib + 16)
    pages = mib * 256
    per_page = one["growth"] / pages if one else None
    resident = big.get("resident")
    note = (
        f"{per_page:.1f} bytes/page resident (target 16); process after {big_gib} GiB: "
        f"{resident / 2**30:.2f} GiB resident (target < 2)"
        if per_page is not None and resident is not None
        else "could not measure"
    )
    results.append(
        Result(
            f"memory: PTE-mapped 4K anon, {_size(mib)}; process at {big_gib} GiB",
            f"{pages} pages",
            note=note,
            extra={
                "bytes_per_page": per_page or 0.0,
                "resident_bytes_after_big": float(resident or 0),
                "big_gib": float(big_gib),
            },
        )
    )


def _size(mib: int) -> str:
    return f"{mib >> 10} GiB" if mib >= 1024 and not mib % 1024 else f"{mib} MiB"


# The anon, split and device-dax rows take the best of this many repetitions in every column
# (model, per-page model, kernel): their model times are milliseconds, where one run is noise.
# Five, as timeit's default: with three, the 4K fork row's ratio to the per-page model spread
# over 47-72 in five back-to-back runs on a noisy 2-vCPU machine (2026-12-03).
REPEATS = 5


def run_bench(quick: bool, progress: Callable[[str], None] | None = None) -> list[Result]:
    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    mib = 64 if quick else 1024
    nsplit = 64 if quick else 512
    pp = load_perpage()
    results: list[Result] = []
    step("host kernel")
    host, why = host_times(mib, nsplit, REPEATS)
    for thp in (False, True):
        step(f"anon {'THP' if thp else '4K'}")
        bench_anon(results, mib, thp, pp, host, REPEATS)
    step("split")
    bench_split(results, nsplit, pp, host, REPEATS)
    for size in (1, 64) if quick else (1, 64, 1024):
        step(f"devdax {size} GiB")
        bench_devdax(results, size, REPEATS)
    step("fuzz")
    bench_fuzz(results, 8 if quick else 40, 100)
    bench_fuzz_parallel(results, 8 if quick else 400, 100)
    step("scenario")
    bench_scenario(results, 1000 if quick else 10000)
    step("memory")
    bench_memory(results, 64 if quick else 1024, 4 if quick else 64)
    if host is None:
        for r in results:
            if r.kernel_s is None and not r.note:
                r.note = f"kernel: {why}"
    return results


def machine() -> str:
    return host_description()
