"""ZONE_DEVICE memory for DAX: dev_pagemap, device-dax and the DAX insert helpers.

Models mm/memremap.c (free_zone_device_folio), mm/mm_init.c (__init_zone_device_page),
drivers/dax/device.c (dev_dax_huge_fault, check_vma, dev_dax_may_split, dax_get_unmapped_area)
and the insert helpers of mm/huge_memory.c and mm/memory.c (vmf_insert_folio_pud/pmd,
vmf_insert_page_mkwrite) of Linux 7.1.8, with the variants:

- mainline: each mapping takes a folio reference, a file rmap (PTE/PMD/PUD) and file RSS;
  idle device-dax folios sit at refcount 1 (reset to 1 by free_zone_device_folio), idle fs-dax
  folios at 0.
- seed: dax_insert_pfn_pud (v1 patch 07) does the same at PUD level; its PUD rmap also moves
  NR_FILE_PMDMAPPED (see rmap).
- legacy (6.1): vmf_insert_pfn_pud/pmd and vmf_insert_mixed map special devmap entries: no
  reference, mapcount or RSS; every idle page at refcount 1.

Folios of a device exist as objects only once touched (a 1 TiB device costs nothing).
fs-dax lives in fsdax.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foliosim.kernel import rmap
from foliosim.kernel.files import BackingFile
from foliosim.kernel.mm import VM, mm_counter_file, vma_page_prot_writable
from foliosim.kernel.mmap import SyscallError
from foliosim.kernel.pgtable import PTE_DIRTY, PTE_SPECIAL, PTE_WRITE, PTE_YOUNG, Leaf
from foliosim.kernel.physmem import Folio

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import VMA

STRUCT_PAGE_SIZE = 64
VMEMMAP_RESERVE_NR = 2  # vmemmap pages kept per compound page by the DAX vmemmap optimisation


@dataclass(eq=False)
class DevPagemap:
    """struct dev_pagemap: a PFN range of ZONE_DEVICE memory and its type."""

    type: str  # "generic" (device-dax) or "fsdax"
    start_pfn: int
    nr_pages: int
    vmemmap_shift: int  # compound folio order (device-dax: order of the alignment)
    idle_refcount: int
    page_shift: int
    folios: dict[int, Folio] = field(default_factory=dict)
    orders: set[int] = field(default_factory=set)
    # ``orders`` largest first, kept by _new_folio (read on every device page lookup).
    orders_desc: tuple[int, ...] = ()

    def _new_folio(self, head: int, order: int) -> Folio:
        folio = Folio(head, order, kind="devdax" if self.type == "generic" else "fsdax")
        folio.pgmap = self
        folio.reserved = True
        folio.refcount = self.idle_refcount
        self.folios[head] = folio
        if order not in self.orders:
            self.orders.add(order)
            self.orders_desc = tuple(sorted(self.orders, reverse=True))
        return folio

    def folio_containing(self, pfn: int) -> Folio | None:
        """The folio that holds pfn now, if one was made."""
        for order in self.orders_desc:
            head = self.start_pfn + ((pfn - self.start_pfn) & ~((1 << order) - 1))
            folio = self.folios.get(head)
            if folio is not None and folio.contains(pfn):
                return folio
        return None

    def folio_of(self, pfn: int) -> Folio:
        """pfn_folio() (include/linux/mm.h, 7.1.8): the folio containing pfn; the model
        makes the device's struct pages lazily, so a folio is created idle on first use."""
        folio = self.folio_containing(pfn)
        if folio is not None:
            return folio
        order = self.vmemmap_shift
        head = self.start_pfn + ((pfn - self.start_pfn) & ~((1 << order) - 1))
        return self._new_folio(head, order)

    def live_folios(self) -> list[Folio]:
        return list(self.folios.values())

    def free_zone_device_folio(self, k: Kernel, folio: Folio) -> None:
        """free_zone_device_folio() (mm/memremap.c, 7.1.8): device-dax folios are set back to
        refcount 1 for the next user; fs-dax folios stay at 0 and wake layout-break waiters."""
        k.enter("free_zone_device_folio")
        if self.type == "generic":
            folio.refcount = 1
        else:
            k.dax_wakeup(folio)

    def busy_pages(self) -> int:
        return sum(f.nr_pages for f in self.folios.values() if f.refcount > self.idle_refcount)

    def vmemmap_bytes(self, optimised: bool) -> int:
        """Bytes of struct pages for the range; with the DAX vmemmap optimisation a compound
        page keeps only VMEMMAP_RESERVE_NR vmemmap pages (its tails share one page)."""
        page = 1 << self.page_shift
        per_folio_pages = ((1 << self.vmemmap_shift) * STRUCT_PAGE_SIZE) // page
        nr_folios = self.nr_pages >> self.vmemmap_shift
        if optimised and per_folio_pages > VMEMMAP_RESERVE_NR:  # __vmemmap_can_optimize
            return nr_folios * VMEMMAP_RESERVE_NR * page
        return (self.nr_pages * STRUCT_PAGE_SIZE + page - 1) // page * page


