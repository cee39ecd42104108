"""Every scenario under tests/scenarios/ runs on the model and passes.

Header directives (comment lines at the top of a .fsim file):
  # expect-exit: N      the run must end with exit status N (default 0)
  # variants: a,b       run under each of these variants (default: the file's own config)
  # invariants: off     do not run every invariant after each statement (default on)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foliosim.scenario.runner import execute
from foliosim.scenario.statements import parse_text

ROOT = Path(__file__).parent / "scenarios"
FILES = sorted(ROOT.rglob("*.fsim"))


def directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"#\s*(expect-exit|variants|invariants):\s*(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def cases() -> list[tuple[Path, str | None]]:
    out: list[tuple[Path, str | None]] = []
    for path in FILES:
        d = directives(path.read_text())
        variants = d.get("variants")
        if variants:
            out.extend((path, v) for v in variants.split(","))
        else:
            out.append((path, None))
    return out


@pytest.mark.parametrize(
    ("path", "variant"),
    cases(),
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else str(v),
)
def test_scenario(path: Path, variant: str | None) -> None:
    text = path.read_text()
    d = directives(text)
    stmts = parse_text(str(path), text)
    run = execute(str(path), stmts, variant=variant, check_each=d.get("invariants") != "off")
    expected = int(d.get("expect-exit", "0"))
    failures = [line for r in run.results if not r.ok for line in r.output]
    failures += [v.render() for v in run.violations]
    assert (1 if run.failed else 0) == expected, "\n".join(failures)


def test_suite_is_not_empty() -> None:
    assert len(FILES) >= 1


HOST_SUITE = ROOT.parent.parent / "conformance" / "host"


@pytest.mark.parametrize(
    "path", sorted(HOST_SUITE.glob("*.fsim")), ids=lambda p: f"conformance/host/{p.name}"
)
def test_host_conformance_scenario_on_the_model(path: Path) -> None:
    """Every host-conformance scenario's expectations (written from kernel semantics and
    checked on the real kernel by `foliosim oracle host-suite`) hold on the model, with every
    invariant checked after each statement."""
    text = path.read_text()
    # A scenario of what an older release does names its variant (the host oracle runs the
    # variant of the host's release, foliosim.variants.variant_for_kernel).
    variants = directives(text).get("variants")
    for variant in variants.split(",") if variants else [None]:
        run = execute(str(path), parse_text(str(path), text), variant=variant, check_each=True)
        failures = [line for r in run.results if not r.ok for line in r.output]
        failures += [v.render() for v in run.violations]
        assert not run.failed, f"variant {variant}:\n" + "\n".join(failures)
