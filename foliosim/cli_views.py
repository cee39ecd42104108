"""`foliosim proc`, `foliosim show folio|map` and `foliosim report`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from foliosim.scenario.parser import ScenarioError

console = Console(highlight=False, soft_wrap=True)

FileArg = Annotated[Path, typer.Argument(help="A scenario file (.fsim).")]
TaskOpt = Annotated[str, typer.Option("--task", help="The task whose /proc files to read.")]
AtOpt = Annotated[
    int | None, typer.Option("--at", help="Run the scenario up to and including this line.")
]
VariantOpt = Annotated[str | None, typer.Option("--variant", help="legacy, seed, mainline, ...")]

show_app = typer.Typer(no_args_is_help=True, help="Folio dumps and address-space pictures.")


def _fail(exc: ScenarioError) -> None:
    sys.stderr.write(f"{exc}\n")
    raise typer.Exit(2)


def proc_command(
    file: FileArg,
    name: Annotated[
        str,
        typer.Argument(
            help="smaps, smaps_rollup, status, maps, pagemap, kpagecount, kpageflags, vmstat "
            "or meminfo."
        ),
    ],
    task: Annotated[str | None, typer.Option("--task", help="The task (PID files).")] = None,
    at: AtOpt = None,
    variant: VariantOpt = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="pagemap: the u64 entries of the task's VMA span (from its lowest address); "
            "kpagecount/kpageflags: the entries of --pfn (or the task's PFNs' span).",
        ),
    ] = False,
    pfn: Annotated[
        str | None, typer.Option("--pfn", help="kpage*: FIRST[+COUNT] PFNs (hex with 0x).")
    ] = None,
) -> None:
    """Print /proc/PID/FILE of a task (or /proc/FILE) in Linux 7.1.8's format, after running
    the scenario up to --at. Reading smaps/pagemap splits huge PUDs, as the kernel does."""
    from foliosim import procfs
    from foliosim.views import find_task, run_until

    if name not in procfs.PROC_FILES:
        sys.stderr.write(f"unknown /proc file '{name}' ({', '.join(procfs.PROC_FILES)})\n")
        raise typer.Exit(2)
    try:
        run = run_until(file, at, variant)
        k = run.kernel
        t = find_task(run, task) if task is not None else None
    except ScenarioError as exc:
        _fail(exc)
        return
    if t is None and name not in ("vmstat", "meminfo") and not (pfn and name.startswith("kpage")):
        sys.stderr.write(f"{name} needs --task\n")
        raise typer.Exit(2)
    if name.startswith("kpage") and (pfn or raw):
        ranges = []
        if pfn:
            first_text, _, count_text = pfn.partition("+")
            ranges = [(int(first_text, 0), int(count_text, 0) if count_text else 1)]
        elif t is not None:
            procfs.split_puds_for_walk(k, t)
            found = procfs.task_pfn_ranges(k, t)
            if found:
                ranges = [(found[0][0], found[-1][0] + found[-1][1] - found[0][0])]
        if raw:
            for first, nr in ranges:
                sys.stdout.buffer.write(procfs.kpage_bytes(k, first, nr, name == "kpagecount"))
            return
        from foliosim.procfs.page import render_kpage

        sys.stdout.write(render_kpage(k, ranges, count=name == "kpagecount"))
        return
    if name == "pagemap" and raw:
        assert t is not None
        procfs.split_puds_for_walk(k, t)
        if t.mm.vmas:
            data = procfs.pagemap_bytes(k, t, t.mm.vmas[0].start, t.mm.vmas[-1].end)
            sys.stdout.buffer.write(data)
        return
    sys.stdout.write(procfs.render_proc(k, t, name))


@show_app.command("folio")
def show_folio(
    file: FileArg,
    task: TaskOpt,
    addr: Annotated[str, typer.Option("--addr", help="NAME[+OFF] or a number.")],
    at: AtOpt = None,
    variant: VariantOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """A __dump_folio()-style report (mm/debug.c) of the folio mapped at an address."""
    from foliosim.views import find_task, folio_report, parse_address, run_until

    try:
        run = run_until(file, at, variant)
        t = find_task(run, task)
        address = parse_address(run, addr)
    except ScenarioError as exc:
        _fail(exc)
        return
    report = folio_report(run.kernel, t, address)
    if report is None:
        if json_out:
            print(json.dumps(None))
        else:
            console.print(f"nothing mapped at {address:#x} in {task}")
        raise typer.Exit(1)
    if json_out:
        print(json.dumps({"dump": report.dump, **report.fields}, indent=2))
        return
    console.print(Text(report.dump.rstrip()))
    table = Table(title=f"folio at {address:#x} in {task}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in report.fields.items():
        table.add_row(key, f"{value:#x}" if key in ("pfn", "head") else str(value))
    console.print(table)


@show_app.command("map")
def show_map(
    file: FileArg,
    task: TaskOpt,
    at: AtOpt = None,
    variant: VariantOpt = None,
    plain: Annotated[bool, typer.Option("--plain", help="No colours.")] = False,
) -> None:
    """A task's address space: VMAs and the level mapping each range, then a page-table tree."""
    from foliosim.views import address_space_lines, find_task, ptdump_lines, run_until

    try:
        run = run_until(file, at, variant)
        t = find_task(run, task)
    except ScenarioError as exc:
        _fail(exc)
        return
    k = run.kernel
    out = Console(highlight=False, soft_wrap=True, no_color=plain)
    out.print(Text("address space (█ PUD  ▓ PMD  ▒ PTE  · none  x guard)", style="bold"))
    for text, style in address_space_lines(k, t):
        out.print(Text(text, style=style))
    lines = ptdump_lines(k, t)
    tree = Tree(Text(lines[0], style="bold"))
    stack = [(0, tree)]
    for line in lines[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 3
        while stack and stack[-1][0] > depth:
            stack.pop()
        node = stack[-1][1].add(line.strip().removeprefix("└─ "))
        stack.append((depth + 1, node))
    out.print(tree)


def report_command(
    file: FileArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")],
    variants: Annotated[
        str, typer.Option("--variants", help="Comma-separated variants.")
    ] = "legacy,seed,mainline",
    task: Annotated[
        str | None, typer.Option("--task", help="Task for the address-space pictures.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Lines for pictures, comma-separated (default: "
            "after each task statement that changes the mapping).",
        ),
    ] = None,
) -> None:
    """A self-contained HTML report: the scenario, counter tables per statement, plots per
    variant and address-space pictures."""
    from foliosim.report import build_report

    try:
        html = build_report(
            file,
            [v for v in variants.split(",") if v],
            task,
            [int(x) for x in at.split(",")] if at else None,
        )
    except ScenarioError as exc:
        _fail(exc)
        return
    output.write_text(html)
    console.print(f"wrote {output} ({len(html) // 1024} KiB)")


def register(app: typer.Typer) -> None:
    app.command("proc")(proc_command)
    app.add_typer(show_app, name="show")
    app.command("report")(report_command)
