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


@pytest.mark.parametrize(
    "name", ["zap-pmd-put-early", "cow-put-early", "truncate-put-early", "unpin-put-early"]
)
def test_ownership_mutants_need_the_checker(name: str) -> None:
    """Put-before-last-use leaves every count balanced: only the ownership checker sees it.
    Find a program that catches the mutant, then run the same program with the checker off."""
    from foliosim.fuzz.engine import program_for, run_program

    for seed in range(400):
        lines = program_for(seed, 60, name)
        caught = run_program(lines, name)
        if caught.failed:
            break
    else:
        pytest.fail(f"{name} not caught in 400 programs")
    assert "use-after-put" in caught.message
    blind = run_program(lines, name, ownership=False)
    assert not blind.failed, blind.message


def test_seed_split_report_names_line_and_call_chain() -> None:
    path = Path(__file__).parent / "scenarios" / "ownership" / "seed-pud-split-use-after-put.fsim"
    run = execute(str(path), parse_text(str(path), path.read_text()))
    uap = [r for r in run.kernel.reports.reports if "use-after-put" in r.message]
    assert len(uap) == 1
    assert uap[0].line == 13  # the MADV_DONTNEED that split the PUD
    assert "call chain: __split_huge_pud_locked" in uap[0].details
    assert "order:18" in uap[0].details  # the folio dump
