"""/proc/kpagecount and /proc/kpageflags as fs/proc/page.c (Linux 7.1.8) produces them.

Both files are arrays of u64 indexed by PFN. kpage_read() asks pfn_to_online_page() for each
PFN: ZONE_DEVICE memory (device-dax, fs-dax) is never online, so its entries read 0 — not
KPF_NOPAGE, which only stable_page_flags(NULL) would give and kpage_read never calls with
NULL. On x86-64 arch_add_memory() raises max_pfn over device memory, so those PFNs are inside
the file (get_max_dump_pfn) and read as 0. The KPF_* bit numbers are those of
include/uapi/linux/kernel-page-flags.h.

The model does not track PG_uptodate: anonymous and page-cache folios are reported uptodate
(the kernel marks them so before mapping them); free RAM reads as a free buddy page.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.physmem import Folio

# include/uapi/linux/kernel-page-flags.h
KPF_LOCKED = 0
KPF_ERROR = 1
KPF_REFERENCED = 2
KPF_UPTODATE = 3
KPF_DIRTY = 4
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_WRITEBACK = 8
KPF_RECLAIM = 9
KPF_BUDDY = 10
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPCACHE = 13
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_UNEVICTABLE = 18
KPF_HWPOISON = 19
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_OFFLINE = 23
KPF_ZERO_PAGE = 24
KPF_IDLE = 25
KPF_PGTABLE = 26
KPF_RESERVED = 32  # include/linux/kernel-page-flags.h (kernel-internal bits)

KPF_NAMES = {
    KPF_LOCKED: "locked",
    KPF_ERROR: "error",
    KPF_REFERENCED: "referenced",
    KPF_UPTODATE: "uptodate",
    KPF_DIRTY: "dirty",
    KPF_LRU: "lru",
    KPF_ACTIVE: "active",
    KPF_SLAB: "slab",
    KPF_WRITEBACK: "writeback",
    KPF_RECLAIM: "reclaim",
    KPF_BUDDY: "buddy",
    KPF_MMAP: "mmap",
    KPF_ANON: "anonymous",
    KPF_SWAPCACHE: "swapcache",
    KPF_SWAPBACKED: "swapbacked",
    KPF_COMPOUND_HEAD: "compound_head",
    KPF_COMPOUND_TAIL: "compound_tail",
    KPF_HUGE: "huge",
    KPF_UNEVICTABLE: "unevictable",
    KPF_HWPOISON: "hwpoison",
    KPF_NOPAGE: "nopage",
    KPF_KSM: "ksm",
    KPF_THP: "thp",
    KPF_OFFLINE: "offline",
    KPF_ZERO_PAGE: "zero_page",
    KPF_IDLE: "idle_page",
    KPF_PGTABLE: "pgtable",
    KPF_RESERVED: "reserved",
}


def kpf_names(value: int) -> str:
    """The flag names page-types (tools/mm/page-types.c) prints, joined with commas."""
    return ",".join(name for bit, name in sorted(KPF_NAMES.items()) if value >> bit & 1) or "0"


def max_dump_pfn(k: Kernel) -> int:
    """get_max_dump_pfn() (fs/proc/page.c, 7.1.8): max_pfn rounded up to a memory section
    (SPARSEMEM; 128 MiB sections on x86-64, 1 GiB-aligned regions cover it elsewhere).
    max_pfn covers device memory added with arch_add_memory()."""
    top = k.physmem.ram_pages
    for _start, end, _pgmap in k.physmem.device_regions:
        top = max(top, end)
    section = (128 << 20) >> k.page_shift
    return (top + section - 1) // section * section


def pfn_to_online_page(k: Kernel, pfn: int) -> tuple[Folio, int] | None:
    """pfn_to_online_page() + page_folio(): the folio and page index of an online page,
    None for ZONE_DEVICE and for PFNs past RAM (include/linux/memory_hotplug.h, 7.1.8).
    A RAM page no folio holds is free (returned as None too; see stable_page_flags)."""
    for start, end, _pgmap in k.physmem.device_regions:
        if start <= pfn < end:
            return None
    if pfn >= k.physmem.ram_pages:
        return None
    folio = k.physmem.lookup(pfn)
    if folio is None:
        return None
    return folio, pfn - folio.pfn


def _online_ram(k: Kernel, pfn: int) -> bool:
    if pfn >= k.physmem.ram_pages:
        return False
    return all(not start <= pfn < end for start, end, _ in k.physmem.device_regions)


def get_kpage_count(k: Kernel, pfn: int) -> int:
    """kpagecount entry: get_kpage_count() (fs/proc/page.c, 7.1.8) for an online page —
    folio_precise_page_mapcount() with CONFIG_PAGE_MAPCOUNT, folio_average_page_mapcount()
    without — and 0 when pfn_to_online_page() finds no page."""
    found = pfn_to_online_page(k, pfn)
    if found is None:
        return 0
    folio, page = found
    if folio.zero:
        return 0  # the zero pages are never rmapped
    if k.config.page_mapcount:
        return folio.precise_page_mapcount(page)
    return folio.average_page_mapcount()


def stable_page_flags(k: Kernel, pfn: int) -> int:
    """kpageflags entry: stable_page_flags() (fs/proc/page.c, 7.1.8) for an online page, 0
    when kpage_read() gets no page from pfn_to_online_page() (ZONE_DEVICE, holes)."""
    if not _online_ram(k, pfn):
        return 0
    found = pfn_to_online_page(k, pfn)
    if found is None:
        return 1 << KPF_BUDDY  # free RAM: the model keeps no buddy structure
    folio, idx = found
    u = 0
    if folio.folio_mapped():
        u |= 1 << KPF_MMAP
    if folio.anon:
        u |= 1 << KPF_ANON
    if idx == 0:
        if folio.large:
            u |= 1 << KPF_COMPOUND_HEAD
    else:
        u |= 1 << KPF_COMPOUND_TAIL
    if folio.kind == "huge_zero":
        u |= (1 << KPF_ZERO_PAGE) | (1 << KPF_THP)
    elif folio.large:
        u |= 1 << KPF_THP  # anon and page-cache large folios are large_rmappable
    elif folio.kind == "zero":
        u |= 1 << KPF_ZERO_PAGE
    if folio.dirty:
        u |= 1 << KPF_DIRTY
    if folio.anon or folio.mapping is not None:
        u |= 1 << KPF_UPTODATE
    if folio.lru:
        u |= 1 << KPF_LRU
    if folio.referenced:
        u |= 1 << KPF_REFERENCED
    if folio.swapbacked:
        u |= 1 << KPF_SWAPBACKED
    if folio.reserved:
        u |= 1 << KPF_RESERVED
    return u


def kpage_bytes(k: Kernel, first_pfn: int, nr: int, count: bool) -> bytes:
    """kpage_read() (fs/proc/page.c, 7.1.8): the bytes read(2) returns at offset
    first_pfn * 8; the read stops at get_max_dump_pfn()."""
    end = min(first_pfn + nr, max_dump_pfn(k))
    get = get_kpage_count if count else stable_page_flags
    return b"".join(struct.pack("<Q", get(k, pfn)) for pfn in range(first_pfn, end))


def _segments(k: Kernel, pfn: int, end: int, count: bool) -> list[tuple[int, int, int]]:
    """(first pfn, nr, value) pieces covering [pfn, end) whose pages share a value, computed a
    folio or a device region at a time rather than page by page."""
    get = get_kpage_count if count else stable_page_flags
    out: list[tuple[int, int, int]] = []
    while pfn < end:
        region = next(((s, e) for s, e, _ in k.physmem.device_regions if s <= pfn < e), None)
        if region is not None or pfn >= k.physmem.ram_pages:
            stop = min(end, region[1] if region is not None else end)
            out.append((pfn, stop - pfn, 0))
            pfn = stop
            continue
        found = pfn_to_online_page(k, pfn)
        if found is None:
            out.append((pfn, 1, get(k, pfn)))
            pfn += 1
            continue
        folio, idx = found
        stop = min(end, folio.pfn + folio.nr_pages)
        if count and folio.large and folio.page_mapcounts is not None and not folio.zero:
            if k.config.page_mapcount:
                values = folio.page_mapcounts[idx : idx + stop - pfn] + folio.entire_mapcount
                out.extend((pfn + i, 1, int(v)) for i, v in enumerate(values.tolist()))
                pfn = stop
                continue
        out.append((pfn, 1, get(k, pfn)))
        if stop > pfn + 1:
            out.append((pfn + 1, stop - pfn - 1, get(k, pfn + 1)))
        pfn = stop
    return out


def render_kpage(k: Kernel, pfns: list[tuple[int, int]], count: bool) -> str:
    """Text view of /proc/kpagecount or /proc/kpageflags over PFN ranges [(first, nr)]: runs
    of PFNs with the same value as ``FIRST[-LAST] VALUE [names]`` (hex PFNs, inclusive)."""
    lines = []
    for first, nr in pfns:
        end = min(first + nr, max_dump_pfn(k))
        merged: list[list[int]] = []
        for start, n, value in _segments(k, first, end, count):
            if merged and merged[-1][2] == value and merged[-1][0] + merged[-1][1] == start:
                merged[-1][1] += n
            else:
                merged.append([start, n, value])
        for start, n, value in merged:
            span = f"{start:#x}" if n == 1 else f"{start:#x}-{start + n - 1:#x}"
            if count:
                lines.append(f"{span} {value}")
            else:
                lines.append(f"{span} {value:#018x} {kpf_names(value)}")
    return "".join(line + "\n" for line in lines)
