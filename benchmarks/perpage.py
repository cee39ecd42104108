"""A plain per-page reference model of anonymous memory (not part of the package).

Deliberately simple: one Python object per 4K page, one dictionary entry per PTE, a loop over
every page for every operation, no NumPy, no batching. It implements the same semantics as
foliosim's fast model for a subset:

- anonymous private mappings; order-0 folios (thp=never) and PMD THPs (thp=always);
- read faults (the shared zero page, or the huge zero PMD), write faults, a write to the huge
  zero PMD (a new THP in place, do_huge_zero_wp_pmd);
- munmap (a partly covered PMD is split first), exit;
- fork (COW sharing: references and mapcounts +1, AnonExclusive cleared, both sides
  write-protected; only VMAs with an anon_vma are copied, as vma_needs_copy() says);
- write after fork: reuse an exclusive page or one we hold the only reference to, else copy
  it into a new order-0 page; a shared PMD THP is split in the faulting mm first.

It is used as the oracle of tests/test_perpage_differential.py and as the baseline of
`foliosim bench`. Addresses are chosen by the caller (the fast model's mmap), since address
space layout is not what this model is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
PMD_NR = 512


class Thp:
    """A PMD-sized folio: the folio's refcount, its PMD (entire) mappings and its pages."""

    def __init__(self) -> None:
        self.refcount = 1
        self.entire = 1
        self.head_exclusive = True
        self.pages = [Page(self, i) for i in range(PMD_NR)]


class Page:
    """One 4K page: its own mapcount (PTEs), AnonExclusive and, for an order-0 folio, the
    folio's refcount (a THP page's refcount is its folio's)."""

    def __init__(self, thp: Thp | None = None, index: int = 0, zero: bool = False) -> None:
        self.thp = thp
        self.index = index
        self.zero = zero
        self.refcount = 0 if zero else 1
        self.mapcount = 0
        self.exclusive = False

    def folio_refcount(self) -> int:
        return self.thp.refcount if self.thp is not None else self.refcount

    def kpagecount(self) -> int:
        """page().mapcount: PTE mappings of the page plus its folio's PMD mappings."""
        if self.zero:
            return 0
        return self.mapcount + (self.thp.entire if self.thp is not None else 0)


ZERO_PAGE = Page(zero=True)
HUGE_ZERO = "huge_zero"


@dataclass
class Pte:
    page: Page
    write: bool


@dataclass
class Pmd:
    thp: Thp | None  # None: the huge zero PMD
    write: bool


@dataclass
class Vma:
    start: int  # page numbers, [start, end)
    end: int
    anon_vma: int = 0  # 0: none yet; otherwise the anon_vma's identity
    fork_child: bool = False  # its anon_vma chain links a parent's (anon_vma_fork)


@dataclass
class Mm:
    name: str
    vmas: list[Vma] = field(default_factory=list)
    ptes: dict[int, Pte] = field(default_factory=dict)
    pmds: dict[int, Pmd] = field(default_factory=dict)
    rss: int = 0

    def find_vma(self, vpn: int) -> Vma | None:
        for vma in self.vmas:
            if vma.start <= vpn < vma.end:
                return vma
        return None


