"""Host preconditions and the THP sysfs settings a run needs, with a guaranteed restore.

Everything the oracle writes under /sys is snapshotted first and written back on exit
(``HostSettings`` is a context manager; restore runs from ``finally``). khugepaged cannot be
stopped while THP is enabled, so it is slowed down to one tiny pass a day: writing
scan_sleep_millisecs wakes it for one pass right away, which happens before any scenario
process exists. The day's sleep only holds while khugepaged has work: with no mm on its
list it waits for the first one to register instead (khugepaged_wait_work ->
khugepaged_wait_event, mm/khugepaged.c) and scans at once, collapsing a scenario's shmem
or anonymous ranges behind the model's back (host-fuzz seed 6098: a 4M huge=always shmem
mapping registered the mm and khugepaged collapsed the file under a 64K mapping). So a
parked helper process keeps one registered mm on the list for the whole run
(``KhugepagedParker``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

THP = Path("/sys/kernel/mm/transparent_hugepage")
KHUGEPAGED = THP / "khugepaged"
LOCK_PATH = Path("/tmp/foliosim-oracle.lock")
MIN_KERNEL = (6, 7)  # PAGEMAP_SCAN
PRECONDITION_EXIT = 3
UNTRANSLATABLE_EXIT = 4

QUIET_KHUGEPAGED = {
    "scan_sleep_millisecs": "86400000",
    "alloc_sleep_millisecs": "86400000",
    "pages_to_scan": "8",
}


def kernel_version() -> str:
    return platform.release()


def _version_tuple(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def missing_preconditions() -> list[str]:
    """What keeps the oracle from running here, one reason a line (empty: all present)."""
    missing: list[str] = []
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return [f"needs Linux on x86_64, this is {platform.system()} {platform.machine()}"]
    if os.geteuid() != 0:
        missing.append("needs root (kpageflags, pagemap PFNs, THP sysfs, drop_caches)")
    if _version_tuple(kernel_version()) < MIN_KERNEL:
        missing.append(f"kernel {kernel_version()} is older than 6.7 (no PAGEMAP_SCAN ioctl)")
    if not (THP / "enabled").exists():
        missing.append(f"{THP}/enabled is missing (no CONFIG_TRANSPARENT_HUGEPAGE)")
    elif not os.access(THP / "enabled", os.W_OK):
        missing.append(f"{THP}/enabled is not writable")
    for path in ("/proc/kpageflags", "/proc/kpagecount"):
        try:
            with open(path, "rb") as f:
                f.read(8)
        except OSError as exc:
            missing.append(f"{path} is not readable ({exc.strerror})")
    try:
        import ctypes

        buf = ctypes.create_string_buffer(4096)
        ctypes.memset(buf, 1, 1)
        addr = ctypes.addressof(buf) & ~4095
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((addr // 4096) * 8)
            entry = int.from_bytes(f.read(8), "little")
        if not entry >> 63 or not entry & ((1 << 55) - 1):
            missing.append("/proc/self/pagemap shows no PFNs (needs CAP_SYS_ADMIN)")
    except OSError as exc:
        missing.append(f"/proc/self/pagemap is not readable ({exc.strerror})")
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        missing.append("/proc/sys/vm/drop_caches is not writable")
    return missing


def mthp_sizes() -> dict[int, Path]:
    """hugepages-<N>kB directories with an anonymous `enabled` file, by size in bytes."""
    out: dict[int, Path] = {}
    for d in THP.glob("hugepages-*kB"):
        m = re.match(r"hugepages-(\d+)kB", d.name)
        if m and (d / "enabled").exists():
            out[int(m.group(1)) * 1024] = d
    return out


def read_choice(path: Path) -> str:
    """The bracketed word of a sysfs choice file, or the whole (stripped) content."""
    text = path.read_text().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def snapshot() -> dict[str, str]:
    """Every THP setting the oracle may change, as path -> value."""
    paths = [THP / "enabled", THP / "defrag", THP / "shmem_enabled", THP / "use_zero_page"]
    paths += [KHUGEPAGED / name for name in (*QUIET_KHUGEPAGED, "max_ptes_none", "defrag")]
    for d in mthp_sizes().values():
        paths.append(d / "enabled")
        if (d / "shmem_enabled").exists():
            paths.append(d / "shmem_enabled")
    return {str(p): read_choice(p) for p in paths if p.exists()}


def _write(path: str | Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


# The parked process: an anonymous mapping with a page faulted in (an anon_vma, which
# khugepaged_enter_vma() needs) and MADV_HUGEPAGE (14), registered again on each line read
# (after `enabled` changes), until stdin closes.
_PARKER = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def register():
    addr = libc.mmap(None, 4 << 20, 3, 0x22, -1, 0)
    ctypes.memset(addr, 1, 1)
    libc.madvise(addr, 4 << 20, 14)
register()
print("ready", flush=True)
for _ in sys.stdin:
    register()
    print("ready", flush=True)
"""


