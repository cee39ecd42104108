"""`foliosim fuzz` and `foliosim mutants`: fuzz campaigns and the mutant catalogue."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from foliosim.fuzz.campaign import (
    Summary,
    campaign,
    load_state,
    replay,
    save_finding,
    save_state,
)
from foliosim.fuzz.engine import shrink

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _progress(json_out: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=json_out,
    )


def fuzz_command(
    variant: Annotated[str, typer.Option(help="Variant or mutant to fuzz.")] = "mainline",
    config: Annotated[
        str | None, typer.Option(help="Config line for every program, e.g. 'thp=always'.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Statements per program.")] = 60,
    programs: Annotated[int, typer.Option(help="Programs to run.")] = 200,
    seed: Annotated[
        int | None, typer.Option(help="Base seed; with --replay, the program to replay.")
    ] = None,
    replay_one: Annotated[
        bool, typer.Option("--replay", help="Replay the single program --seed and shrink it.")
    ] = False,
    time_limit: Annotated[
        float | None, typer.Option("--time", help="Stop after this many seconds.")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Local worker processes.")] = 1,
    known_defects: Annotated[
        bool,
        typer.Option(
            "--known-defects",
            help="Also generate the known kernel defects "
            "(mremap and guard regions of device-dax PUDs).",
        ),
    ] = False,
    differential: Annotated[
        str | None,
        typer.Option(
            help="Two variants, e.g. legacy,mainline: report the shortest program whose "
            "RSS/errno/signals differ."
        ),
    ] = None,
    save: Annotated[Path, typer.Option(help="Directory for shrunk counterexamples.")] = Path(
        "fuzz-out"
    ),
    state: Annotated[
        Path | None, typer.Option(help="Campaign state file (written atomically).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip seeds the state file says are done.")] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="local (programs as data on --jobs processes), dask or ray (a Dask or Ray "
            "cluster: --address, or a local one) or hypothesis (RuleBasedStateMachine)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Address of an existing cluster: a Dask scheduler, or a Ray head "
            "(HOST:PORT, or 'auto')."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fuzz the model with generated scenario programs; every invariant after every step."""
    if engine == "hypothesis":
        _hypothesis(variant, programs, steps, seed, save, json_out)
        return
    if engine == "programs":
        engine = "local"
    if engine not in ("local", "dask", "ray"):
        err.print(f"unknown engine '{engine}' (local, dask, ray, hypothesis)")
        raise typer.Exit(2)
    base = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    if not json_out:
        err.print(
            f"foliosim fuzz: variant {variant}, base seed {base} (replay one program with "
            f"--replay --seed N --steps {steps})"
        )
    if differential:
        from foliosim.fuzz.differential import differential_campaign

        left, _, right = differential.partition(",")
        result = differential_campaign(left, right, base, programs, steps, config)
        if json_out:
            print(json.dumps(result, indent=2))
        else:
            _print_differential(result)
        raise typer.Exit(1 if result["scenario"] else 0)
    if replay_one:
        outcome, lines = replay(base, steps, variant, config, known_defects)
        small = shrink(lines, variant, outcome) if outcome.failed else lines
        if json_out:
            print(json.dumps({"seed": base, "outcome": asdict(outcome), "scenario": small}))
        else:
            console.print(
                f"seed {base}: {'FAILED ' + outcome.kind if outcome.failed else 'ok'} "
                f"after {outcome.steps} steps"
            )
            if outcome.failed:
                console.print(outcome.message, markup=False)
                console.print("\n".join(small), markup=False)
        raise typer.Exit(1 if outcome.failed else 0)
    skip = load_state(state) if (state and resume) else set()
    with _progress(json_out) as progress:
        task = progress.add_task(f"fuzz {variant}", total=programs)
        summary = campaign(
            variant,
            base,
            programs,
            steps,
            jobs=jobs,
            config=config,
            known_defects=known_defects,
            time_limit=time_limit,
            skip=skip,
            engine=engine,
            address=address,
            progress=lambda n: progress.advance(task, n),
        )
    paths = [save_finding(save, f) for f in summary.findings]
    if state:
        save_state(state, summary)
    if json_out:
        print(json.dumps(_summary_json(summary, base, [str(p) for p in paths]), indent=2))
    else:
        _print_summary(summary, base, paths)
    raise typer.Exit(1 if summary.findings else 0)


def _hypothesis(
    variant: str, examples: int, steps: int, seed: int | None, save: Path, json_out: bool
) -> None:
    from foliosim.fuzz.campaign import Finding
    from foliosim.fuzz.hypo import hypothesis_campaign

    result = hypothesis_campaign(variant, examples, steps, seed)
    path = None
    if result.failure:
        path = save_finding(
            save, Finding(seed or 0, variant, "hypothesis", result.failure, result.scenario)
        )
    rate = result.steps / result.seconds if result.seconds else 0.0
    if json_out:
        print(
            json.dumps(
                {
                    "engine": "hypothesis",
                    "variant": variant,
                    "examples": result.examples,
                    "steps": result.steps,
                    "seconds": round(result.seconds, 3),
                    "steps_per_second": round(rate, 1),
                    "failure": result.failure,
                    "scenario": result.scenario,
                    "saved": str(path) if path else None,
                }
            )
        )
    else:
        table = Table(title=f"foliosim fuzz --engine hypothesis — {variant}")
        for col in ("examples", "steps", "seconds", "steps/s", "failure"):
            table.add_column(col)
        table.add_row(
            str(result.examples),
            str(result.steps),
            f"{result.seconds:.1f}",
            f"{rate:.0f}",
            "yes" if result.failure else "no",
        )
        console.print(table)
        if result.failure:
            console.print(result.failure.splitlines()[0], markup=False)
            console.print("\n".join(result.scenario), markup=False)
            console.print(f"saved: {path}")
    raise typer.Exit(1 if result.failure else 0)


