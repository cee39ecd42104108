"""get_user_pages: FOLL_GET and FOLL_PIN references (mm/gup.c, include/linux/mm.h, 7.1.8).

try_grab_folio(): FOLL_GET adds one reference per page; FOLL_PIN adds one reference and one
_pincount per page on large folios, GUP_PIN_COUNTING_BIAS (1024) references per page on small
folios; pinning the small zero page is a no-op. NR_FOLL_PIN_ACQUIRED/RELEASED count pins.
FOLL_PIN sets MMF_HAS_PINNED. FOLL_LONGTERM is refused on fs-dax VMAs (EOPNOTSUPP).
Pages not yet mapped are faulted in first (FOLL_WRITE unless ``ro``), as the slow path does.
Left out: GUP-fast, migration of long-term pins out of ZONE_MOVABLE/CMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foliosim.kernel.mmap import SyscallError
from foliosim.kernel.physmem import GUP_PIN_COUNTING_BIAS, Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task


@dataclass
class PinSet:
    """The pages one `pin` statement holds, to be released by `unpin`."""

    name: str
    pin: bool  # FOLL_PIN (True) or FOLL_GET (False)
    pages: list[tuple[Folio, int]] = field(default_factory=list)  # (folio, page index)
    released: bool = False


def try_grab_folio(k: Kernel, folio: Folio, pin: bool) -> bool:
    """try_grab_folio() (mm/gup.c, 7.1.8) for one page. False (WARN, -ENOMEM) if the folio has
    no reference to grab from (an idle fs-dax folio at refcount 0)."""
    if folio.refcount <= 0:
        k.reports.warn("try_grab_folio", "grabbing a folio with refcount <= 0", once=True)
        return False
    if not pin:
        k.folio_get(folio)
        return True
    if folio.kind == "zero":
        return True
    k.touched.add(folio)
    if folio.large:
        folio.refcount += 1
        folio.pincount += 1
    elif k.variant.pin_takes_one_ref:
        folio.refcount += 1
        folio.pins_small += 1
    else:
        folio.refcount += GUP_PIN_COUNTING_BIAS
        folio.pins_small += 1
    k.vmstat.mod("nr_foll_pin_acquired", 1)
    return True


def gup_put_folio(k: Kernel, folio: Folio, pin: bool) -> None:
    """gup_put_folio() / unpin_user_page() (mm/gup.c, 7.1.8)."""
    if not pin:
        k.folio_put(folio)
        return
    if folio.kind == "zero":
        return
    k.vmstat.mod("nr_foll_pin_released", 1)
    refs = 1 if folio.large or k.variant.pin_takes_one_ref else GUP_PIN_COUNTING_BIAS
    with k.ownership.context("unpin_user_page") as ctx:
        ctx.get(folio, refs)  # the pin's references
        if k.variant.unpin_put_early:
            k.folio_put(folio, refs)  # mutant: put before the pincount update
            ctx.put(folio, refs)
        ctx.touch(folio, "atomic_sub(refs, &folio->_pincount)")
        if folio.large:
            if not k.variant.unpin_forgets_pincount:
                folio.pincount -= 1
        else:
            folio.pins_small -= 1
        if not k.variant.unpin_put_early:
            k.folio_put(folio, refs)
            ctx.put(folio, refs)


def pin_user_pages(
    k: Kernel,
    task: Task,
    start: int,
    length: int,
    *,
    pin: bool,
    longterm: bool,
    write: bool,
    name: str,
) -> PinSet:
    """__get_user_pages() for [start, start+length): check the VMA (check_vma_flags), fault
    in what is missing, then grab every page. On a failure part-way the pages already grabbed
    are released and the error returned, as pin_user_pages_fast's callers see it."""
    from foliosim.kernel.memory import handle_mm_fault

    k.enter("__get_user_pages")
    if start & (k.page_size - 1):
        raise SyscallError("EINVAL", "start not page aligned")
    pins = PinSet(name, pin)
    addr = start
    end = start + ((length + k.page_size - 1) & ~(k.page_size - 1))
    mm = task.mm
    try:
        while addr < end:
            vma = mm.find_vma(addr)
            if vma is None:
                raise SyscallError("EFAULT", "address not mapped")
            if longterm and vma.file is not None and vma.file.kind == "fsdax":
                raise SyscallError("EOPNOTSUPP", "FOLL_LONGTERM on fs-dax")
            m = k.lookup(mm, addr)
            if m is None or (write and not m.write):
                signal = handle_mm_fault(k, task, vma, addr, write)
                if signal:
                    raise SyscallError("EFAULT", f"fault gave {signal}")
                m = k.lookup(mm, addr)
                if m is None:
                    raise SyscallError("EFAULT", "fault mapped nothing")
            if not try_grab_folio(k, m.folio, pin):
                raise SyscallError("ENOMEM", "try_grab_folio failed")
            pins.pages.append((m.folio, m.page))
            addr += k.page_size
    except SyscallError:
        for folio, _ in pins.pages:
            gup_put_folio(k, folio, pin)
        raise
    if pin:
        mm.has_pinned = True
    return pins


def unpin(k: Kernel, pins: PinSet) -> None:
    """unpin_user_pages() / put_page() for every page of the set."""
    if pins.released:
        return
    pins.released = True
    for folio, _ in pins.pages:
        gup_put_folio(k, folio, pins.pin)
