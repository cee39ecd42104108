"""Running generated programs on the model, detecting failures, shrinking counterexamples.

A failure is a broken invariant after a statement (foliosim.check), a kernel-style BUG report
(Bad rss-counter, use-after-put, bad page state), or the model itself crashing. Shrinking is
delta debugging over statements: drop chunks while the program still fails the same way, so
the counterexample printed is a short runnable scenario ending in `check`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from foliosim.check import check_all
from foliosim.check_incremental import IncrementalChecker
from foliosim.fuzz.program import Generator
from foliosim.gc_policy import collect_after
from foliosim.scenario.parser import ScenarioError, Stmt
from foliosim.scenario.runner import Run, StmtResult, build_kernel, run_statement
from foliosim.scenario.statements import parse_text

FAILING_REPORTS = ("BUG", "kernel BUG")


@dataclass
class Outcome:
    failed: bool
    kind: str = ""  # invariant name, "report", "crash"
    message: str = ""
    line: int = 0  # 1-based line of the statement that failed
    steps: int = 0  # statements executed

    def signature(self) -> str:
        return f"{self.kind}"


@dataclass
class Campaign:
    variant: str
    seeds: int = 0
    steps: int = 0
    seconds: float = 0.0
    failures: list[tuple[int, Outcome, list[str]]] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def known_defect(run: Run) -> str | None:
    """Name the known kernel defect (docs/kernel-findings.md) a failing state shows, if any."""
    from foliosim.kernel.mm import VM

    k = run.kernel
    if any("bad pud" in r.message for r in k.reports.reports):
        return "mremap-devdax-pud"
    for mm in k.live_mms():
        for vma in mm.vmas:
            if vma.is_dax and vma.flags & VM.MAYBE_GUARD:
                return "guard-devdax-fork-pud"
    return None


def run_program(
    lines: list[str],
    variant: str | None,
    check: bool = True,
    full_check: bool = False,
    allow_known: bool = False,
    ownership: bool = True,
) -> Outcome:
    """Run program text statement by statement; stop at the first failure. Invariants are
    checked incrementally after every statement (``full_check``: the whole model each time).
    The cyclic collector runs once, after the program (gc_policy.collect_after)."""
    return collect_after(
        lambda: _run_program(lines, variant, check, full_check, allow_known, ownership)
    )


def _run_program(
    lines: list[str],
    variant: str | None,
    check: bool,
    full_check: bool,
    allow_known: bool,
    ownership: bool,
) -> Outcome:
    text = "\n".join(lines) + "\n"
    try:
        stmts = parse_text("<fuzz>", text)
    except ScenarioError as exc:
        return Outcome(False, "invalid", str(exc))
    try:
        kernel = build_kernel("<fuzz>", stmts, variant)
    except ScenarioError as exc:
        return Outcome(False, "invalid", str(exc))
    run = Run("<fuzz>", kernel)
    kernel.pinsets = run.pins  # type: ignore[attr-defined]
    kernel.ownership.enabled = ownership
    checker = IncrementalChecker(kernel)
    steps = 0
    seen_reports = 0
    for stmt in stmts:
        if stmt.kind in ("config", "memory"):
            continue
        outcome = _step(run, stmt)
        steps += 1
        if outcome is None:
            reports = kernel.reports.reports
            for rep in reports[seen_reports:]:
                if rep.kind.startswith(FAILING_REPORTS):
                    outcome = Outcome(True, "report", rep.render(), stmt.line)
                    break
            seen_reports = len(reports)
        if outcome is None and check:
            violations = check_all(kernel) if full_check else checker.check()
            if violations:
                first = violations[0]
                outcome = Outcome(True, first.invariant, first.render(), stmt.line)
        if outcome is not None:
            outcome.steps = steps
            defect = known_defect(run) if outcome.failed else None
            if defect is not None and not allow_known:
                # A kernel defect the model reproduces: not a model failure; stop here.
                return Outcome(False, f"known:{defect}", outcome.message, stmt.line, steps)
            return outcome
    return Outcome(False, steps=steps)


def _step(run: Run, stmt: Stmt) -> Outcome | None:
    result = StmtResult(stmt.line, stmt.source)
    try:
        run.kernel.reports.current_line = stmt.line
        run_statement(run, stmt, result)
    except ScenarioError as exc:
        return Outcome(False, "invalid", str(exc), stmt.line)
    except Exception as exc:  # a model crash is a finding, reported with its traceback
        tb = traceback.format_exc(limit=6)
        return Outcome(True, "crash", f"{type(exc).__name__}: {exc}\n{tb}", stmt.line)
    return None


def program_for(seed: int, steps: int, variant: str | None, with_dax: bool = True) -> list[str]:
    return Generator(seed, with_dax=with_dax, variant=variant).program(steps)


def shrink(
    lines: list[str], variant: str | None, outcome: Outcome, budget_s: float = 20.0
) -> list[str]:
    """ddmin over statements after the setup header, keeping the failure's kind."""
    start = time.monotonic()
    header = [ln for ln in lines if _is_setup(ln)]
    body = [ln for ln in lines[: outcome.line] if not _is_setup(ln)]
    want = outcome.kind

    def fails(candidate: list[str]) -> bool:
        out = run_program(header + candidate, variant)
        return out.failed and out.kind == want

    chunk = max(len(body) // 2, 1)
    while chunk >= 1 and time.monotonic() - start < budget_s:
        i = 0
        reduced = False
        while i < len(body) and time.monotonic() - start < budget_s:
            candidate = body[:i] + body[i + chunk :]
            if candidate and fails(candidate):
                body = candidate
                reduced = True
            else:
                i += chunk
        if not reduced:
            chunk //= 2
    header = _minimal_header(header, body, variant, fails, want)
    return header + body + ["check"]


def _is_setup(line: str) -> bool:
    word = line.split(maxsplit=1)[0] if line.strip() else ""
    return word in ("config", "memory", "devdax", "fsdax", "file", "task")


def _minimal_header(
    header: list[str],
    body: list[str],
    variant: str | None,
    fails: Callable[[list[str]], bool],
    want: str,
) -> list[str]:
    """Drop setup lines (devices, files) the failure does not need."""
    kept = list(header)
    changed = True
    while changed:  # a device can go only after the files on it: repeat until stable
        changed = False
        for line in list(kept):
            if line.startswith(("config", "task", "memory")):
                continue
            trial = [h for h in kept if h != line]
            out = run_program(trial + body, variant)
            if out.failed and out.kind == want:
                kept = trial
                changed = True
    return kept


def fuzz(
    variant: str | None,
    seeds: range,
    steps: int,
    *,
    time_limit: float | None = None,
    with_dax: bool = True,
    stop_at_first: bool = False,
) -> Campaign:
    campaign = Campaign(variant or "mainline")
    start = time.monotonic()
    for seed in seeds:
        if time_limit is not None and time.monotonic() - start > time_limit:
            break
        lines = program_for(seed, steps, variant, with_dax)
        outcome = run_program(lines, variant)
        campaign.seeds += 1
        campaign.steps += outcome.steps
        if outcome.failed:
            campaign.failures.append((seed, outcome, lines))
            if stop_at_first:
                break
    campaign.seconds = time.monotonic() - start
    return campaign
