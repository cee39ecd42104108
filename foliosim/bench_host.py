"""The host kernel doing the benchmark's system calls, timed in a child process.

The child maps anonymous memory with ctypes mmap, faults it in with MADV_POPULATE_WRITE
(one system call that runs the kernel's fault path for every page, without a Python loop per
page), forks (the child exits at once), and unmaps. MADV_NOHUGEPAGE / MADV_HUGEPAGE select
4K pages or PMD THPs. Times are wall clock of the calls themselves, the best of a few
repetitions (as for the model and the per-page model: one slow repetition is the machine).
The forking process is a small Python interpreter: its own page tables are copied too (a few
MiB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

CHILD = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_POPULATE_WRITE = 14, 15, 23
PMD = 2 << 20

def check(rc, what):
    if rc != 0:
        raise OSError(ctypes.get_errno(), what)

def region(size, thp):
    raw = libc.mmap(None, size + PMD, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    if raw in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    base = (raw + PMD - 1) & ~(PMD - 1)
    check(libc.madvise(base, size, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE), "madvise")
    return base

def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

def fork_once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid

def workload(size, thp):
    base = region(size, thp)
    out = {"fault": timed(lambda: check(libc.madvise(base, size, MADV_POPULATE_WRITE),
                                        "MADV_POPULATE_WRITE"))}
    pids = []
    out["fork"] = timed(lambda: pids.append(fork_once()))
    os.waitpid(pids[0], 0)
    out["munmap"] = timed(lambda: check(libc.munmap(base, size), "munmap"))
    return out

def split(n):
    base = region(2 * n << 20, True)
    check(libc.madvise(base, 2 * n << 20, MADV_POPULATE_WRITE), "MADV_POPULATE_WRITE")
    def go():
        for i in range(n):
            check(libc.munmap(base + (2 * i << 20), 1 << 20), "munmap")
    seconds = timed(go)
    libc.munmap(base, 2 * n << 20)
    return seconds

def best(runs):
    return {op: min(run[op] for run in runs) for op in runs[0]}

mib, nsplit, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
size = mib << 20
result = {
    "4k": best([workload(size, False) for _ in range(repeats)]),
    "thp": best([workload(size, True) for _ in range(repeats)]),
    "split": min(split(nsplit) for _ in range(repeats)),
}
print(json.dumps(result))
"""


def host_times(mib: int, nsplit: int, repeats: int = 1) -> tuple[dict[str, Any] | None, str]:
    """Run the syscalls in a child interpreter; (times, "") or (None, why not)."""
    if not sys.platform.startswith("linux"):
        return None, "not Linux"
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(mib), str(nsplit), str(repeats)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"host run failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"host run failed: {last}"
    return json.loads(done.stdout), ""


def host_description() -> str:
    import os
    import platform

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"
