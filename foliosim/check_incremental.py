"""Incremental invariant checking: the same invariants as check.check_all, at the cost of
what a step changed.

Per-folio tallies (PTEs per page, PMD and PUD entries) and per-mm RSS are kept up to date from
the page tables that changed since the last check: a PTE table is re-read when its version
moved, huge-leaf dictionaries are diffed against a snapshot, vanished mms and tables are
subtracted. Only folios whose counters or tallies changed are checked, and vmstat totals are
kept as a running sum of each folio's contribution, so a step that touches one folio costs
one folio's check whatever the size of the model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from foliosim.check import (
    Tally,
    Violation,
    _add_stats,
    _check_folio,
    _extra_refs,
    _rss_index,
    cache_refs,
    check_deposits,
)
from foliosim.kernel.pgtable import PTE_SPECIAL, PteTable, run_lengths
from foliosim.kernel.physmem import GUP_PIN_COUNTING_BIAS, Folio
from foliosim.kernel.smallpages import PAGE_SMALL_ANON, SMALL_EXCLUSIVE

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.mm import MM

# folio, first page, pages, RSS counter at the time it was mapped (flags change when freed)
Run = tuple[Folio, int, int, int]
STAT_ITEMS = (
    "nr_anon_pages",
    "nr_mapped",
    "nr_anon_transparent_hugepages",
    "nr_shmem_pmdmapped",
    "nr_file_pmdmapped",
)


class IncrementalChecker:
    def __init__(self, k: Kernel) -> None:
        self.k = k
        k.touched = set()  # start listening (see Kernel.touched)
        # Page tables of these mms may predate the checker: their first look reads them whole.
        self.mms_before = {mm.id for mm in k.live_mms()}
        self.tallies: dict[int, Tally] = defaultdict(Tally)
        self.folios: dict[int, Folio] = {}
        self.snapshots: dict[tuple[int, int], Snapshot] = {}
        self.known_keys: dict[int, set[int]] = {}
        self.leaves: dict[tuple[int, str, int], tuple[Folio, int]] = {}
        self.rss: dict[int, list[int]] = {}
        self.contrib: dict[int, tuple[tuple[str, int], ...]] = {}
        self.totals: dict[str, int] = defaultdict(int)
        # Order-0 anonymous pages held as arrays (kernel/smallpages.py), by pfn: the entries
        # tallied for each, the ones to check, the ones counted in nr_anon_pages, and pages
        # that became Folio objects while entries were tallied for them (those entries now
        # count for the object: [folio, entries left]).
        self.small_ptes: dict[int, int] = {}
        self.small_dirty: set[int] = set()
        self.small_counted: set[int] = set()
        self.small_alias: dict[int, list[Any]] = {}
        k.touched_small = []
        k.physmem.small.listeners.append(self._materialized)

    # ---- tally maintenance -------------------------------------------------------------
    def _apply_runs(self, mm_id: int, runs: list[Run], sign: int, dirty: set[int]) -> None:
        rss = self.rss.setdefault(mm_id, [0, 0, 0, 0])
        for folio, page, nr, counter in runs:
            key = id(folio)
            self.folios[key] = folio
            t = self.tallies[key]
            t.pte_total += sign * nr
            if folio.order:  # a small folio's one page is counted by pte_total alone
                if nr == 1:
                    t.per_page(folio)[page] += sign  # no slice for one PTE
                else:
                    t.per_page(folio)[page : page + nr] += sign
            rss[counter] += sign * nr
            dirty.add(key)

    def _apply_small(self, mm_id: int, pfns: list[int], sign: int, dirty: set[int]) -> None:
        """Entries mapping pages held as arrays went (sign -1) or came (+1)."""
        if not pfns:
            return
        self.rss.setdefault(mm_id, [0, 0, 0, 0])[1] += sign * len(pfns)
        ptes = self.small_ptes
        for pfn in pfns:
            if sign < 0:
                alias = self.small_alias.get(pfn)
                if alias is not None:  # the page is a Folio object now: its tally
                    folio = alias[0]
                    key = id(folio)
                    self.folios[key] = folio
                    self.tallies[key].pte_total -= 1
                    dirty.add(key)
                    alias[1] -= 1
                    if alias[1] <= 0:
                        del self.small_alias[pfn]
                    continue
            count = ptes.get(pfn, 0) + sign
            if count:
                ptes[pfn] = count
            else:
                ptes.pop(pfn, None)
            self.small_dirty.add(pfn)

    def _materialized(self, folio: Folio) -> None:
        """A page held as arrays became a Folio object (PhysMem.materialize): what was
        tallied for the pfn is the object's now."""
        pfn = folio.pfn
        count = self.small_ptes.pop(pfn, 0)
        self.small_dirty.discard(pfn)
        if pfn in self.small_counted:
            self.small_counted.discard(pfn)
            self.totals["nr_anon_pages"] -= 1
        key = id(folio)
        self.folios[key] = folio
        tally = self.tallies[key]
        if count:
            self.small_alias[pfn] = [folio, count]
            tally.pte_total += count
        self._restat(key, folio, tally)
        self.k.touched.add(folio)

    def _forget(self, mm_id: int, snap: Snapshot, dirty: set[int]) -> None:
        """Everything a snapshot tallied goes (its table or mm went)."""
        self._apply_runs(mm_id, snap.runs(), -1, dirty)
        self._apply_small(mm_id, snap.small_pfns(), -1, dirty)

    def _apply_leaf(
        self, mm_id: int, level: str, folio: Folio, counter: int, sign: int, dirty: set[int]
    ) -> None:
        key = id(folio)
        self.folios[key] = folio
        t = self.tallies[key]
        nr = self.k.config.pud_nr if level == "pud" else self.k.config.pmd_nr
        if level == "pud":
            t.puds += sign
        else:
            t.pmds += sign
        self.rss.setdefault(mm_id, [0, 0, 0, 0])[counter] += sign * nr
        dirty.add(key)

    def _sync_mm(
        self,
        mm: MM,
        dirty: set[int],
        seen_leaves: set[tuple[int, str, int]],
    ) -> None:
        pgt = mm.pgtables
        changed = list(pgt.changed)
        pgt.changed.clear()  # cleared in place: every table of the mm points at this set
        keys_now = set(pgt.pte_tables)
        known = self.known_keys.get(mm.id)
        fresh = known is not None or mm.id not in self.mms_before
        if known is None:
            todo = keys_now
        else:
            # New slots, and every slot a changed table sits at or sat at (a table freed and
            # replaced within one statement is caught by the identity check below).
            todo = (keys_now - known) | {t.pmd_no for t in changed if t.pmd_no in keys_now}
            for pmd_no in known - keys_now:  # tables freed: their entries go
                old = self.snapshots.pop((mm.id, pmd_no), None)
                if old is not None:
                    self._forget(mm.id, old, dirty)
        self.known_keys[mm.id] = keys_now
        for pmd_no in todo:
            table = pgt.pte_tables[pmd_no]
            key = (mm.id, pmd_no)
            snap = self.snapshots.get(key)
            if snap is None or snap.table is not table:
                if snap is not None:  # a table freed and allocated again: all new
                    self._forget(mm.id, snap, dirty)
                snap = self.snapshots[key] = Snapshot(table)
                # A table that came since the last look started empty and noted every change
                # in [lo, hi): only those slots can hold entries. Tables that were there
                # before the checker started listening are read whole.
                lo, hi = (table.lo, table.hi) if fresh else (0, table.nr_slots)
            else:
                lo, hi = table.lo, table.hi
            table.lo, table.hi = table.nr_slots, 0
            if lo < hi:
                removed, added, removed_small, added_small = snap.update(lo, hi)
                self._apply_runs(mm.id, removed, -1, dirty)
                self._apply_small(mm.id, removed_small, -1, dirty)
                self._apply_runs(mm.id, added, +1, dirty)
                self._apply_small(mm.id, added_small, +1, dirty)
        for level, leaves in (("pud", mm.pgtables.pud_leaves), ("pmd", mm.pgtables.pmd_leaves)):
            for n, leaf in leaves.items():
                if leaf.special:
                    continue
                key3 = (mm.id, level, n)
                seen_leaves.add(key3)
                prior = self.leaves.get(key3)
                if prior is not None and prior[0] is leaf.folio:
                    continue
                if prior is not None:
                    self._apply_leaf(mm.id, level, prior[0], prior[1], -1, dirty)
                counter = _rss_index(leaf.folio)
                self._apply_leaf(mm.id, level, leaf.folio, counter, +1, dirty)
                self.leaves[key3] = (leaf.folio, counter)

    def sync(self) -> set[int]:
        """Bring tallies up to date; returns the ids of folios whose tallies changed."""
        dirty: set[int] = set()
        seen_leaves: set[tuple[int, str, int]] = set()
        live = self.k.live_mms()
        for mm in live:
            self._sync_mm(mm, dirty, seen_leaves)
        live_ids = {mm.id for mm in live}
        for mm_id in [m for m in self.known_keys if m not in live_ids]:  # exited mms
            for pmd_no in self.known_keys.pop(mm_id):
                old = self.snapshots.pop((mm_id, pmd_no), None)
                if old is not None:
                    self._forget(mm_id, old, dirty)
        for key3 in [key for key in self.leaves if key not in seen_leaves]:
            folio, counter = self.leaves.pop(key3)
            self._apply_leaf(key3[0], key3[1], folio, counter, -1, dirty)
        return dirty

    # ---- checks ------------------------------------------------------------------------
    def check(self) -> list[Violation]:
        k = self.k
        moved = self.sync()  # folios whose tallies changed: their vmstat share may have too
        touched = k.touched
        touched_ids = [id(folio) for folio in touched]
        self.folios.update(zip(touched_ids, touched, strict=True))
        dirty = moved.union(touched_ids)
        touched.clear()
        out: list[Violation] = []
        gets = _extra_refs(k) if getattr(k, "pinsets", None) else {}
        tallies = self.tallies
        folios = self.folios
        queue = k.physmem.deferred_split_queue
        queued: list[int] = []  # folios the deferred-split checks must look at
        for key in dirty:
            folio = folios[key]
            tally = tallies.get(key, _NO_TALLY)
            if folio.large or folio.zero or folio.pgmap is not None or key in gets:
                out.extend(_check_folio(k, folio, tally, gets.get(key, 0)))
                if key in moved or folio.freed:
                    self._restat(key, folio, tally)
                queued.append(key)
            else:
                # An order-0 RAM folio (most of what a step touches): _check_folio's verdict,
                # _restat and the queue checks inlined, messages only when something is off.
                if not self._small_folio_ok(key, folio, tally, key in moved):
                    out.extend(_check_folio(k, folio, tally, 0))  # for the full diagnosis
                if folio.deferred or folio.partially_mapped or queue.get(folio.pfn) is folio:
                    queued.append(key)
            if folio.freed and not tally.pte_total + tally.pmds + tally.puds:
                folios.pop(key, None)
                tallies.pop(key, None)
        out.extend(self._check_small())
        for item in STAT_ITEMS:
            have = k.vmstat.counters.get(item, 0)
            if have != self.totals[item]:
                out.append(
                    Violation("vmstat", f"{item} is {have}, folios account {self.totals[item]}")
                )
        live = {mm.id: mm for mm in k.live_mms()}
        for mm in live.values():
            out.extend(check_deposits(mm))
        for mm_id, mm in live.items():
            rss = self.rss.get(mm_id, [0, 0, 0, 0])
            for i, name in ((0, "MM_FILEPAGES"), (1, "MM_ANONPAGES"), (3, "MM_SHMEMPAGES")):
                if mm.rss[i] != rss[i]:
                    out.append(
                        Violation(
                            "rss", f"mm {mm_id} {name} is {mm.rss[i]}, page tables map {rss[i]}"
                        )
                    )
        out.extend(self._check_queue(queued))
        return out

    def _check_small(self) -> list[Violation]:
        """The order-0 folio invariants for pages held as arrays whose tallies or counters
        moved: a live one's mapcount (its refcount too) is its entries, AnonExclusive only
        while mapped once; a page no longer held (freed) has no entry left. Keeps their
        nr_anon_pages share. A broken one is diagnosed by _check_folio on a view of it."""
        k = self.k
        touched = k.touched_small
        dirty = self.small_dirty
        if touched:
            for pfns in touched:
                dirty.update(pfns.tolist())
            touched.clear()
        if not dirty:
            return []
        mem = k.physmem
        state = mem._state
        mapcount = mem.small._mapcount
        counted_set = self.small_counted
        out: list[Violation] = []
        for pfn in dirty:
            ptes = self.small_ptes.get(pfn, 0)
            page_state = state[pfn]
            live = bool(page_state & PAGE_SMALL_ANON)
            if live:
                ok = mapcount[pfn] == ptes and not (page_state & SMALL_EXCLUSIVE and ptes > 1)
            else:
                ok = not ptes
            counted = live and ptes > 0
            if counted != (pfn in counted_set):
                if counted:
                    counted_set.add(pfn)
                    self.totals["nr_anon_pages"] += 1
                else:
                    counted_set.discard(pfn)
                    self.totals["nr_anon_pages"] -= 1
            if not ok:
                if live:
                    view = mem.small_view(pfn)
                else:  # the page went back to the allocator with entries still mapping it
                    view = Folio(pfn, 0)
                    view.refcount = 0
                    view.freed = True
                tally = Tally()
                tally.pte_total = ptes
                out.extend(_check_folio(k, view, tally, 0))
        dirty.clear()
        return out

    def _small_folio_ok(self, key: int, f: Folio, t: Tally, moved: bool) -> bool:
        """_check_folio's verdict for an order-0 RAM folio with no `pin ... get` references,
        without building messages: freed ones are unmapped and unreferenced; live ones hold
        references = PTEs + page cache + pins, mapcount = PTEs, and AnonExclusive only while
        mapped once. Also _restat's work for it (one page mapped or not) when its tallies
        moved or it was freed."""
        ptes = t.pte_total
        if f.freed:
            old = self.contrib.pop(key, None)
            if old is not None:
                for item, value in old:
                    self.totals[item] -= value
            return not f.refcount and not (ptes or t.pmds or t.puds)
        if moved:
            old = self.contrib.pop(key, None)
            if old is not None:
                for item, value in old:
                    self.totals[item] -= value
            if ptes:
                item = "nr_anon_pages" if f.anon else "nr_mapped"
                self.contrib[key] = ((item, 1),)
                self.totals[item] += 1
        if f.mapcount_small != ptes:
            return False
        if f.anon:
            exclusive = f.anon_exclusive
            if exclusive is not None and exclusive[0] and ptes > 1:
                return False
            refs = ptes
        else:
            refs = ptes + cache_refs(f)
        return bool(f.refcount == refs + f.pins_small * GUP_PIN_COUNTING_BIAS)

    def _restat(self, key: int, folio: Folio, tally: Tally) -> None:
        totals = self.totals
        for item, value in self.contrib.pop(key, ()):
            totals[item] -= value
        if not folio.large and not folio.zero and not folio.freed:
            # _add_stats for an order-0 folio: one page mapped or not.
            if tally.pte_total:
                item = "nr_anon_pages" if folio.anon else "nr_mapped"
                self.contrib[key] = ((item, 1),)
                totals[item] += 1
            return
        new: dict[str, int] = defaultdict(int)
        _add_stats(self.k, folio, tally, new)
        if new:
            self.contrib[key] = tuple(new.items())
            for item, value in new.items():
                totals[item] += value

    def _check_queue(self, dirty: list[int]) -> list[Violation]:
        out = []
        queue = self.k.physmem.deferred_split_queue
        for key in dirty:
            f = self.folios.get(key)
            if f is None:
                continue
            if f.deferred and queue.get(f.pfn) is not f:
                out.append(Violation("deferred-split", f"{f!r} marked queued but not on the queue"))
            if f.partially_mapped and not f.deferred:
                out.append(Violation("deferred-split", f"partially mapped {f!r} not queued"))
            if queue.get(f.pfn) is f and (f.freed or not f.anon or f.order <= 1):
                out.append(Violation("deferred-split", f"bad queue entry {f!r}"))
        return out


