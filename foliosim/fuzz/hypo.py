"""The Hypothesis engine: a RuleBasedStateMachine whose rule is "run one more scenario
statement" and whose invariant is every foliosim invariant.

Each rule draws a Random that Hypothesis controls, and the statement generator of program.py
uses it, so shrinking works on the statements: the counterexample Hypothesis settles on is
printed as a runnable scenario. Hypothesis' per-rule bookkeeping costs far more than the
model's step, so the default engine runs whole programs as data (engine.py); this one is for
its shrinking and for users who want Hypothesis' database and reporting.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from foliosim.check_incremental import IncrementalChecker
from foliosim.fuzz.engine import FAILING_REPORTS, known_defect, run_program, shrink
from foliosim.fuzz.program import Generator
from foliosim.scenario.parser import LineParser, ScenarioError, tokenize
from foliosim.scenario.runner import Run, StmtResult, build_kernel, run_statement
from foliosim.scenario.statements import parse_statement, parse_text


class LiveRun:
    """A scenario run fed one statement at a time."""

    def __init__(self, header: list[str], variant: str | None) -> None:
        stmts = parse_text("<hypothesis>", "\n".join(header) + "\n")
        self.kernel = build_kernel("<hypothesis>", stmts, variant)
        self.run = Run("<hypothesis>", self.kernel)
        self.kernel.pinsets = self.run.pins  # type: ignore[attr-defined]
        self.checker = IncrementalChecker(self.kernel)
        self.lines = list(header)
        self.seen_reports = 0
        for stmt in stmts:
            if stmt.kind not in ("config", "memory"):
                run_statement(self.run, stmt, StmtResult(stmt.line, stmt.source))

    def execute(self, line: str) -> None:
        self.lines.append(line)
        number = len(self.lines)
        parser = LineParser("<hypothesis>", number, tokenize("<hypothesis>", number, line), line)
        stmt = parse_statement(parser)
        stmt.source = line
        run_statement(self.run, stmt, StmtResult(number, line))

    def failure(self) -> str | None:
        reports = self.kernel.reports.reports
        for rep in reports[self.seen_reports :]:
            if rep.kind.startswith(FAILING_REPORTS):
                return rep.render()
        self.seen_reports = len(reports)
        violations = self.checker.check()
        return violations[0].render() if violations else None


@dataclass
class HypothesisResult:
    variant: str
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    failure: str = ""
    scenario: list[str] = field(default_factory=list)


def machine_for(variant: str | None, result: HypothesisResult) -> type[RuleBasedStateMachine]:
    class ScenarioMachine(RuleBasedStateMachine):
        live: LiveRun | None = None
        gen: Generator | None = None

        @initialize(rnd=st.randoms(use_true_random=False))
        def setup(self, rnd: random.Random) -> None:
            self.gen = Generator(0, variant=variant)
            self.gen.rng = rnd
            self.live = LiveRun(self.gen.header(), variant)
            result.examples += 1

        @rule(rnd=st.randoms(use_true_random=False))
        def statement(self, rnd: random.Random) -> None:
            assert self.gen is not None and self.live is not None
            self.gen.rng = rnd
            line = self.gen.step()
            try:
                self.live.execute(line)
            except ScenarioError:
                return
            result.steps += 1

        @invariant()
        def counters_agree(self) -> None:
            if self.live is None:
                return
            problem = self.live.failure()
            if problem is not None and known_defect(self.live.run) is None:
                result.failure = problem
                result.scenario = [*self.live.lines, "check"]
                raise AssertionError(problem)

    return ScenarioMachine


def hypothesis_campaign(
    variant: str | None, examples: int, steps: int, seed: int | None
) -> HypothesisResult:
    result = HypothesisResult(variant or "mainline")
    machine = machine_for(variant, result)
    start = time.monotonic()
    conf = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        if seed is not None:
            random.seed(seed)
        run_state_machine_as_test(machine, settings=conf)
    except AssertionError:
        # result holds the last failing example Hypothesis shrank to; it shrinks random
        # choices well but keeps statements a ddmin pass over the text can still drop.
        lines = result.scenario[:-1]
        outcome = run_program(lines, variant)
        if outcome.failed:
            result.scenario = shrink(lines, variant, outcome, budget_s=10.0)
    result.seconds = time.monotonic() - start
    return result
