"""The real-kernel oracle (`foliosim oracle host`): a few conformance scenarios on this
machine's kernel must agree with the model. Skipped, with the reason, where the host lacks
what the oracle needs (root, THP sysfs, pagemap PFNs, kpageflags, kernel >= 6.7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from foliosim.cli import app
from foliosim.oracle import commands
from foliosim.oracle.host import Untranslatable, run_scenario, scenario_config
from foliosim.oracle.sysfs import (
    PRECONDITION_EXIT,
    HostSettings,
    missing_preconditions,
    snapshot,
)
from foliosim.scenario.statements import parse_text

# The host oracle reads machine-wide vmstat and a QEMU guest madvises its RAM for THPs: the
# real-kernel tests share one xdist worker (--dist loadgroup) so they never overlap.
pytestmark = pytest.mark.xdist_group("real-kernel")

SUITE = Path(__file__).resolve().parent.parent / "conformance" / "host"
MISSING = missing_preconditions()
needs_host = pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING) or "host ready")

SAMPLE = (
    "03-anon-pmd-madvise.fsim",
    "12-fork-child-cow.fsim",
    "24-shrink-splits-partial.fsim",
    "30-mthp-64k-write.fsim",
    "35-shmem-huge-always-fault.fsim",
    "42-pagecache-filled-read.fsim",
    "48-guard-regions.fsim",
    "81-shmem-mapping-left-alone-by-khugepaged.fsim",
    "82-shmem-pmd-across-eof-does-not-fault.fsim",  # the oracle touches mapped pages past EOF
)


def test_suite_is_large_enough() -> None:
    assert len(list(SUITE.glob("*.fsim"))) >= 40


@needs_host
def test_sample_agrees_on_this_kernel() -> None:
    before = snapshot()
    with HostSettings() as settings:
        for name in SAMPLE:
            path = SUITE / name
            result = run_scenario(str(path), parse_text(str(path), path.read_text()), settings)
            assert not result.error
            assert not result.disagreements, [r.as_dict() for r in result.disagreements]
            assert not result.expect_failures, [r.as_dict() for r in result.expect_failures]
            assert any(r.status == "agree" for r in result.rows)
    assert snapshot() == before  # THP sysfs restored


@needs_host
def test_khugepaged_parker_lives_for_the_run() -> None:
    """The parked process (sysfs.KhugepagedParker) keeps an mm on khugepaged's list while
    the settings are held, answers a re-registration, and is gone afterwards."""
    with HostSettings() as settings:
        proc = settings.parker.proc
        assert proc is not None and proc.poll() is None
        settings.apply("madvise", {})
        assert proc.poll() is None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "VmRSS" in status
    assert proc.poll() is not None
    assert settings.parker.proc is None


@needs_host
def test_cli_host_writes_record(tmp_path: Path) -> None:
    record = tmp_path / "r.json"
    out = CliRunner().invoke(
        app,
        [
            "oracle",
            "host",
            str(SUITE / "09-huge-zero-write.fsim"),
            "--json",
            "--results",
            str(record),
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(record.read_text())
    assert data["kernel"] and data["thp_settings"]
    assert data["agree"] is True


@needs_host
def test_disagreement_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = tmp_path / "s.fsim"
    scenario.write_text(
        "config thp=madvise\ntask A\nA: m = mmap 2M align=2M\nA: write m 4K\n"
        "expect level(A, m) == pte\n"
    )
    ok = CliRunner().invoke(
        app, ["oracle", "host", str(scenario), "--results", str(tmp_path / "a.json")]
    )
    assert ok.exit_code == 0, ok.output
    # A kernel that answered differently: the oracle must say so and exit 1.
    from foliosim.oracle import observe

    monkeypatch.setattr(observe, "level", lambda pid, addr: "pmd")
    bad = CliRunner().invoke(
        app, ["oracle", "host", str(scenario), "--results", str(tmp_path / "b.json")]
    )
    assert bad.exit_code == 1, bad.output
    assert "DISAGREE" in bad.output


def test_missing_precondition_exits_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(commands, "missing_preconditions", lambda: ["needs root (test)"])
    out = CliRunner().invoke(
        app,
        [
            "oracle",
            "host",
            str(SUITE / "01-anon-pte-write.fsim"),
            "--results",
            str(tmp_path / "r.json"),
        ],
    )
    assert out.exit_code == PRECONDITION_EXIT
    assert "needs root (test)" in out.output


def test_dax_is_not_translated() -> None:
    stmts = parse_text("x.fsim", "devdax d size=2G align=2M\ntask A\nA: m = mmap 2M shared fd=d\n")
    with pytest.raises(Untranslatable):
        scenario_config(stmts)
    with pytest.raises(Untranslatable):
        scenario_config(parse_text("y.fsim", "config arch=arm64 granule=64K\ntask A\n"))


def test_host_fuzz_shrink_keeps_a_disagreeing_program_small() -> None:
    """shrink() drops every statement the predicate does not need and keeps the setup."""
    from foliosim.oracle.hostfuzz import HostProgram, shrink

    program = HostProgram(
        1, ["config thp=madvise", "task T1", "T1: a = mmap 64K", "T1: write a 4K", "shrink"]
    )
    small = shrink(program, lambda p: "T1: a = mmap 64K" in p.statements)
    assert small.statements == ["config thp=madvise", "task T1", "T1: a = mmap 64K"]
    assert small.lines[-1].startswith("print T1.rss")


def test_host_fuzz_programs_are_translatable() -> None:
    """oracle host-fuzz programs use only what the host oracle can run (no DAX, no pins, the
    host's fixed configuration), stay inside their own mappings (no length past a region)
    and probe after every task statement."""
    from foliosim.oracle.hostfuzz import host_program

    for seed in range(25):
        program = host_program(seed, 30)
        text = "\n".join(program.lines) + "\n"
        stmts = parse_text(f"<seed {seed}>", text)
        scenario_config(stmts)  # raises Untranslatable otherwise
        assert not any(" = pin " in line or line.startswith("unpin ") for line in program.lines)
        assert not any(line.startswith(("devdax", "fsdax")) for line in program.lines)
        tasks = [i for i, line in enumerate(program.lines) if re.match(r"^\w+: ", line)]
        for i in tasks:
            assert program.lines[i + 1].startswith("print "), program.lines[i : i + 2]


@needs_host
def test_host_fuzz_cli_runs_and_reports(tmp_path: Path) -> None:
    """A short host-fuzz campaign (shrinking what disagrees) runs on this kernel and reports
    its summary as JSON (exit 0 or 1: a disagreement is a finding, not an error)."""
    result = CliRunner().invoke(
        app,
        [
            "oracle",
            "host-fuzz",
            "--programs",
            "3",
            "--steps",
            "8",
            "--seed",
            "7",
            "--save",
            str(tmp_path),
            "--shrink",
            "--json",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(result.output)
    assert summary["programs"] == 3 and summary["observed_values"] > 0
    assert summary["disagreeing_programs"] == len(list(tmp_path.glob("*.fsim")))