@dataclass(eq=False)
class DaxDevice(BackingFile):
    """A device-dax instance (/dev/daxX.Y) with its alignment."""

    align: int = 4096
    pgmap: DevPagemap | None = None

    def free_pages(self) -> int:
        """Base pages whose folio holds no reference beyond the idle one."""
        assert self.pgmap is not None
        return self.pgmap.nr_pages - self.pgmap.busy_pages()

    def check_mmap(self, k: Kernel, shared: bool, at: int | None, length: int, off: int) -> None:
        """dax_mmap_prepare() -> __check_vma() (drivers/dax/device.c, 7.1.8): private mappings
        and (fixed) ranges not aligned to the device alignment are EINVAL. The file offset is
        not checked: only vm_start/vm_end are (an unaligned offset without MAP_FIXED fails
        because dax_get_unmapped_area cannot align the start)."""
        if not shared:
            raise SyscallError("EINVAL", "device-dax refuses private mappings")
        if (at is not None and at % self.align) or length % self.align:
            raise SyscallError("EINVAL", "device-dax mapping not aligned to the device alignment")

    def huge_fault(self, k: Kernel, vma: VMA, addr: int, write: bool, order: int) -> str | None:
        """dev_dax_huge_fault() (drivers/dax/device.c, 7.1.8): the fault size must equal the
        device alignment (smaller: SIGBUS; larger: fallback; PMD with a larger alignment:
        SIGBUS); the VMA must be shared and aligned (check_vma)."""
        if k.trace_log is not None:  # (no string built when not tracing)
            k.enter(f"dev_dax_huge_fault(order={order})")
        geo = k.geometry
        if not vma.flags & VM.MAYSHARE or vma.start % self.align or vma.end % self.align:
            return "SIGBUS"
        fault_size = k.page_size << order
        if order == geo.pud_order and not k.config.thp_pud:
            return "fallback"
        if order == geo.pmd_order and self.align > geo.pmd_size:
            return "SIGBUS"
        if order == 0 and self.align > k.page_size:
            return "SIGBUS"
        if fault_size < self.align:
            return "SIGBUS"
        if fault_size > self.align:
            return "fallback"
        base = addr & ~(fault_size - 1)
        if base < vma.start or base + fault_size > vma.end:
            return "SIGBUS"
        pgoff = vma.linear_page_index(base, k.page_shift)
        if (pgoff << k.page_shift) + fault_size > self.size:
            return "SIGBUS"
        assert self.pgmap is not None
        folio = self.pgmap.folio_of(self.pgmap.start_pfn + pgoff)
        if folio.mapping is None:
            folio.mapping = self  # dax_set_mapping (head only for compound pgmaps)
            folio.index = pgoff
        if order == geo.pud_order:
            return vmf_insert_folio_pud(k, vma, base, folio, write)
        if order == geo.pmd_order:
            return vmf_insert_folio_pmd(k, vma, base, folio, write)
        return vmf_insert_page_mkwrite(k, vma, addr, folio, 0, write)


def _leaf_writable(vma: VMA, write: bool) -> bool:
    return (write and bool(vma.flags & VM.WRITE)) or vma_page_prot_writable(vma)


def vmf_insert_folio_pud(k: Kernel, vma: VMA, addr: int, folio: Folio, write: bool) -> str | None:
    """vmf_insert_folio_pud() -> insert_pud() (mm/huge_memory.c, 7.1.8); the seed's
    dax_insert_pfn_pud; legacy vmf_insert_pfn_pud (special, no accounting).

    A present entry is only made young/dirty/writable on a write (WARN_ON_ONCE if it maps
    another pfn). Otherwise: folio_get, folio_add_file_rmap_pud, file RSS += HPAGE_PUD_NR.
    """
    geo = k.geometry
    pud_no = addr >> geo.pud_shift
    pgt = vma.mm.pgtables
    leaf = pgt.pud_leaves.get(pud_no)
    if leaf is not None:
        if write:
            if leaf.folio is not folio:
                k.reports.warn("insert_pud", "present PUD maps another pfn", once=True)
                return None
            leaf.young = leaf.dirty = True
            leaf.write = _leaf_writable(vma, True)
        return None
    k.enter("vmf_insert_folio_pud" if k.variant.dax_refcounted else "vmf_insert_pfn_pud")
    special = not k.variant.dax_refcounted
    if not special:
        if not k.variant.fault_pud_forgets_ref:
            k.folio_get(folio)
        if k.variant.dax_mapcount and not rmap.folio_add_file_rmap_pud(k, folio, vma):
            k.folio_put(folio)
            return "SIGBUS"
        vma.mm.rss[mm_counter_file(folio)] += k.config.pud_nr
    lo, hi = addr >> geo.pmd_shift, (addr + geo.pud_size) >> geo.pmd_shift
    for lower in (pgt.pmd_leaves, pgt.pte_tables):
        # Only empty lower tables can be here (the PUD was none): drop what the range has.
        for n in [n for n in lower if lo <= n < hi] if len(lower) < hi - lo else range(lo, hi):
            lower.pop(n, None)
    pgt.pud_leaves[pud_no] = Leaf(
        folio, write=_leaf_writable(vma, write), dirty=write, young=write, special=special
    )
    return None


