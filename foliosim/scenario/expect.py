"""`expect`, `expect warning`, `expect no warnings` and `print`."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from foliosim.scenario.parser import Num, Query, Stmt, Value
from foliosim.scenario.queries import QValue, evaluate

if TYPE_CHECKING:
    from foliosim.scenario.runner import Run, StmtResult

COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def value_of(run: Run, value: Value) -> QValue:
    if isinstance(value, Query):
        return evaluate(run, value)
    if isinstance(value, Num):
        return value.value
    return None if value == "none" else value


def show(value: QValue) -> str:
    return "none" if value is None else str(value)


def compare(op: str, left: QValue, right: QValue) -> bool:
    """none equals only none; ordering with none, or between a word and a number, fails."""
    if left is None or right is None:
        if op == "==":
            return left is right
        if op == "!=":
            return left is not right
        return False
    if isinstance(left, int) != isinstance(right, int):
        return op == "!="
    return bool(COMPARE[op](left, right))


def run_expect(run: Run, stmt: Stmt, result: StmtResult) -> None:
    k = run.kernel
    if stmt.kind == "print":
        query = stmt.args["query"]
        assert isinstance(query, Query)
        value = evaluate(run, query)
        result.values[query.text()] = value
        result.output.append(f"{query.text()} = {show(value)}")
        return
    if stmt.kind == "expect_warning":
        text = str(stmt.args["text"])
        if any(text in r.render() for r in k.reports.reports):
            return
        _fail(run, result, f'expected a warning containing "{text}", got none')
        return
    if stmt.kind == "expect_no_warnings":
        if k.reports.reports:
            _fail(
                run,
                result,
                "expected no warnings, got:\n" + "\n".join(r.render() for r in k.reports.reports),
            )
        return
    query = stmt.args["query"]
    assert isinstance(query, Query)
    op = str(stmt.args["op"])
    raw = stmt.args["value"]
    left = evaluate(run, query)
    right = value_of(run, raw)  # type: ignore[arg-type]
    result.values[query.text()] = left
    if not compare(op, left, right):
        rhs = raw.text() if isinstance(raw, Query) else show(right)
        _fail(
            run,
            result,
            f"expected {query.text()} {op} {rhs}, actual {show(left)}"
            + (f" (right side {show(right)})" if isinstance(raw, Query) else ""),
        )
        dump = _dump_for(run, query)
        if dump:
            result.output.append(dump)


def _fail(run: Run, result: StmtResult, message: str) -> None:
    run.failed = True
    result.ok = False
    result.output.append(f"{run.path}:{result.line}: {message}")


def _dump_for(run: Run, query: Query) -> str:
    """The folio (or page table) involved in a failed expectation."""
    from foliosim.kernel.debug import dump_folio

    if query.kind not in ("folio", "page", "level") or query.task is None:
        return ""
    task = run.kernel.tasks.get(query.task)
    addr = run.address(query.addr)
    if task is None or addr is None or task.exited:
        return ""
    m = run.kernel.lookup(task.mm, addr)
    if m is None:
        return f"no page-table entry maps {addr:#x} in {query.task}"
    return f"{m.level} entry at {addr:#x}:\n" + dump_folio(run.kernel, m.folio)
