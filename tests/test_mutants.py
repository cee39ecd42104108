"""Every mutant is caught by the fuzzer within a short budget, and the committed shrunk
counterexamples (tests/scenarios/regressions/) fail under their mutant but pass on mainline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foliosim.fuzz.mutants_run import hunt
from foliosim.mutants import MUTANTS
from foliosim.scenario.runner import execute
from foliosim.scenario.statements import parse_text

REGRESSIONS = sorted((Path(__file__).parent / "scenarios" / "regressions").glob("*.fsim"))


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str) -> None:
    result = hunt(name, MUTANTS[name].description, budget_s=40.0, steps=60, shrink_budget=2.0)
    assert result.caught, f"mutant {name} survived {result.programs} programs"


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regression_passes_on_mainline(path: Path) -> None:
    text = path.read_text()
    variant = re.search(r"#\s*variants:\s*(\S+)", text)
    assert variant is not None and variant.group(1) in MUTANTS
    run = execute(str(path), parse_text(str(path), text), variant="mainline")
    assert not run.failed, [line for r in run.results for line in r.output]


def test_catalogue_is_large_enough() -> None:
    assert len(MUTANTS) >= 25
    assert len(REGRESSIONS) >= 3