def vmf_insert_folio_pmd(k: Kernel, vma: VMA, addr: int, folio: Folio, write: bool) -> str | None:
    """vmf_insert_folio_pmd() -> insert_pmd() (mm/huge_memory.c, 7.1.8); legacy
    vmf_insert_pfn_pmd. The huge zero folio is inserted special with no accounting (and, for
    DAX, no deposited table: arch_needs_pgtable_deposit() is false on x86-64)."""
    geo = k.geometry
    pmd_no = addr >> geo.pmd_shift
    pgt = vma.mm.pgtables
    leaf = pgt.pmd_leaves.get(pmd_no)
    if leaf is not None:
        if write:
            if leaf.folio is not folio:
                if not leaf.folio.zero:
                    k.reports.warn("insert_pmd", "present PMD maps another pfn", once=True)
                return None
            leaf.young = leaf.dirty = True
            leaf.write = _leaf_writable(vma, True)
        return None
    if not folio.zero and folio.order != geo.pmd_order and k.variant.dax_refcounted:
        k.reports.warn("vmf_insert_folio_pmd", "folio is not PMD-sized", once=True)
        return "SIGBUS"
    special = folio.zero or not k.variant.dax_refcounted
    k.enter("vmf_insert_folio_pmd" if not special or folio.zero else "vmf_insert_pfn_pmd")
    if not special:
        k.folio_get(folio)
        if k.variant.dax_mapcount:
            rmap.folio_add_file_rmap_pmd(k, folio, vma)
        if not k.variant.dax_pmd_forgets_rss:
            vma.mm.rss[mm_counter_file(folio)] += k.config.pmd_nr
    pgt.pte_tables.pop(pmd_no, None)
    pgt.pmd_leaves[pmd_no] = Leaf(
        folio,
        write=not folio.zero and _leaf_writable(vma, write),
        dirty=write,
        young=write,
        special=special,
    )
    return None


def vmf_insert_page_mkwrite(
    k: Kernel, vma: VMA, addr: int, folio: Folio, page: int, write: bool
) -> str | None:
    """vmf_insert_page_mkwrite() -> insert_page_into_pte_locked() (mm/memory.c, 7.1.8);
    legacy vmf_insert_mixed (special devmap PTE). The zero page goes in special."""
    geo = k.geometry
    table = vma.mm.pgtables.pte_table(addr >> geo.pmd_shift, create=True)
    assert table is not None
    slot = (addr >> k.page_shift) & (geo.ptrs_per_pte - 1)
    present = table.folio_at(slot)
    if present is not None:
        if write:
            if int(table.pfn[slot]) != folio.pfn + page:
                if not present.zero:
                    k.reports.warn(
                        "insert_page_into_pte_locked", "PTE maps another page", once=True
                    )
                return "SIGBUS"
            if _leaf_writable(vma, True):
                table.bits[slot] |= PTE_WRITE
            table.bits[slot] |= PTE_YOUNG | PTE_DIRTY
        return None
    special = folio.zero or not k.variant.dax_refcounted
    bits = PTE_SPECIAL if special else 0
    if write:
        bits |= PTE_YOUNG | PTE_DIRTY
    if _leaf_writable(vma, write) and not folio.zero:
        bits |= PTE_WRITE
    if not special:
        k.folio_get(folio)
        if k.variant.dax_pte_double_ref:
            k.folio_get(folio)
        vma.mm.rss[mm_counter_file(folio)] += 1
        if k.variant.dax_mapcount:
            rmap.folio_add_file_rmap_ptes(k, folio, page, 1, vma)
    table.set(slot, folio, page, bits)
    return None


def make_devdax(k: Kernel, name: str, size: int, align: int) -> DaxDevice:
    """devm_create_dev_dax() + dev_dax_probe(): a MEMORY_DEVICE_GENERIC pgmap whose
    vmemmap_shift is the order of the alignment; idle pages at refcount 1."""
    if not k.config.enabled("DEV_DAX"):
        raise SyscallError("ENODEV", "CONFIG_DEV_DAX is not set")
    order = (align // k.page_size).bit_length() - 1
    nr_pages = size >> k.page_shift
    pgmap = DevPagemap("generic", k.next_device_pfn(nr_pages), nr_pages, order, 1, k.page_shift)
    k.physmem.device_regions.append((pgmap.start_pfn, pgmap.start_pfn + nr_pages, pgmap))
    device = DaxDevice(
        name=name, size=size, kind="devdax", align=align, pgmap=pgmap, page_mkwrite=False
    )
    k.devices[name] = device
    return device
