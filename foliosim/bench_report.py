"""Printing `foliosim bench` results: a Rich table or JSON."""

from __future__ import annotations

import datetime
import json

from rich.console import Console
from rich.table import Table

from foliosim.bench import REPEATS, Result, machine


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(results: list[Result], json_out: bool, console: Console) -> None:
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if json_out:
        payload = {
            "machine": machine(),
            "date": when,
            "repeats": REPEATS,
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(payload, indent=2))
        return
    title = f"foliosim bench — one run (anon, split, DAX rows: best of {REPEATS}), {when}"
    table = Table(title=f"{title}\n{machine()}")
    table.add_column("workload")
    table.add_column("size")
    table.add_column("model", justify="right")
    table.add_column("per-page", justify="right")
    table.add_column("kernel", justify="right")
    table.add_column("model/kernel", justify="right")
    table.add_column("per-page/model", justify="right")
    table.add_column("peak MiB", justify="right")
    table.add_column("note")
    for r in results:
        peak = "—" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}"
        table.add_row(
            r.name,
            r.detail,
            _secs(r.model_s),
            _secs(r.perpage_s),
            _secs(r.kernel_s),
            _ratio(r.vs_kernel),
            _ratio(r.vs_perpage),
            peak,
            r.note,
        )
    if not console.is_terminal:  # piped or redirected: Rich would wrap at 80 columns
        console = Console(highlight=False, width=180)
    console.print(table)
