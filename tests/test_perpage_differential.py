"""The fast model against the plain per-page reference model (benchmarks/perpage.py).

Hypothesis generates small programs of anonymous-memory statements (mmap, read, write,
munmap, fork, exit) under thp=never (order-0 folios, the batched fault path) and thp=always
(PMD THPs, splits, COW of a shared THP). After every statement both models must agree on
each task's RSS and, for every page of every mapping, on the level that maps it, the page's
mapcount (page().mapcount, /proc/kpagecount) and its folio's refcount.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from foliosim.scenario.queries import page_field
from foliosim.scenario.runner import Run, StmtResult, build_kernel, run_statement
from foliosim.scenario.statements import parse_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.perpage import PerPageModel

PAGE = 4096
TASKS = ("A", "B", "C", "D")


@st.composite
def programs(draw: st.DrawFn) -> tuple[bool, list[tuple[str, ...]]]:
    thp = draw(st.booleans())
    # Without THP, sometimes mappings of several page tables, so that whole tables of pages
    # held as arrays go through the block paths (kernel/pte_batch.py).
    limit = 1100 if thp else draw(st.sampled_from([40, 40, 3000]))
    ops: list[tuple[str, ...]] = []
    names: list[str] = []
    tasks = ["A"]
    forks = 0
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["mmap", "read", "write", "write", "munmap", "fork", "exit"]))
        task = draw(st.sampled_from(tasks))
        if kind == "mmap" or not names:
            if len(names) >= 2:
                continue
            pages = draw(st.integers(512, 1100) if thp else st.integers(1, limit))
            names.append(f"m{len(names)}")
            ops.append(("mmap", task, names[-1], str(pages)))
        elif kind in ("read", "write", "munmap"):
            name = draw(st.sampled_from(names))
            off = draw(st.integers(0, limit - 1))
            length = draw(st.integers(1, limit))
            ops.append((kind, task, name, str(off), str(length)))
        elif kind == "fork" and forks < len(TASKS) - 1:
            forks += 1
            child = TASKS[forks]
            tasks.append(child)
            ops.append(("fork", task, child))
        elif kind == "exit" and task != "A":
            ops.append(("exit", task))
            tasks.remove(task)
    return thp, ops


def _line(op: tuple[str, ...]) -> str:
    kind, task = op[0], op[1]
    if kind == "mmap":
        return f"{task}: {op[2]} = mmap {int(op[3]) * PAGE}"
    if kind == "fork":
        return f"{task}: fork {op[2]}"
    if kind == "exit":
        return f"{task}: exit"
    return f"{task}: {kind} {op[2]}+{int(op[3]) * PAGE} {int(op[4]) * PAGE}"


def _compare(run: Run, ref: PerPageModel, spans: list[tuple[int, int]], where: str) -> None:
    k = run.kernel
    for name, task in k.tasks.items():
        if task.exited:
            assert ref.rss(name) is None, where
            continue
        assert task.mm.rss[1] == ref.rss(name), f"{where}: {name}.rss.anon"
        for start, pages in spans:
            for i in range(pages):
                addr = start + i * PAGE
                m = k.lookup(task.mm, addr, peek=True)  # leaves pages held as arrays alone
                level = None if m is None else m.level
                assert level == ref.level(name, addr), f"{where}: level({name}, {addr:#x})"
                if m is None:
                    continue
                page = ref.page(name, addr)
                assert page is not None
                mapcount = page_field(k, m.folio, m.page, "mapcount")
                assert mapcount == page.kpagecount(), f"{where}: page({name}, {addr:#x}).mapcount"
                if not m.folio.zero:
                    assert not page.zero, f"{where}: zero page at {addr:#x}"
                    assert m.folio.refcount == page.folio_refcount(), (
                        f"{where}: folio({name}, {addr:#x}).refcount"
                    )
                else:
                    assert page.zero, f"{where}: zero page at {addr:#x}"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs())
@example(  # COW of a shared PMD THP: split in the writer, one page copied; partial munmap
    (
        True,
        [
            ("mmap", "A", "m0", "1024"),
            ("write", "A", "m0", "0", "1024"),
            ("fork", "A", "B"),
            ("write", "A", "m0", "5", "1"),
            ("write", "B", "m0", "700", "1"),
            ("munmap", "A", "m0", "3", "600"),
            ("exit", "B"),
            ("write", "A", "m0", "900", "1"),
            ("read", "A", "m0", "0", "1024"),
        ],
    )
)
@example(  # zero pages, order-0 COW after fork, reuse once the child is gone
    (
        False,
        [
            ("mmap", "A", "m0", "20"),
            ("read", "A", "m0", "0", "20"),
            ("write", "A", "m0", "2", "5"),
            ("fork", "A", "B"),
            ("write", "B", "m0", "3", "1"),
            ("write", "A", "m0", "0", "20"),
            ("munmap", "B", "m0", "1", "3"),
            ("exit", "B"),
            ("write", "A", "m0", "0", "20"),
        ],
    )
)
@example(  # whole tables of order-0 pages: block fault, fork, partial munmap, COW, exit
    (
        False,
        [
            ("mmap", "A", "m0", "2600"),
            ("write", "A", "m0", "0", "2600"),
            ("fork", "A", "B"),
            ("write", "B", "m0", "700", "1"),
            ("munmap", "A", "m0", "300", "1500"),
            ("fork", "B", "C"),
            ("exit", "B"),
            ("write", "A", "m0", "0", "2600"),
            ("munmap", "C", "m0", "0", "2600"),
        ],
    )
)
def test_fast_model_matches_per_page_model(program: tuple[bool, list[tuple[str, ...]]]) -> None:
    thp, ops = program
    lines = [f"config thp={'always' if thp else 'never'}", "task A"] + [_line(op) for op in ops]
    stmts = parse_text("<diff>", "\n".join(lines) + "\n")
    kernel = build_kernel("<diff>", stmts, None)
    run = Run("<diff>", kernel)
    kernel.pinsets = run.pins  # type: ignore[attr-defined]
    ref = PerPageModel(thp=thp)
    ref.task("A")
    spans: list[tuple[int, int]] = []
    body = [s for s in stmts if s.kind not in ("config", "memory")]
    run_statement(run, body[0], StmtResult(body[0].line, body[0].source))  # task A
    for stmt, op in zip(body[1:], ops, strict=True):
        kind, task = op[0], op[1]
        run_statement(run, stmt, StmtResult(stmt.line, stmt.source))
        if kind == "mmap":
            addr = run.names[op[2]]
            ref.mmap(task, addr, int(op[3]) * PAGE)
            spans.append((addr, int(op[3])))
        elif kind == "fork":
            ref.fork(task, op[2])
        elif kind == "exit":
            ref.exit(task)
        else:
            addr = run.names[op[2]] + int(op[3]) * PAGE
            length = int(op[4]) * PAGE
            if kind == "munmap":
                ref.munmap(task, addr, length)
            else:
                signal = ref.touch(task, addr, length, write=kind == "write")
                assert (kernel.tasks[task].signal or None) == signal, stmt.source
        _compare(run, ref, spans, stmt.source)
