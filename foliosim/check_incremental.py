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

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from foliosim.check import (
    Tally,
    Violation,
    _add_stats,
    _check_folio,
    _extra_refs,
    _rss_index,
    check_deposits,
)
from foliosim.kernel.physmem import Folio

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
        self.tallies: dict[int, Tally] = defaultdict(Tally)
        self.folios: dict[int, Folio] = {}
        self.table_runs: dict[tuple[int, int], tuple[object, int, list[Run]]] = {}
        self.known_keys: dict[int, set[int]] = {}
        self.leaves: dict[tuple[int, str, int], tuple[Folio, int]] = {}
        self.rss: dict[int, list[int]] = {}
        self.contrib: dict[int, dict[str, int]] = {}
        self.totals: dict[str, int] = defaultdict(int)

    # ---- tally maintenance -------------------------------------------------------------
    def _apply_runs(self, mm_id: int, runs: list[Run], sign: int, dirty: set[int]) -> None:
        rss = self.rss.setdefault(mm_id, [0, 0, 0, 0])
        for folio, page, nr, counter in runs:
            key = id(folio)
            self.folios[key] = folio
            t = self.tallies[key]
            t.pte_total += sign * nr
            if folio.order:  # a small folio's one page is counted by pte_total alone
                t.per_page(folio)[page : page + nr] += sign
            rss[counter] += sign * nr
            dirty.add(key)

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
        if known is None:
            todo = keys_now
        else:
            # New slots, and every slot a changed table sits at or sat at (a table freed and
            # replaced within one statement is caught by the identity check below).
            todo = (keys_now - known) | {t.pmd_no for t in changed if t.pmd_no in keys_now}
            for pmd_no in known - keys_now:  # tables freed: their runs go
                old = self.table_runs.pop((mm.id, pmd_no), None)
                if old is not None:
                    self._apply_runs(mm.id, old[2], -1, dirty)
        self.known_keys[mm.id] = keys_now
        for pmd_no in todo:
            table = pgt.pte_tables[pmd_no]
            key = (mm.id, pmd_no)
            old = self.table_runs.get(key)
            # A table freed and allocated again starts its version afresh: compare identity.
            if old is not None and old[0] is table and old[1] == table.version:
                continue
            runs = [
                (f, page, nr, _rss_index(f))
                for _, nr, f, page, special in table.runs()
                if not special
            ]
            if old is None or old[0] is not table:
                if old is not None:
                    self._apply_runs(mm.id, old[2], -1, dirty)
                self._apply_runs(mm.id, runs, +1, dirty)
            else:
                # Only the runs that changed move tallies (and make their folios dirty): a
                # table of 512 small folios where one entry changed costs one folio's check.
                removed, added = _run_difference(old[2], runs)
                self._apply_runs(mm.id, removed, -1, dirty)
                self._apply_runs(mm.id, added, +1, dirty)
            self.table_runs[key] = (table, table.version, runs)
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
                old = self.table_runs.pop((mm_id, pmd_no), None)
                if old is not None:
                    self._apply_runs(mm_id, old[2], -1, dirty)
        for key3 in [key for key in self.leaves if key not in seen_leaves]:
            folio, counter = self.leaves.pop(key3)
            self._apply_leaf(key3[0], key3[1], folio, counter, -1, dirty)
        return dirty

    # ---- checks ------------------------------------------------------------------------
    def check(self) -> list[Violation]:
        k = self.k
        moved = self.sync()  # folios whose tallies changed: their vmstat share may have too
        dirty = set(moved)
        for folio in k.touched:
            self.folios[id(folio)] = folio
            dirty.add(id(folio))
        k.touched.clear()
        out: list[Violation] = []
        gets = _extra_refs(k) if getattr(k, "pinsets", None) else {}
        for key in dirty:
            folio = self.folios[key]
            tally = self.tallies.get(key, _NO_TALLY)
            out.extend(_check_folio(k, folio, tally, gets.get(key, 0)))
            if key in moved or folio.freed:
                self._restat(key, folio, tally)
            if folio.freed and not tally.pte_total + tally.pmds + tally.puds:
                self.folios.pop(key, None)
                self.tallies.pop(key, None)
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
        out.extend(self._check_queue(dirty))
        return out

    def _restat(self, key: int, folio: Folio, tally: Tally) -> None:
        old = self.contrib.pop(key, {})
        for item, value in old.items():
            self.totals[item] -= value
        new: dict[str, int] = defaultdict(int)
        _add_stats(self.k, folio, tally, new)
        if new:
            self.contrib[key] = dict(new)
            for item, value in new.items():
                self.totals[item] += value

    def _check_queue(self, dirty: set[int]) -> list[Violation]:
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


def _run_difference(old: list[Run], new: list[Run]) -> tuple[list[Run], list[Run]]:
    """Runs only in ``old`` and runs only in ``new``, as multisets (one page of one folio may
    be mapped by two entries of a table)."""

    def keyed(runs: list[Run]) -> Counter[tuple[int, int, int, int]]:
        return Counter((id(f), page, nr, counter) for f, page, nr, counter in runs)

    by_key = {(id(r[0]), r[1], r[2], r[3]): r for r in (*old, *new)}
    before, after = keyed(old), keyed(new)
    removed = [by_key[k] for k, n in (before - after).items() for _ in range(n)]
    added = [by_key[k] for k, n in (after - before).items() for _ in range(n)]
    return removed, added


def describe(checker: IncrementalChecker) -> dict[str, Any]:
    return {
        "folios": len(checker.folios),
        "tables": len(checker.table_runs),
        "leaves": len(checker.leaves),
    }