class PerPageModel:
    def __init__(self, thp: bool) -> None:
        self.thp = thp
        self.mms: dict[str, Mm] = {}
        self._anon_ids = 0

    def anon_vma_prepare(self, mm: Mm, vma: Vma) -> None:
        """A neighbour's anon_vma when it touches and is not a fork child (every VMA here
        has the same flags: find_mergeable_anon_vma tries the next VMA, then the previous),
        else a new one."""
        if vma.anon_vma:
            return
        following = [v for v in mm.vmas if v.start == vma.end]
        preceding = [v for v in mm.vmas if v.end == vma.start]
        for near in following + preceding:
            if near.anon_vma and not near.fork_child:
                vma.anon_vma = near.anon_vma
                return
        self._anon_ids += 1
        vma.anon_vma = self._anon_ids

    # ---- tasks -------------------------------------------------------------------------
    def task(self, name: str) -> None:
        self.mms[name] = Mm(name)

    def mmap(self, name: str, addr: int, length: int) -> None:
        """A new anonymous VMA, merged with an adjacent one whose anon_vma is compatible
        (neither has one, they share it, or only one has one and it is not a fork child),
        as vma_merge_new_range() does."""
        mm = self.mms[name]
        new = Vma(addr >> PAGE_SHIFT, (addr + length + PAGE - 1) >> PAGE_SHIFT)
        for vma in list(mm.vmas):
            if vma.anon_vma and new.anon_vma:
                compatible = vma.anon_vma == new.anon_vma
            elif vma.anon_vma or new.anon_vma:
                compatible = not (vma.fork_child if vma.anon_vma else new.fork_child)
            else:
                compatible = True
            if compatible and (vma.end == new.start or new.end == vma.start):
                mm.vmas.remove(vma)
                holder = vma if vma.anon_vma else new
                new = Vma(
                    min(vma.start, new.start),
                    max(vma.end, new.end),
                    holder.anon_vma,
                    holder.fork_child,
                )
        mm.vmas.append(new)

    def fork(self, parent: str, child: str) -> None:
        src = self.mms[parent]
        dst = Mm(child)
        self.mms[child] = dst
        for vma in src.vmas:
            child_anon = 0
            if vma.anon_vma:  # anon_vma_fork: one new anon_vma per VMA, chained to the parent's
                self._anon_ids += 1
                child_anon = self._anon_ids
            dst.vmas.append(Vma(vma.start, vma.end, child_anon, bool(vma.anon_vma)))
            if not vma.anon_vma:
                continue  # vma_needs_copy(): nothing to copy, the child refaults
            for pmd_no, pmd in list(src.pmds.items()):
                if vma.start <= pmd_no * PMD_NR < vma.end:
                    pmd.write = False
                    if pmd.thp is not None:
                        pmd.thp.refcount += 1
                        pmd.thp.entire += 1
                        pmd.thp.head_exclusive = False
                        dst.rss += PMD_NR
                    dst.pmds[pmd_no] = Pmd(pmd.thp, False)
            for vpn in range(vma.start, vma.end):
                pte = src.ptes.get(vpn)
                if pte is None:
                    continue
                pte.write = False
                page = pte.page
                if not page.zero:
                    page.mapcount += 1
                    page.exclusive = False
                    if page.thp is not None:
                        page.thp.refcount += 1
                    else:
                        page.refcount += 1
                    dst.rss += 1
                dst.ptes[vpn] = Pte(page, False)

    def exit(self, name: str) -> None:
        mm = self.mms.pop(name)
        for vma in list(mm.vmas):
            self._zap(mm, vma.start, vma.end)
        mm.vmas.clear()

    # ---- faults ------------------------------------------------------------------------
    def touch(self, name: str, addr: int, length: int, write: bool) -> str | None:
        mm = self.mms[name]
        for vpn in range(addr >> PAGE_SHIFT, (addr + max(length, 1) + PAGE - 1) >> PAGE_SHIFT):
            vma = mm.find_vma(vpn)
            if vma is None:
                return "SIGSEGV"
            self.fault(mm, vma, vpn, write)
        return None

    def fault(self, mm: Mm, vma: Vma, vpn: int, write: bool) -> None:
        pmd_no = vpn // PMD_NR
        pmd = mm.pmds.get(pmd_no)
        if pmd is not None:
            if not write or pmd.write:
                return
            if pmd.thp is None:  # do_huge_zero_wp_pmd: a new THP in place
                self.anon_vma_prepare(mm, vma)
                mm.pmds[pmd_no] = Pmd(Thp(), True)
                mm.rss += PMD_NR
                return
            if pmd.thp.head_exclusive or pmd.thp.refcount == 1:
                pmd.thp.head_exclusive = True
                pmd.write = True
                return
            self._split_pmd(mm, pmd_no)
        elif self._thp_suitable(mm, vma, pmd_no):
            self.anon_vma_prepare(mm, vma)
            if write:
                mm.pmds[pmd_no] = Pmd(Thp(), True)
                mm.rss += PMD_NR
            else:
                mm.pmds[pmd_no] = Pmd(None, False)
            return
        pte = mm.ptes.get(vpn)
        if pte is None:
            if not write:
                mm.ptes[vpn] = Pte(ZERO_PAGE, False)
                return
            self.anon_vma_prepare(mm, vma)
            page = Page()
            page.mapcount = 1
            page.exclusive = True
            mm.ptes[vpn] = Pte(page, True)
            mm.rss += 1
            return
        if not write or pte.write:
            return
        page = pte.page
        if not page.zero and (page.exclusive or self._can_reuse(mm, page)):
            page.exclusive = True
            pte.write = True
            return
        # wp_page_copy: a new exclusive order-0 page replaces the old one.
        self.anon_vma_prepare(mm, vma)
        new = Page()
        new.mapcount = 1
        new.exclusive = True
        if not page.zero:
            self._unmap_page(page)
        else:
            mm.rss += 1
        mm.ptes[vpn] = Pte(new, True)

    def _can_reuse(self, mm: Mm, page: Page) -> bool:
        """wp_can_reuse_anon_folio: small -> the only reference; large -> every reference
        is a mapping and every mapping is ours."""
        if page.thp is None:
            return page.refcount == 1
        thp = page.thp
        mappings = thp.entire + sum(p.mapcount for p in thp.pages)
        if thp.refcount != mappings:
            return False
        for other in self.mms.values():
            if other is mm:
                continue
            if any(p.thp is thp for p in other.pmds.values()):
                return False
            if any(pte.page.thp is thp for pte in other.ptes.values()):
                return False
        return True

    def _thp_suitable(self, mm: Mm, vma: Vma, pmd_no: int) -> bool:
        lo = pmd_no * PMD_NR
        if not self.thp or lo < vma.start or lo + PMD_NR > vma.end:
            return False
        return all(vpn not in mm.ptes for vpn in range(lo, lo + PMD_NR))

    # ---- unmapping ---------------------------------------------------------------------
    def munmap(self, name: str, addr: int, length: int) -> None:
        mm = self.mms[name]
        start = addr >> PAGE_SHIFT
        end = (addr + length + PAGE - 1) >> PAGE_SHIFT
        self._zap(mm, start, end)
        kept = []
        for vma in mm.vmas:
            if vma.end <= start or vma.start >= end:
                kept.append(vma)
                continue
            if vma.start < start:
                kept.append(Vma(vma.start, start, vma.anon_vma, vma.fork_child))
            if vma.end > end:
                kept.append(Vma(end, vma.end, vma.anon_vma, vma.fork_child))
        mm.vmas = kept

    def _zap(self, mm: Mm, start: int, end: int) -> None:
        for pmd_no in range(start // PMD_NR, (end + PMD_NR - 1) // PMD_NR):
            if pmd_no not in mm.pmds:
                continue
            lo = pmd_no * PMD_NR
            if start <= lo and lo + PMD_NR <= end:
                pmd = mm.pmds.pop(pmd_no)
                if pmd.thp is not None:
                    pmd.thp.entire -= 1
                    pmd.thp.refcount -= 1
                    mm.rss -= PMD_NR
            else:
                self._split_pmd(mm, pmd_no)
        for vpn in range(start, end):
            pte = mm.ptes.pop(vpn, None)
            if pte is not None and not pte.page.zero:
                self._unmap_page(pte.page)
                mm.rss -= 1

    def _unmap_page(self, page: Page) -> None:
        page.mapcount -= 1
        if page.thp is not None:
            page.thp.refcount -= 1
        else:
            page.refcount -= 1

    def _split_pmd(self, mm: Mm, pmd_no: int) -> None:
        """__split_huge_pmd: 512 PTEs with the PMD's write bit (zero-page PTEs for the huge
        zero PMD); each page's mapcount +1, the folio's references follow the entries."""
        pmd = mm.pmds.pop(pmd_no)
        lo = pmd_no * PMD_NR
        if pmd.thp is None:
            for i in range(PMD_NR):
                mm.ptes[lo + i] = Pte(ZERO_PAGE, False)
            return
        thp = pmd.thp
        for i, page in enumerate(thp.pages):
            page.mapcount += 1
            page.exclusive = thp.head_exclusive
            mm.ptes[lo + i] = Pte(page, pmd.write)
        thp.refcount += PMD_NR - 1
        thp.entire -= 1

    # ---- queries -----------------------------------------------------------------------
    def level(self, name: str, addr: int) -> str | None:
        mm = self.mms.get(name)
        if mm is None:
            return None
        vpn = addr >> PAGE_SHIFT
        if vpn // PMD_NR in mm.pmds:
            return "pmd"
        return "pte" if vpn in mm.ptes else None

    def page(self, name: str, addr: int) -> Page | None:
        mm = self.mms.get(name)
        if mm is None:
            return None
        vpn = addr >> PAGE_SHIFT
        pmd = mm.pmds.get(vpn // PMD_NR)
        if pmd is not None:
            return ZERO_PAGE if pmd.thp is None else pmd.thp.pages[vpn % PMD_NR]
        pte = mm.ptes.get(vpn)
        return None if pte is None else pte.page

    def rss(self, name: str) -> int | None:
        mm = self.mms.get(name)
        return None if mm is None else mm.rss
