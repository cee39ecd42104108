"""The `foliosim` command line (Typer + Rich)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="An executable model of Linux huge-page mapping and folio accounting (Linux 7.1.8).",
)
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", help="legacy, seed, mainline or a mutant name.")
]


def load(path: Path) -> tuple[str, list[Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), 1, 1, "not a text file") from None
    return text, parse_text(str(path), text)


def run_file(path: Path, variant: str | None, check_each: bool, trace: bool) -> Run:
    _, stmts = load(path)
    return execute(str(path), stmts, variant=variant, check_each=check_each, trace=trace)


def run_json(run: Run) -> dict[str, Any]:
    return {
        "file": run.path,
        "variant": run.kernel.variant.name,
        "passed": not run.failed,
        "statements": [
            {
                "line": r.line,
                "source": r.source,
                "ok": r.ok,
                "output": r.output,
                "values": r.values,
                "trace": r.trace,
                "changes": {key: list(v) for key, v in r.changes.items()},
            }
            for r in run.results
        ],
        "reports": [
            {"kind": rep.kind, "site": rep.site, "message": rep.message, "line": rep.line}
            for rep in run.kernel.reports.reports
        ],
        "violations": [v.render() for v in run.violations],
    }


def print_run(run: Run, trace: bool) -> None:
    for r in run.results:
        style = "" if r.ok else "bold red"
        if trace:
            console.print(f"[dim]{r.line:>4}[/dim] {r.source}", style=style)
            if r.trace:
                console.print(f"      [cyan]{' -> '.join(r.trace)}[/cyan]")
            for key, (old, new) in r.changes.items():
                console.print(f"      [yellow]{key}: {old} -> {new}[/yellow]")
        for line in r.output:
            console.print(line, style=style, markup=False)
    for report in run.kernel.reports.reports:
        console.print(f"[magenta]line {report.line}: {report.render()}[/magenta]")
    verdict = "[green]PASS[/green]" if not run.failed else "[red]FAIL[/red]"
    console.print(f"{verdict} {run.path} (variant {run.kernel.variant.name})")


def fail_input(exc: ScenarioError) -> None:
    sys.stderr.write(f"{exc}\n")
    raise typer.Exit(2)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="A scenario file (.fsim).")],
    variant: VariantOpt = None,
    json_out: JsonOpt = False,
    trace: Annotated[
        bool, typer.Option("--trace", help="Kernel functions and counter changes per statement.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Run every invariant after each statement.")
    ] = False,
) -> None:
    """Run a scenario: exit 0 if every expect held, 1 if one failed, 2 for bad input."""
    try:
        result = run_file(file, variant, check, trace)
    except ScenarioError as exc:
        fail_input(exc)
        return
    except Exception as exc:  # a crash of the model itself, not a user mistake
        sys.stderr.write(
            f"{file}: foliosim internal error (a model bug, please report it): "
            f"{type(exc).__name__}: {exc}\n"
        )
        raise typer.Exit(3) from None
    if json_out:
        print(json.dumps(run_json(result), indent=2, default=str))
    else:
        print_run(result, trace)
    raise typer.Exit(1 if result.failed else 0)


@app.command()
def check(
    files: Annotated[list[Path], typer.Argument(help="Scenario files or directories.")],
    variant: VariantOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run scenarios with every invariant checked after each statement; a summary table."""
    from rich.progress import Progress

    paths: list[Path] = []
    for f in files:
        paths.extend(sorted(f.rglob("*.fsim")) if f.is_dir() else [f])
    rows: list[dict[str, Any]] = []
    bad_input = False
    with Progress(console=err_console, transient=True, disable=json_out) as progress:
        task = progress.add_task("scenarios", total=len(paths))
        for path in paths:
            try:
                result = run_file(path, variant, True, False)
                rows.append(
                    {
                        "file": str(path),
                        "passed": not result.failed,
                        "violations": len(result.violations),
                    }
                )
            except ScenarioError as exc:
                bad_input = True
                rows.append({"file": str(path), "passed": False, "error": str(exc)})
            progress.advance(task)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="foliosim check")
        table.add_column("scenario")
        table.add_column("result")
        table.add_column("invariant violations", justify="right")
        for row in rows:
            verdict = (
                "[green]pass[/green]"
                if row["passed"]
                else ("[red]input error[/red]" if "error" in row else "[red]fail[/red]")
            )
            table.add_row(row["file"], verdict, str(row.get("violations", "-")))
        console.print(table)
        passed = sum(1 for r in rows if r["passed"])
        console.print(f"{passed} passed, {len(rows) - passed} failed")
    if bad_input:
        raise typer.Exit(2)
    raise typer.Exit(0 if all(r["passed"] for r in rows) else 1)


@app.command()
def diff(
    file: Annotated[Path, typer.Argument(help="A scenario file.")],
    variants: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated variants (default: legacy,seed,mainline), e.g. "
            "mainline,mainline-fixed or mainline,MUTANT."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a scenario under every variant and show where the queried values differ."""
    from foliosim.diff import diff_variants, print_diff
    from foliosim.variants import get_variant

    names = variants.split(",") if variants else None
    for name in names or []:
        try:
            get_variant(name)
        except KeyError:
            sys.stderr.write(f"unknown variant '{name}'\n")
            raise typer.Exit(2) from None
    try:
        table = diff_variants(file, names)
    except ScenarioError as exc:
        fail_input(exc)
        return
    if json_out:
        print(json.dumps(table, indent=2, default=str))
    else:
        print_diff(console, table)


@app.command()
def tour(
    variant: VariantOpt = None,
    json_out: JsonOpt = False,
    walk: Annotated[
        str, typer.Option("--walk", help="dax-pud (the seed's walk) or anon-thp.")
    ] = "dax-pud",
) -> None:
    """A guided walk through a built-in scenario, with the counters after each step."""
    from foliosim.tour import run_tour

    code = run_tour(console, walk, variant, json_out)
    raise typer.Exit(code)


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller sizes (seconds, not minutes).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Time model workloads in one run against the per-page model and the host kernel."""
    from rich.progress import Progress

    from foliosim.bench import run_bench
    from foliosim.bench_report import render

    with Progress(console=err_console, transient=True, disable=json_out) as progress:
        task = progress.add_task("bench", total=None)
        results = run_bench(quick, lambda name: progress.update(task, description=name))
    render(results, json_out, console)


from foliosim.study_report import study_app  # noqa: E402

app.add_typer(study_app, name="study")

from foliosim.oracle.commands import oracle_app  # noqa: E402

app.add_typer(oracle_app, name="oracle")

from foliosim.oracle_qemu.commands import register as register_qemu  # noqa: E402

register_qemu(oracle_app)

from foliosim.cli_fuzz import fuzz_command, mutants_app  # noqa: E402

app.command("fuzz")(fuzz_command)
app.add_typer(mutants_app, name="mutants")


from foliosim.cli_views import register as register_views  # noqa: E402

register_views(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
