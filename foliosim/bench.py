"""`foliosim bench`: model workloads timed in one run, with peak memory and ratios.

Each workload is a scenario run on the model. Times are wall-clock from one run on a noisy
machine: compare the ratios printed beside each other, not absolute numbers across machines.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from foliosim.scenario.runner import execute
from foliosim.scenario.statements import parse_text


@dataclass
class Result:
    name: str
    seconds: float
    peak_bytes: int
    detail: str = ""


def _scenario(text: str) -> Callable[[], object]:
    stmts = parse_text("<bench>", text)
    return lambda: execute("<bench>", stmts)


def devdax_pud_walk(size_gib: int) -> str:
    """Map a whole 1G-aligned device-dax with PUDs, fork, the child maps it too, both unmap."""
    return (
        f"memory 1G\ndevdax d size={size_gib}G align=1G\ntask A\n"
        f"A: m = mmap {size_gib}G shared fd=d\nA: write m {size_gib}G\nA: fork B\n"
        f"B: read m {size_gib}G\nA: munmap m {size_gib}G\nB: munmap m {size_gib}G\n"
        f"expect free(d) == {size_gib * 262144}\n"
    )


def anon_4k(mib: int) -> str:
    return (
        f"config thp=never\ntask A\nA: m = mmap {mib}M\nA: write m {mib}M\nA: fork B\n"
        f"A: munmap m {mib}M\nB: exit\n"
    )


def anon_thp(mib: int) -> str:
    return (
        f"config thp=always\ntask A\nA: m = mmap {mib}M\nA: write m {mib}M\nA: fork B\n"
        f"A: munmap m {mib}M\nB: exit\n"
    )


def split_pmds(n: int) -> str:
    lines = [f"config thp=always\ntask A\nA: m = mmap {2 * n}M\nA: write m {2 * n}M"]
    lines += [f"A: mprotect m+{2 * i}M 1M r" for i in range(n)]
    return "\n".join(lines) + "\n"


def workloads(quick: bool) -> list[tuple[str, str, str]]:
    sizes = (1, 64) if quick else (1, 64, 1024)
    out = [
        (f"devdax {s} GiB PUD fault+fork+munmap", devdax_pud_walk(s), f"{s} PUDs") for s in sizes
    ]
    mib = 64 if quick else 1024
    out += [
        (f"anon {mib} MiB 4K fault+fork+munmap", anon_4k(mib), f"{mib * 256} PTEs"),
        (f"anon {mib} MiB PMD THP fault+fork+munmap", anon_thp(mib), f"{mib // 2} PMDs"),
        (
            "split 64 PMDs (mprotect half)" if quick else "split 512 PMDs (mprotect half)",
            split_pmds(64 if quick else 512),
            "PMD splits",
        ),
    ]
    return out


def measure(name: str, text: str, detail: str) -> Result:
    """Time one run, then run again under tracemalloc for the peak (tracemalloc slows
    allocation-heavy work several times, so it must not be in the timed run)."""
    job = _scenario(text)
    start = time.perf_counter()
    job()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    job()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Result(name, seconds, peak, detail)


def run_bench(quick: bool, progress: Callable[[str], None] | None = None) -> list[Result]:
    results = []
    for name, text, detail in workloads(quick):
        if progress:
            progress(name)
        results.append(measure(name, text, detail))
    return results
