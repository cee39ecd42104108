"""Reading the real kernel's state of one process: pagemap, PAGEMAP_SCAN, kpageflags,
kpagecount, smaps, maps and /proc/vmstat.

RSS is summed from /proc/PID/smaps over the VMAs inside the scenario's address window only:
each task is a Python process whose interpreter has its own anonymous and file memory, so
the whole-process RssAnon/RssFile/RssShmem of /proc/PID/status would carry that too. smaps
counts exactly what MM_ANONPAGES/MM_FILEPAGES/MM_SHMEMPAGES count (a PMD adds 512 pages,
the zero pages nothing).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
from dataclasses import dataclass

PAGE = 4096
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61
PM_GUARD_REGION = 1 << 58
PM_EXCLUSIVE = 1 << 56
PFN_MASK = (1 << 55) - 1

KPF_DIRTY = 4
KPF_ANON = 12
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_THP = 22
KPF_ZERO_PAGE = 24

PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg) (96 bytes)


class PageRegion(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


class PmScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


@dataclass
class Vma:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def pagemap_entry(pid: int, addr: int) -> int:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        return int.from_bytes(os.pread(f.fileno(), 8, (addr // PAGE) * 8), "little")


def scan_categories(pid: int, addr: int) -> int | None:
    """PAGEMAP_SCAN categories of the page at addr (None when the ioctl is refused)."""
    page = addr & ~(PAGE - 1)
    vec = (PageRegion * 1)()
    arg = PmScanArg(
        size=ctypes.sizeof(PmScanArg),
        flags=0,
        start=page,
        end=page + PAGE,
        walk_end=0,
        vec=ctypes.addressof(vec),
        vec_len=1,
        max_pages=0,
        category_inverted=0,
        category_mask=0,
        category_anyof_mask=0,
        return_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE,
    )
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
    except OSError:
        return None
    finally:
        os.close(fd)
    if n < 1 or not vec[0].start <= page < vec[0].end:
        return 0
    return int(vec[0].categories)


def level(pid: int, addr: int) -> str | None:
    """The page-table level mapping addr: `pmd` when PAGEMAP_SCAN reports the page as part
    of a present huge PMD, `pte` when present otherwise, None when not present."""
    entry = pagemap_entry(pid, addr)
    if not entry & PM_PRESENT:
        return None
    cats = scan_categories(pid, addr)
    if cats is None:
        return "pmd" if _in_pmd_mapped_smaps(pid, addr) else "pte"
    return "pmd" if cats & PAGE_IS_HUGE else "pte"


def _in_pmd_mapped_smaps(pid: int, addr: int) -> bool:
    for vma, fields in smaps(pid):
        if vma.start <= addr < vma.end:
            return any(
                fields.get(k, 0) for k in ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped")
            )
    return False


def kpage(path: str, pfn: int, count: int = 1) -> list[int]:
    with open(path, "rb") as f:
        raw = os.pread(f.fileno(), 8 * count, pfn * 8)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def folio_pages(pfn: int) -> int:
    """Pages in the folio holding pfn, from the compound head/tail bits of kpageflags."""
    flags = kpage("/proc/kpageflags", pfn)[0]
    if not flags & ((1 << KPF_COMPOUND_HEAD) | (1 << KPF_COMPOUND_TAIL)):
        return 1
    head = pfn
    window = 512
    while kpage("/proc/kpageflags", head)[0] & (1 << KPF_COMPOUND_TAIL):
        lo = max(0, head - window)
        flags_list = kpage("/proc/kpageflags", lo, head - lo)
        for i in range(len(flags_list) - 1, -1, -1):
            head = lo + i
            if not flags_list[i] & (1 << KPF_COMPOUND_TAIL):
                break
        else:
            head = lo
    n = 1
    while True:
        chunk = kpage("/proc/kpageflags", head + n, window)
        for f in chunk:
            if not f & (1 << KPF_COMPOUND_TAIL):
                return n
            n += 1
        if len(chunk) < window:
            return n


def page_facts(pid: int, addr: int) -> dict[str, int] | None:
    """What /proc says about the page mapped at addr: pfn, flags, kpagecount, folio size."""
    entry = pagemap_entry(pid, addr)
    if not entry & PM_PRESENT:
        return None
    pfn = entry & PFN_MASK
    flags = kpage("/proc/kpageflags", pfn)[0]
    return {
        "pfn": pfn,
        "flags": flags,
        "kpagecount": kpage("/proc/kpagecount", pfn)[0],
        "nr_pages": folio_pages(pfn),
        "exclusive": int(bool(entry & PM_EXCLUSIVE)),
        "file": int(bool(entry & PM_FILE)),
    }


def maps(pid: int) -> list[Vma]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append(
                Vma(lo, hi, parts[1], int(parts[2], 16), parts[5].strip() if len(parts) > 5 else "")
            )
    return out


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \S+\s*(.*)$")


def smaps(pid: int) -> list[tuple[Vma, dict[str, int]]]:
    out: list[tuple[Vma, dict[str, int]]] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                out.append(
                    (
                        Vma(
                            int(m.group(1), 16),
                            int(m.group(2), 16),
                            m.group(3),
                            int(m.group(4), 16),
                            m.group(5).strip(),
                        ),
                        {},
                    )
                )
                continue
            key, _, rest = line.partition(":")
            value = rest.split()
            if out and value and value[0].isdigit():
                out[-1][1][key] = int(value[0])
    return out


def is_shmem_path(path: str, shmem_dirs: tuple[str, ...]) -> bool:
    return path.startswith(("/dev/zero", "/memfd:", "/SYSV")) or any(
        path.startswith(d) for d in shmem_dirs
    )


def window_rss(pid: int, lo: int, hi: int, shmem_dirs: tuple[str, ...]) -> dict[str, int]:
    """MM_ANONPAGES / MM_FILEPAGES / MM_SHMEMPAGES of the VMAs inside [lo, hi), in pages."""
    rss = {"anon": 0, "file": 0, "shmem": 0}
    for vma, fields in smaps(pid):
        if vma.end <= lo or vma.start >= hi:
            continue
        anon = fields.get("Anonymous", 0) // 4
        rest = fields.get("Rss", 0) // 4 - anon
        rss["anon"] += anon
        if rest:
            rss["shmem" if is_shmem_path(vma.path, shmem_dirs) else "file"] += rest
    return rss


def vmstat() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/vmstat") as f:
        for line in f:
            name, _, value = line.partition(" ")
            out[name] = int(value)
    return out


def _pagemap_range(pid: int, page: int, stop: int) -> list[int]:
    """The /proc/PID/pagemap entries of the pages [page, stop)."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        raw = os.pread(f.fileno(), 8 * ((stop - page) // PAGE), (page // PAGE) * 8)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


