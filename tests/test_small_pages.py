"""Order-0 anonymous pages held as arrays (foliosim/kernel/smallpages.py) mean exactly what
Folio objects mean: every scenario of the suites gives the same run both ways, statement by
statement (results, printed values, counter changes, invariant reports), and the array form
is what batched faults really produce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foliosim.check import check_all
from foliosim.check_incremental import IncrementalChecker
from foliosim.kernel.smallpages import PAGE_SMALL_ANON, PfnStack
from foliosim.scenario.runner import Run, StmtResult, execute, run_statement
from foliosim.scenario.statements import parse_text

ROOT = Path(__file__).parent
SUITES = sorted((ROOT / "scenarios").rglob("*.fsim")) + sorted(
    (ROOT.parent / "conformance").rglob("*.fsim")
)


def _text(lines: object) -> str:
    # mm ids come from one counter for the whole process: the two runs number mms differently.
    return re.sub(r"\bmm[ :][0-9a-f]+", "mm N", "\n".join(map(str, lines)))


def _summary(run: Run) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = [
        (r.line, r.ok, _text(r.output), tuple(sorted(r.values.items())), tuple(r.changes.items()))
        for r in run.results
    ]
    rows.append(("violations", _text(v.render() for v in run.violations)))
    rows.append(("reports", _text(repr(r) for r in run.kernel.reports.reports)))
    return rows


@pytest.mark.parametrize("path", SUITES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_arrays_and_objects_give_the_same_run(path: Path) -> None:
    text = path.read_text()
    stmts = parse_text(str(path), text)
    as_arrays = execute(str(path), stmts, check_each=True, trace=True, small_pages="arrays")
    stmts = parse_text(str(path), text)
    as_objects = execute(str(path), stmts, check_each=True, trace=True, small_pages="objects")
    assert _summary(as_arrays) == _summary(as_objects)


def _kernel_after(text: str) -> Run:
    stmts = parse_text("<t>", text)
    run = execute("<t>", stmts)
    return run


def test_batched_write_faults_keep_pages_as_arrays_until_a_path_needs_a_folio() -> None:
    """A 64-page write fault maps 64 pages held as arrays (no Folio objects); fork shares
    them (mapcount 2, AnonExclusive gone); a COW write in the child makes the one page it
    copies from an object (refcount 2 -> 1 after the copy), the other 63 stay arrays."""
    run = _kernel_after(
        "config thp=never\ntask A\nA: m = mmap 256K\nA: write m 256K\nA: fork B\nB: write m 4K\n"
    )
    k = run.kernel
    mem = k.physmem
    table = next(iter(k.tasks["A"].mm.pgtables.pte_tables.values()))
    pfns = table.pfn[table.pfn >= 0]
    assert pfns.shape[0] == 64
    held = (mem.state[pfns] & PAGE_SMALL_ANON) != 0
    assert int(held.sum()) == 63  # the first page became an object at B's COW fault
    assert (mem.small.mapcount[pfns[held]] == 2).all()  # mapped by A and B
    first = mem.folios[int(pfns[0])]
    assert first.refcount == 1 and first.mapcount_small == 1  # only A maps it now
    assert first.index == run.names["m"] >> 12  # linear_page_index of A's VMA
    assert not check_all(k)


def test_incremental_checker_sees_a_broken_array_page() -> None:
    """An array page whose mapcount disagrees with its entries is reported by both checkers
    with the order-0 folio invariant, without becoming an object."""
    stmts = parse_text("<t>", "config thp=never\ntask A\nA: m = mmap 64K\nA: write m 64K\n")
    run = execute("<t>", stmts[:3])
    k = run.kernel
    checker = IncrementalChecker(k)
    assert checker.check() == []
    run_statement(run, stmts[3], StmtResult(stmts[3].line, stmts[3].source))
    assert checker.check() == []
    table = next(iter(k.tasks["A"].mm.pgtables.pte_tables.values()))
    pfn = int(table.pfn[table.pfn >= 0][3])
    k.physmem.small.mapcount[pfn] += 1  # a lost folio_remove_rmap_pte, say
    k.touched_small.append(table.pfn[table.pfn >= 0][3:4])
    found = {v.invariant for v in checker.check()}
    assert {"refcount", "mapcount"} <= found
    assert {"refcount", "mapcount"} <= {v.invariant for v in check_all(k)}
    assert k.physmem.state[pfn] & PAGE_SMALL_ANON  # still held as arrays


def test_pfn_stack_pops_in_push_order_reversed() -> None:
    import numpy as np

    stack = PfnStack()
    stack.append(1)
    stack.extend(np.array([2, 3, 4]))
    stack.append(5)
    stack.extend([6, 7])
    assert len(stack) == 7
    assert stack.pop() == 7
    assert stack.pop_many(4).tolist() == [6, 5, 4, 3]
    assert stack.pop() == 2
    assert stack.pop_many(5).tolist() == [1]
    assert not stack


def test_a_page_with_no_room_for_another_mapcount_becomes_an_object_at_fork() -> None:
    """Mapcounts of pages held as arrays are int16: fork makes a page that already has the
    largest one an object before adding the child's mapping (and reference) to it."""
    from foliosim.kernel.smallpages import MAX_SMALL_MAPCOUNT

    stmts = parse_text("<t>", "config thp=never\ntask A\nA: m = mmap 64K\nA: write m 64K\n")
    run = execute("<t>", stmts)
    k = run.kernel
    table = next(iter(k.tasks["A"].mm.pgtables.pte_tables.values()))
    pfns = table.pfn[table.pfn >= 0]
    crowded = int(pfns[5])
    k.physmem.small.mapcount[crowded] = MAX_SMALL_MAPCOUNT  # as if mapped by 32767 mms
    fork = parse_text("<t>", "task A\nA: fork B\n")[-1]
    run_statement(run, fork, StmtResult(fork.line, fork.source))
    folio = k.physmem.folios[crowded]
    assert folio.mapcount_small == MAX_SMALL_MAPCOUNT + 1
    assert folio.refcount == MAX_SMALL_MAPCOUNT + 1
    others = pfns[pfns != crowded]
    assert (k.physmem.state[others] & PAGE_SMALL_ANON).all()
    assert (k.physmem.small.mapcount[others] == 2).all()