_NO_TALLY = Tally()  # read-only stand-in for folios no entry maps


def tally_entries(t: Tally) -> int:
    return t.pte_total + t.pmds + t.puds


class Snapshot:
    """What the checker last counted in one PTE table: per slot the folio, its page index and
    the RSS counter it was tallied under (-1: nothing tallied: none, a marker or a special
    entry such as the zero page), or the pfn of a page held as arrays (``small``, -1 if not;
    tallied under MM_ANONPAGES). Only the slots the table marked changed are compared."""

    __slots__ = ("counters", "folios", "index", "small", "table")

    def __init__(self, table: PteTable) -> None:
        n = table.nr_slots
        self.table = table
        self.folios: np.ndarray[Any, Any] = np.full(n, None, dtype=object)
        self.index: np.ndarray[Any, Any] = np.zeros(n, dtype=np.int32)
        self.small: np.ndarray[Any, Any] = np.full(n, -1, dtype=np.int64)
        self.counters: np.ndarray[Any, Any] = np.full(n, -1, dtype=np.int8)

    def runs(self) -> list[Run]:
        """Every folio this snapshot tallied, as runs."""
        tallied = np.flatnonzero((self.counters >= 0) & (self.small < 0))
        return _group(tallied, self.folios, self.index, self.counters)

    def small_pfns(self) -> list[int]:
        """Every page held as arrays this snapshot tallied, by pfn."""
        return self.small[self.small >= 0].tolist()  # type: ignore[no-any-return]

    def update(self, lo: int, hi: int) -> tuple[list[Run], list[Run], list[int], list[int]]:
        """Compare slots [lo, hi) with the table; returns the runs that went and came, and
        the pages held as arrays whose entries went and came."""
        table = self.table
        if hi - lo == 1:  # one entry (most faults): no NumPy slicing
            return self._update_one(lo)
        new_f, new_i, tallied, new_s = _window(table, lo, hi)
        old_c = self.counters[lo:hi]
        moved = (self.folios[lo:hi] != new_f) | (self.index[lo:hi] != new_i)
        moved |= self.small[lo:hi] != new_s
        moved |= (old_c >= 0) != (tallied | (new_s >= 0))
        pos = np.flatnonzero(moved) + lo
        if pos.size == 0:
            return [], [], [], []
        gone = pos[self.counters[pos] >= 0]
        gone_small = self.small[gone] >= 0
        removed_small: list[int] = self.small[gone[gone_small]].tolist()
        removed = _group(gone[~gone_small], self.folios, self.index, self.counters)
        self.counters[pos] = -1
        rel = pos - lo
        self.folios[pos] = new_f[rel]
        self.index[pos] = new_i[rel]
        self.small[pos] = new_s[rel]
        came_small = pos[new_s[rel] >= 0]
        self.counters[came_small] = 1  # MM_ANONPAGES
        added_small: list[int] = self.small[came_small].tolist()
        came = pos[tallied[rel]]
        added = _group(came, self.folios, self.index, None)
        if added:  # the runs split ``came`` in order: one counter per run, repeated
            self.counters[came] = np.repeat([r[3] for r in added], [r[2] for r in added])
        return removed, added, removed_small, added_small

    def _update_one(self, slot: int) -> tuple[list[Run], list[Run], list[int], list[int]]:
        table = self.table
        pfn = int(table.pfn[slot])
        old_c = int(self.counters[slot])
        old_s = int(self.small[slot])
        old_f = self.folios[slot]
        old_i = int(self.index[slot])
        removed: list[Run] = [(old_f, old_i, 1, old_c)] if old_c >= 0 and old_s < 0 else []
        removed_small = [old_s] if old_c >= 0 and old_s >= 0 else []
        if pfn >= 0 and table.mem.is_small_anon(pfn):
            if old_s == pfn and old_c >= 0:
                return [], [], [], []
            self.folios[slot] = None
            self.index[slot] = 0
            self.small[slot] = pfn
            self.counters[slot] = 1
            return removed, [], removed_small, [pfn]
        entry = table.entry(slot) if pfn >= 0 else None
        folio, page = (None, 0) if entry is None else entry
        tallied = folio is not None and not table.bits[slot] & PTE_SPECIAL
        if old_s < 0 and old_f is folio and old_i == page and (old_c >= 0) == tallied:
            return [], [], [], []
        self.folios[slot] = folio
        self.index[slot] = page
        self.small[slot] = -1
        if tallied and folio is not None:
            counter = _rss_index(folio)
            self.counters[slot] = counter
            return removed, [(folio, page, 1, counter)], removed_small, []
        self.counters[slot] = -1
        return removed, [], removed_small, []


