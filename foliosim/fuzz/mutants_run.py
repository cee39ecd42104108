"""`foliosim mutants run`: fuzz each mutant within a budget and report whether it was caught."""

from __future__ import annotations

import time
from dataclasses import dataclass

from foliosim.fuzz.engine import run_program, shrink
from foliosim.fuzz.program import Generator


@dataclass
class MutantResult:
    name: str
    description: str
    caught: bool
    programs: int
    steps_to_catch: int
    seconds: float
    shrunk: list[str]
    kind: str = ""
    seed: int = -1


def hunt(
    name: str,
    description: str,
    budget_s: float,
    steps: int = 60,
    base_seed: int = 0,
    shrink_budget: float = 10.0,
    ownership: bool = True,
) -> MutantResult:
    """Run programs under the mutant until one fails (or the budget runs out)."""
    start = time.monotonic()
    total_steps = 0
    seed = base_seed
    while time.monotonic() - start < budget_s:
        lines = Generator(seed, variant=name, known_defects=False).program(steps)
        outcome = run_program(lines, name, ownership=ownership)
        total_steps += outcome.steps
        seed += 1
        if outcome.failed:
            small = shrink(lines, name, outcome, shrink_budget)
            return MutantResult(
                name,
                description,
                True,
                seed - base_seed,
                total_steps,
                time.monotonic() - start,
                small,
                outcome.kind,
                seed - 1,
            )
    return MutantResult(
        name, description, False, seed - base_seed, total_steps, time.monotonic() - start, []
    )
