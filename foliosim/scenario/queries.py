"""Evaluation of scenario queries against the model (SCENARIO.md, "Queries")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foliosim.kernel.mm import MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS
from foliosim.kernel.reports import EVENTS, NODE_STATS, THP_ONLY, THP_PRINTED_PER_PMD
from foliosim.kernel.rmap import folio_maybe_mapped_shared
from foliosim.scenario.parser import Query

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.physmem import Folio
    from foliosim.scenario.runner import Run

QValue = int | str | None
RSS = {"anon": MM_ANONPAGES, "file": MM_FILEPAGES, "shmem": MM_SHMEMPAGES, "swap": MM_SWAPENTS}


class UnknownCounter(Exception):
    """A vmstat name the kernel does not have (an input error)."""


def evaluate(run: Run, q: Query) -> QValue:
    k = run.kernel
    if q.kind == "global_errno":
        return k.global_errno or 0
    if q.kind == "warnings":
        return len(k.reports.reports)
    if q.kind == "vmstat":
        return vmstat_value(k, q.field)
    if q.kind == "free":
        device = run.devices.get(q.field)
        if device is None:
            return None
        return int(device.free_pages())
    assert q.task is not None
    task = k.tasks.get(q.task)
    if q.kind == "var":
        return run.names.get(q.field)
    if task is None:
        return None
    if q.kind == "errno":
        return task.errno or 0
    if q.kind == "signal":
        return task.signal
    if task.exited:
        return None
    if q.kind == "rss":
        return task.mm.rss[RSS[q.field]]
    addr = run.address(q.addr)
    if addr is None:
        return None
    m = k.lookup(task.mm, addr, peek=True)
    if q.kind == "level":
        return None if m is None else m.level
    if m is None:
        return None
    folio, page = resolve(k, m.folio, m.page)
    if q.kind == "folio":
        return folio_field(k, folio, q.field, m.special)
    return page_field(k, folio, page, q.field)


def resolve(k: Kernel, folio: Folio, page: int) -> tuple[Folio, int]:
    """A special huge entry of a legacy DAX mapping may point past its order-0 head: find the
    real folio of the pfn it maps."""
    if page < folio.nr_pages:
        return folio, page
    pfn = folio.pfn + page
    real = k.physmem.lookup(pfn)
    if real is None:
        return folio, page
    return real, pfn - real.pfn


def folio_field(k: Kernel, f: Folio, field: str, special: bool) -> QValue:
    large_only = (
        "entire_mapcount",
        "large_mapcount",
        "nr_pages_mapped",
        "entirely_mapped",
        "partially_mapped",
        "deferred",
    )
    if field in large_only and not f.large:
        return None
    if field == "refcount":
        return f.refcount
    if field == "mapcount":
        return f.folio_mapcount()
    if field == "entire_mapcount":
        return f.entire_mapcount
    if field == "large_mapcount":
        return f.large_mapcount
    if field == "nr_pages_mapped":
        return f.folio_nr_pages_mapped() if k.config.page_mapcount else -1
    if field == "entirely_mapped":
        return int(f.entire_mapcount > 0)
    if field == "pincount":
        return f.pincount if f.large else None
    if field == "order":
        return f.order
    if field == "nr_pages":
        return f.nr_pages
    if field == "pfn":
        return f.pfn
    if field == "maybe_mapped_shared":
        return int(folio_maybe_mapped_shared(k, f))
    flag = {
        "dirty": f.dirty,
        "referenced": f.referenced,
        "anon": f.anon,
        "zone_device": f.zone_device,
        "zero": f.zero,
        "deferred": f.deferred,
        "partially_mapped": f.partially_mapped,
    }
    return int(flag[field])


def page_field(k: Kernel, f: Folio, page: int, field: str) -> QValue:
    if field == "anon_exclusive":
        return int(f.page_exclusive(page))
    if field == "written":
        return int(f.page_written(page))
    if field == "precise_mapcount":
        if not k.config.page_mapcount:
            return None
        return 0 if f.zero else f.precise_page_mapcount(page)
    # /proc/kpagecount (fs/proc/page.c, 7.1.8): 0 for the zero pages and for ZONE_DEVICE (not
    # online memory); precise with CONFIG_PAGE_MAPCOUNT, else the folio average.
    if f.zero or f.zone_device:
        return 0
    if k.config.page_mapcount:
        return f.precise_page_mapcount(page)
    return f.average_page_mapcount()


def vmstat_value(k: Kernel, name: str) -> QValue:
    if name not in NODE_STATS and name not in EVENTS:
        raise UnknownCounter(name)
    if name in THP_ONLY and not k.config.enabled("TRANSPARENT_HUGEPAGE"):
        return None
    if name == "thp_split_pud" and not k.config.enabled("HAVE_ARCH_TRANSPARENT_HUGEPAGE_PUD"):
        return None
    value = k.vmstat.counters.get(name, 0)
    if name in THP_PRINTED_PER_PMD:
        value //= k.config.pmd_nr
    return value
