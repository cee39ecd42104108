"""Memory of model workloads for `foliosim bench`, as the operating system sees it.

The model keeps per-page state in arrays as large as the configured RAM that the OS hands
out lazily (NumPy's zeros are calloc'd), so what a workload costs is the resident memory it
makes the process touch, not what it allocates: tracemalloc would count every array whole.
Each measurement runs in a fresh child process (`python -m foliosim.bench_memory`) so that
one workload's memory is not another's: peak resident growth while a scenario runs, and the
resident growth per page of one write statement.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def resident_bytes() -> int:
    """The process's resident set now (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start the high-water mark again from the resident set now (clear_refs "5"). The
    peak ru_maxrss reports survives exec: a child would start with its parent's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_resident_bytes() -> int:
    """The largest resident set since reset_peak() (VmHWM), or ru_maxrss without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_growth_of(job: Callable[[], object]) -> dict[str, Any]:
    """The peak resident growth while ``job`` runs (what it had to hold at its largest)."""
    gc.collect()
    reset_peak()
    before = resident_bytes()
    job()
    return {"peak_growth": max(peak_resident_bytes() - before, 0)}


def _child(mode: str, text: str) -> dict[str, Any]:
    from foliosim.gc_policy import collect_less
    from foliosim.scenario.runner import StmtResult, execute, run_statement
    from foliosim.scenario.statements import parse_text

    if mode == "fuzz":
        from foliosim.fuzz.engine import program_for, run_program

        lines = program_for(int(text), 100, None)
        return _peak_growth_of(lambda: run_program(lines, None))
    stmts = parse_text("<bench>", text)
    if mode == "peak":
        return _peak_growth_of(lambda: execute("<bench>", stmts))
    # "last": the resident growth of the scenario's last statement, kept after it ran.
    run = execute("<bench>", stmts[:-1])
    gc.collect()
    before = resident_bytes()
    last = stmts[-1]
    with collect_less():
        run_statement(run, last, StmtResult(last.line, last.source))
    gc.collect()
    after = resident_bytes()
    return {"growth": after - before, "resident": after}


def measure(mode: str, text: str) -> dict[str, Any]:
    """Run one measurement in a child process; {} if it could not run."""
    proc = subprocess.run(
        [sys.executable, "-m", "foliosim.bench_memory", mode],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def peak_growth(text: str) -> int | None:
    """Peak resident growth while the scenario runs."""
    return measure("peak", text).get("peak_growth")


def fuzz_peak_growth(seed: int) -> int | None:
    return measure("fuzz", str(seed)).get("peak_growth")


def write_growth(mib: int, memory_gib: int) -> dict[str, Any]:
    """Resident growth of writing ``mib`` MiB of 4K anonymous pages (thp=never), and the
    process's resident set after it."""
    text = (
        f"config thp=never\nmemory {memory_gib}G\ntask A\nA: m = mmap {mib}M\nA: write m {mib}M\n"
    )
    return measure("last", text)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.stdin.read())))
