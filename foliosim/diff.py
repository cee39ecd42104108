"""`foliosim diff`: one scenario under every variant, and where their values disagree.

Compared after each statement: the values of its queries (expect/print), the task's errno
and signal, every task's RSS counters and every vmstat item, and the reports raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from foliosim.scenario.expect import show
from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.queries import vmstat_value
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text
from foliosim.variants import VARIANTS


def _observe(run: Run) -> dict[str, Any]:
    k = run.kernel
    values: dict[str, Any] = {}
    for name, task in k.tasks.items():
        if task.exited:
            continue
        for label, i in (("anon", 1), ("file", 0), ("shmem", 3)):
            values[f"{name}.rss.{label}"] = task.mm.rss[i]
        values[f"{name}.errno"] = task.errno or 0
        values[f"{name}.signal"] = task.signal
    for item in sorted(k.vmstat.counters):
        values[f"vmstat.{item}"] = vmstat_value(k, item)
    values["errno"] = k.global_errno or 0
    return values


_STATE_KEYS = {"errno", "reports"}


def _get(row: dict[str, Any], key: str) -> Any:
    if key in row:
        return row[key]
    return 0 if key.startswith("vmstat.") else None


def diff_variants(path: Path, variants: list[str] | None = None) -> dict[str, Any]:
    text = path.read_text()
    stmts = parse_text(str(path), text)
    names = variants or list(VARIANTS)
    per_variant: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    sources: list[tuple[int, str]] = [
        (s.line, s.source) for s in stmts if s.kind not in ("config", "memory")
    ]
    for name in names:
        try:
            run = execute(str(path), stmts, variant=name, observe=_observe)
        except ScenarioError as exc:
            errors[name] = str(exc)
            continue
        rows = []
        seen_reports = 0
        for result, observed in zip(run.results, run.observations, strict=True):
            row = dict(observed)
            row.update({key: value for key, value in result.values.items()})
            reps = run.kernel.reports.reports
            new = [r.render() for r in reps[seen_reports:] if r.line == result.line]
            seen_reports += len(new)
            row["reports"] = "; ".join(new)
            rows.append(row)
        per_variant[name] = rows
    statements = []
    previous: dict[str, tuple[str, ...]] = {}
    for i, (line, source) in enumerate(sources):
        differing: dict[str, dict[str, Any]] = {}
        keys: set[str] = set()
        for rows in per_variant.values():
            keys |= set(rows[i])
        for key in sorted(keys):
            vals = {v: _get(per_variant[v][i], key) for v in per_variant}
            shown = tuple(show(x) for x in vals.values())
            state = key in _STATE_KEYS or key.startswith("vmstat.") or ".rss." in key
            # State (RSS, vmstat, errno) is shown where the variants' disagreement changes;
            # queries of the statement itself whenever they disagree.
            if len(set(shown)) > 1 and (not state or previous.get(key) != shown):
                differing[key] = vals
            previous[key] = shown
        statements.append({"line": line, "source": source, "differences": differing})
    return {"file": str(path), "variants": names, "errors": errors, "statements": statements}


def print_diff(console: Console, data: dict[str, Any]) -> None:
    variants = [v for v in data["variants"] if v not in data["errors"]]
    for name, err in data["errors"].items():
        console.print(f"[red]{name}: {err}[/red]", markup=True)
    table = Table(title=f"foliosim diff {data['file']}")
    table.add_column("line", justify="right")
    table.add_column("statement")
    table.add_column("value")
    for v in variants:
        table.add_column(v, justify="right")
    shown = 0
    for stmt in data["statements"]:
        first = True
        for key, vals in stmt["differences"].items():
            table.add_row(
                str(stmt["line"]) if first else "",
                stmt["source"] if first else "",
                key,
                *[show(vals.get(v)) for v in variants],
            )
            first = False
            shown += 1
    if shown:
        console.print(table)
    else:
        console.print(f"All variants agree on every observed value of {data['file']}.")