def touch_limit(pid: int, start: int, length: int, write: bool) -> tuple[int, str | None]:
    """How far a touch of [start, start+length) gets before a signal, without touching:
    the end of the part that is mapped with the needed permission, not a guard region and
    inside the backing file or already mapped, and the signal the next page would raise.

    A page past EOF faults with SIGBUS only if it is not mapped: tmpfs maps huge folios with
    a PMD across i_size on purpose (finish_fault, filemap_map_pages, mm/ 7.1.8), and then a
    load or store there does not fault at all. A fault inside the range can map such pages
    on the way, so the caller asks again from the stop after touching up to it."""
    page = start & ~(PAGE - 1)
    end = start + max(length, 1)
    vmas = maps(pid)
    while page < end:
        vma = next((v for v in vmas if v.start <= page < v.end), None)
        if vma is None or (vma.perms[0] != "r" and not (write and vma.perms[1] == "w")):
            return page, "SIGSEGV"
        if write and vma.perms[1] != "w":
            return page, "SIGSEGV"
        stop = min(vma.end, (end + PAGE - 1) & ~(PAGE - 1))
        entries: list[int] | None = None  # pagemap of [page, stop), read at most once
        if vma.path and not vma.path.startswith("["):
            try:
                size = os.stat(f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}").st_size
            except OSError:
                size = None
            if size is not None:
                eof = vma.start + max(0, ((size + PAGE - 1) & ~(PAGE - 1)) - vma.offset)
                if eof < stop:
                    if page >= eof:  # only the pages mapped now go on
                        entries = _pagemap_range(pid, page, stop)
                        mapped = next(
                            (i for i, e in enumerate(entries) if not e & PM_PRESENT), len(entries)
                        )
                        if not mapped:
                            return page, "SIGBUS"
                        stop = page + mapped * PAGE
                    else:
                        stop = eof
        if entries is None:
            entries = _pagemap_range(pid, page, stop)
        for i, entry in enumerate(entries[: (stop - page) // PAGE]):
            if entry & PM_GUARD_REGION:
                return page + i * PAGE, "SIGSEGV"
        page = stop
    return end, None
