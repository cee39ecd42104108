"""The `foliosim oracle` sub-commands: `host FILE` and `host-suite DIR`.

Exit status: 0 every observable value agrees (and, for the suite, every expect holds on both
sides), 1 a disagreement, 2 bad input, 3 a missing host precondition (named on stderr),
4 the scenario needs something the host cannot do (DAX, pins, another arch or variant).
Each run writes a JSON record (kernel version, THP settings, every compared value) to
results/host/<timestamp>.json unless --results says otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from foliosim.oracle.host import HostResult, Untranslatable, run_scenario
from foliosim.oracle.sysfs import (
    PRECONDITION_EXIT,
    UNTRANSLATABLE_EXIT,
    HostSettings,
    disk_readahead_path,
    kernel_version,
    missing_preconditions,
    snapshot,
)
from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.statements import parse_text
from foliosim.variants import variant_for_kernel

oracle_app = typer.Typer(
    no_args_is_help=True, help="Run scenarios on this machine's kernel and compare with the model."
)
# Wide enough for the statement and both values when the output is not a terminal.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ResultsOpt = Annotated[
    Path | None,
    typer.Option(
        "--results", help="Where to write the JSON record (default results/host/<timestamp>.json)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def check_preconditions() -> None:
    missing = missing_preconditions()
    if missing:
        for reason in missing:
            err.print(f"precondition missing: {reason}")
        raise typer.Exit(PRECONDITION_EXIT)


def settings_for_run() -> HostSettings:
    return HostSettings(readahead_path=disk_readahead_path(Path("/tmp")))


def load(path: Path) -> list[Any]:
    try:
        return parse_text(str(path), path.read_text())
    except OSError as exc:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {exc.strerror}") from None


def write_record(target: Path | None, record: dict[str, Any]) -> Path:
    if target is None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = Path("results/host") / f"{stamp}-{time.time_ns() % 10**6:06d}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2, default=str))
    return target


def show(value: Any) -> str:
    return "none" if value is None else str(value)


def print_rows(result: HostResult) -> None:
    model = f"model ({variant_for_kernel(result.kernel)})"
    table = Table(title=f"{result.path} — {model} vs this kernel ({result.kernel})")
    for col in ("line", "statement", "value", "model", "kernel", ""):
        table.add_column(col)
    style = {"agree": "green", "disagree": "bold red", "not observable": "dim"}
    for r in result.rows:
        if r.what in ("errno", "signal") and r.status == "agree" and r.model in (0, None):
            continue  # quiet rows for syscalls that worked on both sides
        verdict = r.status
        if r.expect_model is False or r.expect_kernel is False:
            verdict += (
                f" (expect: model {'ok' if r.expect_model else 'FAILED'}, kernel "
                f"{'ok' if r.expect_kernel else 'FAILED'})"
            )
        table.add_row(
            str(r.line),
            r.source,
            r.what,
            show(r.model),
            show(r.kernel),
            f"[{style[r.status]}]{verdict}[/{style[r.status]}]",
        )
    console.print(table)


def run_one(path: Path, settings: HostSettings) -> HostResult:
    return run_scenario(str(path), load(path), settings)


@oracle_app.command("host")
def host(
    file: Annotated[Path, typer.Argument(help="A scenario file (.fsim).")],
    json_out: JsonOpt = False,
    results: ResultsOpt = None,
) -> None:
    """Run FILE on the model and on this kernel; exit 1 if an observable value differs."""
    check_preconditions()
    try:
        load(file)
        with settings_for_run() as settings:
            original = dict(settings.saved)
            result = run_one(file, settings)
    except ScenarioError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None
    except Untranslatable as exc:
        err.print(f"{file}: not translatable to the host: {exc}")
        raise typer.Exit(UNTRANSLATABLE_EXIT) from None
    record = {
        "kernel": kernel_version(),
        "original_settings": original,
        "restored_settings": snapshot(),
        **result.as_dict(),
    }
    where = write_record(results, record)
    if json_out:
        print(json.dumps(record, indent=2, default=str))
    else:
        print_rows(result)
        bad = len(result.disagreements)
        verdict = "[green]AGREE[/green]" if not bad else f"[red]{bad} DISAGREE[/red]"
        console.print(f"{verdict} {file} (kernel {result.kernel}); record: {where}")
    raise typer.Exit(1 if result.disagreements else 0)


def suite_summary(results: list[HostResult]) -> dict[str, Any]:
    observed = [r for res in results for r in res.rows if r.status != "not observable"]
    agreed = sum(1 for r in observed if r.status == "agree")
    return {
        "scenarios": len(results),
        "scenarios_agreeing": sum(1 for r in results if not r.disagreements and not r.error),
        "observed_values": len(observed),
        "agreeing_values": agreed,
        "agreement_percent": round(100.0 * agreed / len(observed), 2) if observed else 100.0,
        "expect_failures": sum(len(r.expect_failures) for r in results),
    }


@oracle_app.command("host-suite")
def host_suite(
    directory: Annotated[Path, typer.Argument(help="A directory of .fsim scenarios.")],
    json_out: JsonOpt = False,
    results: ResultsOpt = None,
) -> None:
    """Run every scenario of DIRECTORY on the model and this kernel; agreement table."""
    from rich.progress import Progress

    check_preconditions()
    paths = sorted(directory.rglob("*.fsim")) if directory.is_dir() else [directory]
    out: list[HostResult] = []
    with (
        settings_for_run() as settings,
        Progress(console=err, transient=True, disable=json_out) as progress,
    ):
        original = dict(settings.saved)
        bar = progress.add_task("host scenarios", total=len(paths))
        for path in paths:
            progress.update(bar, description=path.name)
            try:
                out.append(run_one(path, settings))
            except (ScenarioError, Untranslatable) as exc:
                res = HostResult(str(path), kernel_version(), {})
                res.error = str(exc)
                out.append(res)
            progress.advance(bar)
    summary = suite_summary(out)
    record = {
        "kernel": kernel_version(),
        "original_settings": original,
        "restored_settings": snapshot(),
        "summary": summary,
        "scenarios": [r.as_dict() for r in out],
    }
    where = write_record(results, record)
    if json_out:
        print(json.dumps(record, indent=2, default=str))
    else:
        table = Table(title=f"foliosim oracle host-suite — kernel {kernel_version()}")
        for col in ("scenario", "observed", "agree", "not observable", "expects", "verdict"):
            table.add_column(col, justify="left" if col in ("scenario", "verdict") else "right")
        for res in out:
            observed = [r for r in res.rows if r.status != "not observable"]
            agree = sum(1 for r in observed if r.status == "agree")
            verdict = (
                "[red]error[/red]"
                if res.error
                else "[green]agree[/green]"
                if not res.disagreements and not res.expect_failures
                else "[red]disagree[/red]"
                if res.disagreements
                else "[red]expect[/red]"
            )
            table.add_row(
                Path(res.path).name,
                str(len(observed)),
                str(agree),
                str(len(res.rows) - len(observed)),
                "fail" if res.expect_failures else "ok",
                verdict,
            )
        console.print(table)
        for res in out:
            if res.error:
                console.print(f"[red]{res.path}: {res.error}[/red]")
            for r in res.disagreements:
                console.print(
                    f"[red]{res.path}:{r.line}: {r.source}: {r.what}: model "
                    f"{show(r.model)}, kernel {show(r.kernel)}[/red]"
                )
        console.print(
            f"agreement: {summary['agreeing_values']}/{summary['observed_values']} observable "
            f"values ({summary['agreement_percent']}%), {summary['scenarios_agreeing']}/"
            f"{summary['scenarios']} scenarios; record: {where}"
        )
    failed = any(r.error or r.disagreements or r.expect_failures for r in out)
    raise typer.Exit(1 if failed else 0)


@oracle_app.command("host-fuzz")
def host_fuzz(
    programs: Annotated[int, typer.Option("--programs", help="How many programs.")] = 20,
    steps: Annotated[int, typer.Option("--steps", help="Statements per program.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first program.")] = 0,
    save_dir: Annotated[
        Path, typer.Option("--save", help="Where disagreeing programs are written.")
    ] = Path("fuzz-out/host"),
    shrink_out: Annotated[
        bool, typer.Option("--shrink", help="Shrink each disagreeing program before saving it.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fuzz the model against this kernel: generated programs (no DAX, no pins) with RSS,
    level and folio-order probes after every statement, run on both; a disagreeing program is
    saved as a scenario for triage (with --shrink: the statements it still disagrees without
    are dropped first). Exit 1 when any program disagrees."""
    from rich.progress import Progress

    from foliosim.oracle.hostfuzz import HostProgram, host_program, save, shrink

    check_preconditions()
    start = time.monotonic()
    rows = 0
    outcome: list[dict[str, Any]] = []
    with (
        settings_for_run() as settings,
        Progress(console=err, transient=True, disable=json_out) as progress,
    ):
        bar = progress.add_task("host programs", total=programs)

        def run(program: HostProgram) -> HostResult:
            name = f"<host-fuzz seed {program.seed}>"
            text = "\n".join(program.lines) + "\n"
            return run_scenario(name, parse_text(name, text), settings, attempts=1)

        def still_disagrees(program: HostProgram) -> bool:
            try:
                return bool(run(program).disagreements)
            except (ScenarioError, Untranslatable):  # a dropped line a later one needed
                return False

        for s in range(seed, seed + programs):
            program = host_program(s, steps)
            result = run(program)
            if result.disagreements and shrink_out:
                program = shrink(program, still_disagrees)
                result = run(program)
            observed = [r for r in result.rows if r.status != "not observable"]
            rows += len(observed)
            bad = [
                f"line {r.line}: {r.source}: {r.what}: model {show(r.model)}, kernel "
                f"{show(r.kernel)}"
                for r in result.disagreements
            ]
            entry: dict[str, Any] = {"seed": s, "observed": len(observed), "disagree": bad}
            if bad:
                entry["saved"] = str(save(save_dir, program, bad))
            outcome.append(entry)
            progress.advance(bar)
    seconds = time.monotonic() - start
    failing = [o for o in outcome if o["disagree"]]
    summary = {
        "kernel": kernel_version(),
        "programs": programs,
        "steps": steps,
        "observed_values": rows,
        "disagreeing_programs": len(failing),
        "seconds": round(seconds, 1),
    }
    if json_out:
        print(json.dumps({**summary, "programs_detail": outcome}, indent=2))
    else:
        table = Table(title=f"foliosim oracle host-fuzz — kernel {summary['kernel']}")
        for col in ("programs", "steps", "observed values", "disagreeing programs", "seconds"):
            table.add_column(col, justify="right")
        table.add_row(str(programs), str(steps), str(rows), str(len(failing)), f"{seconds:.1f}")
        console.print(table)
        for o in failing:
            console.print(f"[red]seed {o['seed']}: {o['disagree'][0]} ({o['saved']})[/red]")
    raise typer.Exit(1 if failing else 0)
