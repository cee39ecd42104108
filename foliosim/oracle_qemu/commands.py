"""`foliosim oracle qemu setup`, `foliosim oracle qemu FILE... --kernel K` and
`foliosim oracle qemu-suite DIR --kernel K`.

Exit status: 0 every observable value agrees, 1 a disagreement (or a scenario without a
result), 2 bad input, 3 something to set up first (the message says what).
Each run writes its raw results (every row, console facts, boot times) as JSON under
results/qemu/ unless --results says otherwise.
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

from foliosim.scenario.parser import ScenarioError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

KernelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kernel", help="Kernel version: 6.1, 6.18, 7.3 or a full version (repeat for setup)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ResultsOpt = Annotated[
    Path | None,
    typer.Option(
        "--results", help="JSON record path (default results/qemu/<kernel>-<timestamp>.json)."
    ),
]
SETUP_EXIT = 3


def _record(target: Path | None, kernel: str, payload: dict[str, Any]) -> Path:
    path = target or Path("results/qemu") / f"{kernel}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def _payload(results: list[Any], boots: list[Any]) -> dict[str, Any]:
    from foliosim.oracle_qemu.run import summary

    return {
        "summary": summary(results),
        "boots": [b.__dict__ for b in boots],
        "scenarios": [r.json() for r in results],
    }


def _run(paths: list[Path], kernel: str) -> tuple[list[Any], list[Any]]:
    from foliosim.oracle_qemu.run import run_scenarios
    from foliosim.oracle_qemu.setup import SetupError

    try:
        with console.status("booting guests") as status:
            return run_scenarios(paths, kernel, progress=lambda m: status.update(m))
    except SetupError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(SETUP_EXIT) from None
    except ScenarioError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2) from None


def _print_rows(result: Any) -> None:
    title = f"{result.path}: kernel {result.kernel} vs model variant {result.variant}"
    if result.status == "unsupported":
        console.print(f"[yellow]{title}: not run ({result.reason})[/yellow]")
        return
    table = Table(title=title, show_lines=False)
    for col in ("line", "statement", "model", "kernel", "verdict"):
        table.add_column(col, overflow="fold")
    for r in result.rows:
        style = {"agree": "green", "DISAGREE": "bold red", "no result": "red"}.get(r.verdict, "dim")
        table.add_row(str(r.line or ""), r.source, r.model, r.kernel, f"[{style}]{r.verdict}[/]")
    console.print(table)


def qemu(
    file: Annotated[str, typer.Argument(help="`setup`, or a scenario file (.fsim).")],
    more: Annotated[list[Path] | None, typer.Argument(help="More scenario files.")] = None,
    kernel: KernelOpt = None,
    json_out: JsonOpt = False,
    results: ResultsOpt = None,
) -> None:
    """Run DAX scenarios in a QEMU guest on a Debian kernel and compare with the model
    (legacy for kernels before 6.15, mainline after). `qemu setup` fetches what it needs."""
    if file == "setup":
        from foliosim.oracle_qemu.setup import DEFAULT_KERNELS, SetupError, setup

        start = time.monotonic()
        try:
            log = setup(list(kernel or DEFAULT_KERNELS))
        except SetupError as exc:
            err.print(f"[red]setup failed: {exc}[/red]")
            raise typer.Exit(SETUP_EXIT) from None
        for line in log:
            console.print(line)
        console.print(f"setup done in {time.monotonic() - start:.1f}s")
        return
    if not kernel or len(kernel) != 1:
        err.print("give exactly one --kernel (for example --kernel 6.1 or --kernel 6.18)")
        raise typer.Exit(2)
    paths = [Path(file), *(more or [])]
    res, boots = _run(paths, kernel[0])
    payload = _payload(res, boots)
    where = _record(results, kernel[0], payload)
    if json_out:
        print(json.dumps(payload, indent=2, default=str))
    else:
        for r in res:
            _print_rows(r)
        for b in boots:
            console.print(
                f"boot {b.index}: {b.release} ({b.accel}) {b.seconds:.1f}s, "
                f"{len(b.files)} scenario(s)"
            )
        console.print(f"raw results: {where}")
    raise typer.Exit(0 if all(r.agrees for r in res) else 1)


def qemu_suite(
    directory: Annotated[Path, typer.Argument(help="A directory of scenarios (*.fsim).")],
    kernel: KernelOpt = None,
    json_out: JsonOpt = False,
    results: ResultsOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Every scenario's rows.")] = False,
) -> None:
    """Run a conformance suite in as few guest boots as WARN_ON_ONCE allows; agreement table."""

    if not kernel or len(kernel) != 1:
        err.print("give exactly one --kernel")
        raise typer.Exit(2)
    paths = sorted(directory.rglob("*.fsim")) if directory.is_dir() else [directory]
    start = time.monotonic()
    res, boots = _run(paths, kernel[0])
    payload = _payload(res, boots)
    payload["seconds"] = time.monotonic() - start
    where = _record(results, kernel[0], payload)
    s = payload["summary"]
    if json_out:
        print(json.dumps(payload, indent=2, default=str))
    else:
        if verbose:
            for r in res:
                _print_rows(r)
        table = Table(
            title=f"DAX conformance on kernel {res[0].kernel if res else kernel[0]} "
            f"(model variant {res[0].variant if res else '?'})"
        )
        for col in ("scenario", "boot", "rows agree", "rows disagree", "result"):
            table.add_column(col)
        for r in res:
            verdict = (
                "[yellow]unsupported[/]"
                if r.status == "unsupported"
                else "[green]agree[/]"
                if r.agrees
                else "[red]DISAGREE[/]"
            )
            table.add_row(Path(r.path).name, str(r.boot), str(r.agree), str(r.disagree), verdict)
        console.print(table)
        console.print(
            f"{s['agreeing']}/{s['ran']} scenarios agree ({s['percent']}%), "
            f"{s['rows_agreeing']}/{s['rows']} rows; {len(boots)} boot(s), "
            f"{payload['seconds']:.0f}s; raw results: {where}"
        )
    raise typer.Exit(0 if s["agreeing"] == s["ran"] else 1)


def register(oracle_app: typer.Typer) -> None:
    """Add the commands to the `oracle` sub-app."""
    oracle_app.command("qemu")(qemu)
    oracle_app.command("qemu-suite")(qemu_suite)
