"""Order-0 anonymous pages kept as arrays instead of Folio objects.

Most of what a program maps is order-0 anonymous memory, and one Python object per 4K page
costs hundreds of bytes and a Python round trip per page in every fault, fork and zap. So a
batched fault (memory.do_anonymous_pages) hands out pages that live only in per-pfn arrays:
the mapcount (int16), the index of their anon_vma (uint8) and two flags in PhysMem.state
(PageAnonExclusive, "written"). What else an order-0 anonymous folio has is fixed while it
lives this way: PG_anon, PG_swapbacked and PG_lru set, not dirty, not referenced, no pin and
no reference but its mappings' — so its refcount *is* its mapcount. The fast paths of zap
(zap_pte_range), fork (copy_pte_range), mprotect and touches work on these arrays a
page-table page at a time.

Any other path that needs the folio (a COW fault, GUP, a query, a split, reclaim, ...) calls
PhysMem.page_folio(), which turns the page into an ordinary Folio object with the same
state, once: from then on the object is the page's only record (materialize()). A page
keeps being one kind or the other until it is freed; both kinds mean the same to the
kernel model, and the invariants check both.

The folio's index (linear page index of its anon mapping) is not stored: it is derived when
the page becomes an object from the VMA that maps it, which gives the kernel's value, because
fork copies vm_pgoff and mremap moves pages through page_folio() at their old address.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import numpy as np

# PhysMem.state of a page kept here: PAGE_SMALL_ANON | flags.
PAGE_SMALL_ANON = 0x80
SMALL_EXCLUSIVE = 0x01  # PageAnonExclusive
SMALL_WRITTEN = 0x02  # the program stored into the page (page().written)
CLEAR_SMALL_EXCLUSIVE = 0xFF ^ SMALL_EXCLUSIVE
# anon_vma indexes are one byte: past this many anon_vmas in one machine, faults go back
# to making Folio objects (nothing else changes).
MAX_ANON_VMAS = 255
# Mapcounts are int16 (two bytes a page): a page about to be mapped this many times becomes
# a Folio object first (fork does that; nothing else adds mappings to pages held here).
MAX_SMALL_MAPCOUNT = 32767


def lazy_zeros(n: int, dtype: Any) -> np.ndarray[Any, Any]:
    """A zero-filled array of n elements that costs memory only where it is written: an
    anonymous mapping of its own, which the OS backs page by page on first touch (NumPy's
    own zeros would do the same, but asks for transparent huge pages on large arrays, so a
    sparse touch can cost 2 MiB and khugepaged may fill in more later)."""
    size = max(n * np.dtype(dtype).itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=n)


def pfn_span(pfns: np.ndarray[Any, Any]) -> tuple[int, int] | None:
    """(lo, hi) when these distinct pfns are exactly the range [lo, hi), else None: what the
    allocator hands out for a fresh range, so per-pfn arrays can be updated by one slice."""
    lo = int(pfns.min())
    hi = int(pfns.max()) + 1
    return (lo, hi) if hi - lo == pfns.shape[0] else None


class PfnStack:
    """The order-0 free list: a LIFO of pfns kept as segments, Python lists for single pushes
    and NumPy arrays for bulk frees, so freeing or allocating 262,144 pages is a few array
    operations. pop() order is exactly that of one list that every push appended to."""

    __slots__ = ("_segs",)

    def __init__(self) -> None:
        self._segs: list[Any] = []  # list[int] or int64 arrays, never empty

    def __len__(self) -> int:
        return sum(len(seg) for seg in self._segs)

    def __bool__(self) -> bool:
        return bool(self._segs)

    def append(self, pfn: int) -> None:
        segs = self._segs
        if segs and type(segs[-1]) is list:
            segs[-1].append(pfn)
        else:
            segs.append([pfn])

    def extend(self, pfns: list[int] | np.ndarray[Any, Any]) -> None:
        if len(pfns) == 0:
            return
        if isinstance(pfns, np.ndarray):
            # Taken as it is: callers hand over arrays nothing writes again (a freed batch).
            self._segs.append(pfns)
        elif self._segs and type(self._segs[-1]) is list:
            self._segs[-1].extend(pfns)
        else:
            self._segs.append(list(pfns))

    def pop(self) -> int:
        segs = self._segs
        seg = segs[-1]
        if type(seg) is list:
            pfn: int = seg.pop()
            if not seg:
                segs.pop()
            return pfn
        pfn = int(seg[-1])
        if seg.shape[0] == 1:
            segs.pop()
        else:
            segs[-1] = seg[:-1]
        return pfn

    def pop_many(self, n: int) -> np.ndarray[Any, Any]:
        """Up to n pfns, in the order n pop() calls would return them."""
        parts: list[np.ndarray[Any, Any]] = []
        segs = self._segs
        while n > 0 and segs:
            seg = segs[-1]
            size = len(seg)
            take = min(n, size)
            if type(seg) is list:
                parts.append(np.array(seg[size - take :][::-1], dtype=np.int64))
                del seg[size - take :]
            else:
                parts.append(seg[size - take :][::-1])
                segs[-1] = seg[: size - take]
            if take == size:
                segs.pop()
            n -= take
        if not parts:
            return np.empty(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class SmallAnonPages:
    """The per-pfn arrays of pages held as arrays (see the module docstring)."""

    def __init__(self, ram_pages: int) -> None:
        # The OS gives memory only to the parts a run touches (lazy_zeros).
        self.mapcount = lazy_zeros(ram_pages, np.int16)
        self.anon_vma = lazy_zeros(ram_pages, np.uint8)
        self._mapcount = memoryview(self.mapcount)  # type: ignore[arg-type]
        self._anon_vma = memoryview(self.anon_vma)  # type: ignore[arg-type]
        self.anon_vmas: list[object | None] = [None]
        self._index_of: dict[int, int] = {}
        self.live = 0  # pages held here now
        # Told of each page that becomes a Folio object (the incremental checker listens).
        self.listeners: list[Callable[[Any], None]] = []

    def anon_vma_index(self, anon_vma: object) -> int | None:
        """The byte that names ``anon_vma`` for pages here, or None when all are taken."""
        key = id(anon_vma)
        index = self._index_of.get(key)
        if index is not None and self.anon_vmas[index] is anon_vma:
            return index
        if len(self.anon_vmas) > MAX_ANON_VMAS:
            return None
        index = len(self.anon_vmas)
        self.anon_vmas.append(anon_vma)
        self._index_of[key] = index
        return index

    def mapcount_of(self, pfn: int) -> int:
        return int(self._mapcount[pfn])