class KhugepagedParker:
    """A helper process whose mm stays on khugepaged's list (see the module docstring)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PARKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._wait_ready()

    def register_again(self) -> None:
        """After THP `enabled` changed: khugepaged_enter_vma() registers only when THP is
        allowed, and a stopped khugepaged may have let the mm go."""
        if self.proc is None or self.proc.stdin is None:
            return
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class HostSettings:
    """Set THP sysfs for a scenario (and the disk's read-ahead) and always restore it."""

    readahead_kb: int | None = 128
    readahead_path: Path | None = None
    saved: dict[str, str] = field(default_factory=dict)
    lock: IO[str] | None = None
    parker: KhugepagedParker = field(default_factory=KhugepagedParker)

    def __enter__(self) -> HostSettings:
        LOCK_PATH.touch(exist_ok=True)
        self.lock = open(LOCK_PATH, "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.saved = snapshot()
        if self.readahead_path is not None and self.readahead_kb is not None:
            self.saved[str(self.readahead_path)] = self.readahead_path.read_text().strip()
        try:
            self.parker.start()  # registered before the pass the writes below start
            for name, value in QUIET_KHUGEPAGED.items():
                _write(KHUGEPAGED / name, value)
            if self.readahead_path is not None and self.readahead_kb is not None:
                _write(self.readahead_path, str(self.readahead_kb))
        except BaseException:
            self.restore()
            raise
        return self

    def apply(self, thp: str, mthp: dict[int, str]) -> dict[str, str]:
        """Settings for one scenario: `thp=` -> enabled, `mthp=` -> hugepages-*/enabled (every
        size not named is `never`, the PMD size `inherit`), shmem_enabled `never` for the
        internal mount. Returns what was applied."""
        applied: dict[str, str] = {}

        def put(path: Path, value: str) -> None:
            _write(path, value)
            applied[str(path)] = read_choice(path)

        put(THP / "enabled", thp)
        self.parker.register_again()
        put(THP / "shmem_enabled", "never")
        put(THP / "use_zero_page", "1")
        for size, d in sorted(mthp_sizes().items()):
            default = "inherit" if size == 2 << 20 else "never"
            put(d / "enabled", mthp.get(size, default))
            if (d / "shmem_enabled").exists():
                put(d / "shmem_enabled", "inherit" if size == 2 << 20 else "never")
        return applied

    def restore(self) -> None:
        self.parker.stop()
        # mTHP sizes first, so `enabled` is written last with everything else in place.
        for path, value in sorted(self.saved.items(), key=lambda kv: kv[0].endswith("/enabled")):
            with contextlib.suppress(OSError):
                _write(path, value)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.restore()
        finally:
            if self.lock is not None:
                self.lock.close()
                self.lock = None


def disk_readahead_path(directory: Path) -> Path | None:
    """/sys/block/<disk>/queue/read_ahead_kb of the block device holding ``directory``."""
    try:
        dev = os.stat(directory).st_dev
    except OSError:
        return None
    link = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not link.exists():
        return None
    real = link.resolve()
    for cand in (real / "queue", real.parent / "queue"):
        if (cand / "read_ahead_kb").exists():
            return cand / "read_ahead_kb"
    return None


def drop_caches(value: int) -> None:
    os.sync()
    _write("/proc/sys/vm/drop_caches", str(value))
