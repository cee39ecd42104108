"""How the model process uses Python's cyclic garbage collector.

A model run creates many small objects (folios, leaves, VMAs) that live as long as the run.
With the default threshold (a collection every 700 net allocations) the collector walks
them over and over: faulting 1 GiB of 4K pages took twice as long with it as without.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

_depth = 0


@contextmanager
def collect_less() -> Iterator[None]:
    """Collect less often (cycles are still freed, every 200,000 net allocations) and leave
    the objects that exist already (imported modules) out of the walk. Only the outermost
    use changes and restores the settings, so nesting is harmless."""
    global _depth
    _depth += 1
    if _depth > 1:
        try:
            yield
        finally:
            _depth -= 1
        return
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(200_000, 20, 20)
    try:
        yield
    finally:
        _depth -= 1
        gc.set_threshold(*old)
        gc.unfreeze()


T = TypeVar("T")


def collect_after(work: Callable[[], T]) -> T:
    """Run ``work`` (one fuzzed program: a kernel that becomes garbage, cycles and all, when it
    returns) with the automatic collector off, then collect the youngest generation once.
    Every object the work made stays young while the collector is off, so that one pass
    frees the whole dead kernel; the automatic policy would walk the same objects several
    times as it promotes them (~5% of fuzzing). With the collector already off (a batch
    inside), nothing changes.

    Two passes, because NumPy object arrays (PTE tables' folio slots) are invisible to the
    collector: a folio held by one looks referenced from outside, so the first pass frees
    the tables but keeps folios and the files whose page cache refers back to them; the
    second pass, over the generation they moved to, frees those cycles. With one pass they
    piled up in older generations (~150 KB per program, 850 MB per worker over 5,000)."""
    if not gc.isenabled():
        return work()
    gc.disable()
    try:
        return work()
    finally:
        gc.enable()
        gc.collect(0)
        gc.collect(1)