def _window(
    table: PteTable, lo: int, hi: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per slot of [lo, hi): the folio the entry maps (None: no page, or a page held as
    arrays), the page inside it, whether the checker tallies it as a folio (present, not
    special), and the pfn of a page held as arrays (-1: not one). Reading the table this way
    leaves pages held as arrays as they are."""
    n = hi - lo
    folios: np.ndarray[Any, Any] = np.full(n, None, dtype=object)
    index: np.ndarray[Any, Any] = np.zeros(n, dtype=np.int32)
    tallied: np.ndarray[Any, Any] = np.zeros(n, dtype=np.bool_)
    small: np.ndarray[Any, Any] = np.full(n, -1, dtype=np.int64)
    slots, pfns = table.small_anon_slots(lo, hi)
    if slots.shape[0]:
        small[slots - lo] = pfns
    for slot, nr, folio, page, special in table.runs(lo, hi, skip_small=True):
        at = slot - lo
        if nr == 1:
            folios[at] = folio
            index[at] = page
        else:
            folios[at : at + nr] = folio
            index[at : at + nr] = np.arange(page, page + nr, dtype=np.int32)
        if not special:
            tallied[at : at + nr] = True
    return folios, index, tallied, small


def _group(
    pos: np.ndarray[Any, Any],
    folios: np.ndarray[Any, Any],
    index: np.ndarray[Any, Any],
    counters: np.ndarray[Any, Any] | None,
) -> list[Run]:
    """Runs over the slots ``pos`` (ascending): consecutive slots mapping consecutive pages of
    one folio (under one RSS counter), in slot order. Each is (folio, first page, pages,
    counter); without ``counters`` the counter is _rss_index of the folio."""
    if pos.size == 0:
        return []
    objs = folios[pos]
    idx = index[pos]
    brk = np.ones(pos.size, dtype=np.bool_)
    if pos.size > 1:
        brk[1:] = (pos[1:] - pos[:-1] != 1) | (objs[1:] != objs[:-1]) | (idx[1:] - idx[:-1] != 1)
        if counters is not None:
            ctr = counters[pos]
            brk[1:] |= ctr[1:] != ctr[:-1]
    starts = np.flatnonzero(brk)
    lengths = run_lengths(starts, pos.size)
    heads = objs[starts].tolist()
    ctrs = [_rss_index(f) for f in heads] if counters is None else counters[pos[starts]].tolist()
    return list(zip(heads, idx[starts].tolist(), lengths, ctrs, strict=True))


def describe(checker: IncrementalChecker) -> dict[str, Any]:
    return {
        "folios": len(checker.folios),
        "tables": len(checker.snapshots),
        "leaves": len(checker.leaves),
    }
