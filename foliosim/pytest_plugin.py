"""pytest plugin: scenario files (``*.fsim``) as test items (docs/pytest-plugin.md).

Opt-in: only files under the directories named by ``--fsim DIR`` (repeatable) or the ini
option ``fsim_paths`` are collected, so a project's own scenario tests are not collected
twice. Header directives are those of tests/test_scenarios.py: ``# variants: a,b`` (one item
per variant), ``# expect-exit: N`` (1 for a scenario meant to fail) and ``# invariants: off``.
A failure is shown as a table of the statements that failed: expected and actual values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DIRECTIVE_RE = re.compile(r"#\s*(expect-exit|variants|invariants):\s*(\S+)")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("foliosim")
    group.addoption(
        "--fsim",
        action="append",
        default=[],
        metavar="DIR",
        help="collect foliosim scenario files (*.fsim) under DIR (repeatable)",
    )
    parser.addini("fsim_paths", "directories whose *.fsim files are test items", type="paths")


def _roots(config: pytest.Config) -> list[Path]:
    roots = [Path(p).resolve() for p in config.getoption("fsim")]
    roots += [Path(p).resolve() for p in config.getini("fsim_paths")]
    return roots


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".fsim":
        return None
    resolved = file_path.resolve()
    if any(resolved == root or root in resolved.parents for root in _roots(parent.config)):
        return FsimFile.from_parent(parent, path=file_path)
    return None


def directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = DIRECTIVE_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class FsimFile(pytest.File):
    """One scenario file: an item per variant named in ``# variants:`` (or one item)."""

    def collect(self) -> Iterator[FsimItem]:
        text = self.path.read_text()
        found = directives(text)
        variants = found.get("variants")
        if variants:
            for variant in variants.split(","):
                yield FsimItem.from_parent(self, name=variant, variant=variant, text=text)
        else:
            yield FsimItem.from_parent(self, name="scenario", variant=None, text=text)


class FsimFailure(Exception):
    """A scenario whose outcome was not the expected one; carries the rows to show."""

    def __init__(self, rows: list[tuple[str, str, str, str]], notes: list[str]) -> None:
        super().__init__("scenario failed")
        self.rows = rows
        self.notes = notes


class FsimItem(pytest.Item):
    def __init__(self, *, variant: str | None, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = variant
        self.text = text

    def runtest(self) -> None:
        from foliosim.scenario.runner import execute
        from foliosim.scenario.statements import parse_text

        found = directives(self.text)
        stmts = parse_text(str(self.path), self.text)
        run = execute(
            str(self.path), stmts, variant=self.variant, check_each=found.get("invariants") != "off"
        )
        expected_exit = int(found.get("expect-exit", "0"))
        if (1 if run.failed else 0) == expected_exit:
            return
        rows, notes = failure_rows(run, stmts)
        if not run.failed:
            notes.insert(0, "every expectation held, but the file says # expect-exit: 1")
        raise FsimFailure(rows, notes)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from foliosim.scenario.parser import ScenarioError

        if isinstance(excinfo.value, ScenarioError):
            return f"input error: {excinfo.value}"
        if not isinstance(excinfo.value, FsimFailure):
            return str(super().repr_failure(excinfo))
        return format_table(excinfo.value.rows, excinfo.value.notes)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}[{self.name}]"


def failure_rows(run: Any, stmts: list[Any]) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(line, statement, expected, actual) per failed statement; other failure text."""
    from foliosim.scenario.expect import show
    from foliosim.scenario.parser import Query

    by_line = {s.line: s for s in stmts}
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    for result in run.results:
        if result.ok:
            continue
        stmt = by_line.get(result.line)
        if stmt is not None and stmt.kind == "expect":
            query = stmt.args["query"]
            raw = stmt.args["value"]
            rhs = (
                raw.text()
                if isinstance(raw, Query)
                else show(raw.value if hasattr(raw, "value") else raw)
            )
            actual = result.values.get(query.text())
            rows.append((str(result.line), result.source, f"{stmt.args['op']} {rhs}", show(actual)))
        else:
            rows.append((str(result.line), result.source, "(see below)", "failed"))
            notes.extend(result.output)
    return rows, notes


def format_table(rows: list[tuple[str, str, str, str]], notes: list[str]) -> str:
    header = ("line", "statement", "expected", "actual")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: tuple[str, str, str, str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [sep, line(header), sep, *(line(r) for r in rows), sep]
    return "\n".join(out + notes)