def _summary_json(summary: Summary, base: int, paths: list[str]) -> dict[str, object]:
    return {
        "variant": summary.variant,
        "base_seed": base,
        "programs": summary.programs,
        "steps": summary.steps,
        "seconds": round(summary.seconds, 3),
        "steps_per_second": round(summary.steps_per_second, 1),
        "known_defects": summary.known_defects,
        "findings": [asdict(f) for f in summary.findings],
        "saved": paths,
    }


def _print_summary(summary: Summary, base: int, paths: list[Path]) -> None:
    table = Table(title=f"foliosim fuzz — {summary.variant}, base seed {base}")
    for col in ("programs", "steps", "seconds", "steps/s", "known defects hit", "findings"):
        table.add_column(col, justify="right")
    table.add_row(
        str(summary.programs),
        str(summary.steps),
        f"{summary.seconds:.1f}",
        f"{summary.steps_per_second:.0f}",
        str(summary.known_defects),
        str(len(summary.findings)),
    )
    console.print(table)
    for finding, path in zip(summary.findings, paths, strict=True):
        console.print(f"\n[red]seed {finding.seed}: {finding.kind}[/red] -> {path}")
        console.print(finding.message.splitlines()[0], markup=False)
        console.print("\n".join(finding.scenario), markup=False)


def _print_differential(result: dict[str, object]) -> None:
    if not result["scenario"]:
        console.print(f"No user-visible difference in {result['programs']} programs.")
        return
    console.print(
        f"Shortest program whose user-visible results differ "
        f"({result['left']} vs {result['right']}):"
    )
    console.print("\n".join(result["scenario"]), markup=False)  # type: ignore[arg-type]
    console.print(str(result["difference"]), markup=False)


mutants_app = typer.Typer(
    help="The mutant catalogue: deliberately broken variants.", no_args_is_help=True
)


@mutants_app.command("list")
def mutants_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the mutants with what each breaks."""
    from foliosim.mutants import MUTANTS

    if json_out:
        print(json.dumps({n: v.description for n, v in MUTANTS.items()}, indent=2))
        return
    table = Table(title=f"{len(MUTANTS)} mutants")
    table.add_column("mutant")
    table.add_column("what it breaks")
    for name, v in MUTANTS.items():
        table.add_row(name, v.description)
    console.print(table)


@mutants_app.command("run")
def mutants_run(
    budget: Annotated[float, typer.Option(help="Seconds per mutant.")] = 60.0,
    only: Annotated[list[str] | None, typer.Option(help="Run only these mutants.")] = None,
    save: Annotated[Path | None, typer.Option(help="Save shrunk counterexamples here.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fuzz every mutant within a time budget; a table of caught/missed and the score."""
    from foliosim.fuzz.campaign import Finding
    from foliosim.fuzz.mutants_run import hunt
    from foliosim.mutants import MUTANTS

    names = [n for n in MUTANTS if not only or n in only]
    results = []
    with _progress(json_out) as progress:
        task = progress.add_task("mutants", total=len(names))
        for name in names:
            progress.update(task, description=f"mutant {name}")
            results.append(hunt(name, MUTANTS[name].description, budget))
            progress.advance(task)
    if save:
        for r in results:
            if r.caught:
                save_finding(save, Finding(r.seed, r.name, r.kind, r.kind, r.shrunk))
    caught = sum(r.caught for r in results)
    if json_out:
        print(
            json.dumps(
                {"score": caught / max(len(results), 1), "mutants": [asdict(r) for r in results]},
                indent=2,
            )
        )
    else:
        table = Table(title="foliosim mutants run")
        for col in (
            "mutant",
            "caught",
            "programs",
            "steps to catch",
            "seconds",
            "shrunk length",
            "by",
        ):
            table.add_column(col)
        for r in results:
            table.add_row(
                r.name,
                "[green]yes[/green]" if r.caught else "[red]no[/red]",
                str(r.programs),
                str(r.steps_to_catch),
                f"{r.seconds:.1f}",
                str(
                    sum(
                        1
                        for s in r.shrunk
                        if ":" in s or s.startswith(("unpin", "truncate", "punch", "shrink"))
                    )
                ),
                r.kind,
            )
        console.print(table)
        console.print(
            f"mutation score: {caught}/{len(results)} = {100 * caught / max(len(results), 1):.0f}%"
        )
    raise typer.Exit(0 if caught == len(results) else 1)
