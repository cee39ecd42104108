"""`foliosim report`: one self-contained HTML page for a scenario.

The page has the scenario text, a counter table per variant (one row per statement: RSS of
every task, refcount and mapcount of the folio at every bound name, the vmstat items that
moved), matplotlib plots of the same series embedded as inline SVG, and address-space
pictures at chosen lines. Nothing is fetched at view time: no scripts, fonts or images
from the network.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text

CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; }
td.src { text-align: left; font-family: monospace; white-space: nowrap; }
tr.fail td { background: #fdd; } tr.warn td.src { color: #a0a; }
.plot svg { max-width: 100%; height: auto; }
.pud { color: #a0a; font-weight: bold; } .pmd { color: #088; font-weight: bold; }
.pte { color: #080; } .none { color: #999; }
"""


def observe(run: Run) -> dict[str, Any]:
    """The counters the report shows, after one statement."""
    from foliosim.procfs.vm import vmstat_values

    k = run.kernel
    row: dict[str, Any] = {}
    for name, task in k.tasks.items():
        if task.exited:
            continue
        row[f"{name}.rss.anon"] = task.mm.rss[1]
        row[f"{name}.rss.file"] = task.mm.rss[0]
        row[f"{name}.rss.shmem"] = task.mm.rss[3]
        for var, addr in run.names.items():
            m = k.lookup(task.mm, addr, peek=True)
            if m is None or m.special:
                continue
            row[f"folio({name},{var}).refcount"] = m.folio.refcount
            row[f"folio({name},{var}).mapcount"] = m.folio.folio_mapcount()
    for item, value in vmstat_values(k).items():
        row[f"vmstat.{item}"] = value
    row["reports"] = len(k.reports.reports)
    return row


def run_variant(
    path: Path, text: str, variant: str
) -> tuple[Run | None, list[dict[str, Any]], str]:
    stmts = parse_text(str(path), text)
    try:
        run = execute(str(path), stmts, variant=variant, observe=observe)
    except ScenarioError:
        raise
    except Exception as exc:  # a model crash under a study variant: show it, keep going
        return None, [], f"{type(exc).__name__}: {exc}"
    return run, run.observations, ""


def _moving_columns(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    out = []
    for key in keys:
        values = {row.get(key) for row in rows}
        if values <= {0, None}:
            continue
        out.append(key)
    return out


def counter_table(run: Run, rows: list[dict[str, Any]], variant: str) -> str:
    cols = _moving_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["line", "statement", *cols])
    body = []
    prev: dict[str, Any] = {}
    for result, row in zip(run.results, rows, strict=True):
        cls = "" if result.ok else " class='fail'"
        cells = [f"<td>{result.line}</td>", f"<td class='src'>{html.escape(result.source)}</td>"]
        for c in cols:
            value = row.get(c, "")
            changed = prev.get(c, "") != value
            shown = html.escape(str(value))
            cells.append(f"<td>{'<b>' + shown + '</b>' if changed else shown}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
        prev = row
    return (
        f"<table id='counters-{html.escape(variant)}' class='counters'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def plot_svg(rows: list[dict[str, Any]], lines: list[int], title: str) -> str:
    """Three panels: RSS (pages), folio refcounts and mapcounts, vmstat items; inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _moving_columns(rows)
    groups = [
        ("RSS (pages)", [c for c in cols if ".rss." in c]),
        ("refcount / mapcount", [c for c in cols if c.startswith("folio(")]),
        ("vmstat", [c for c in cols if c.startswith("vmstat.")]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    xs = list(range(len(rows)))
    for ax, (name, keys) in zip(axes, groups, strict=True):
        ax.set_title(name, fontsize=10)
        for key in keys[:10]:
            ys = [row.get(key) for row in rows]
            ax.step(
                xs,
                [float("nan") if y is None else y for y in ys],
                where="post",
                label=key,
                linewidth=1.2,
            )
        ax.set_xticks(xs)
        ax.set_xticklabels([str(n) for n in lines], fontsize=7, rotation=90)
        ax.set_xlabel("scenario line", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        if keys:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def picture_html(path: Path, line: int, task: str | None, variant: str) -> str:
    from foliosim.views import human as size
    from foliosim.views import level_runs, run_until

    run = run_until(path, line, variant)
    k = run.kernel
    tasks = [task] if task else [n for n, t in k.tasks.items() if not t.exited]
    parts = []
    for name in tasks:
        t = k.tasks.get(name)
        if t is None or t.exited:
            continue
        rows = [f"<b>{html.escape(name)}</b> (pid {t.pid})"]
        for vma in t.mm.vmas:
            rows.append(html.escape(vma.describe()))
            for r in level_runs(k, vma):
                label = f" {html.escape(r.label)}" if r.label else ""
                rows.append(
                    f"  <span class='{r.level if r.level != 'guard' else 'none'}'>"
                    f"{r.start:012x}-{r.end:012x} {r.level:<5} {size(r.end - r.start):>6}"
                    f"{label}</span>"
                )
        if not t.mm.vmas:
            rows.append("  (no VMAs)")
        parts.append("<pre>" + "\n".join(rows) + "</pre>")
    return f"<h3>after line {line} ({html.escape(variant)})</h3>" + "".join(parts)


def build_report(
    path: Path, variants: list[str], task: str | None = None, at: list[int] | None = None
) -> str:
    """The whole page as a string."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {exc.strerror}") from None
    stmts = parse_text(str(path), text)
    sections = []
    pic_variant = "mainline" if "mainline" in variants else variants[0]
    for variant in variants:
        run, rows, error = run_variant(path, text, variant)
        sections.append(
            f"<h2 id='variant-{html.escape(variant)}'>variant {html.escape(variant)}</h2>"
        )
        if run is None:
            sections.append(f"<p class='error'>the model stopped: {html.escape(error)}</p>")
            continue
        verdict = "passed" if not run.failed else "failed"
        sections.append(
            f"<p>scenario {verdict}; {len(run.kernel.reports.reports)} kernel report(s)</p>"
        )
        for rep in run.kernel.reports.reports:
            sections.append(f"<pre>line {rep.line}: {html.escape(rep.render())}</pre>")
        lines = [r.line for r in run.results]
        sections.append(
            f"<div class='plot'>{plot_svg(rows, lines, f'{path.name} — {variant}')}</div>"
        )
        sections.append(counter_table(run, rows, variant))
    if at is None:
        mapping = {
            "mmap",
            "munmap",
            "read",
            "write",
            "madvise",
            "fork",
            "exit",
            "mremap",
            "mprotect",
        }
        task_lines = [s.line for s in stmts if s.task is not None and s.kind in mapping]
        at = sorted(set(task_lines))[-4:] if task_lines else []
    pictures = "".join(picture_html(path, line, task, pic_variant) for line in at)
    numbered = "\n".join(f"{i:>3}  {html.escape(t)}" for i, t in enumerate(text.splitlines(), 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>foliosim report: {html.escape(path.name)}</title>
<style>{CSS}</style></head>
<body>
<h1>foliosim report: {html.escape(path.name)}</h1>
<p>Linux 7.1.8 model (<code>mainline</code>) with variants {html.escape(", ".join(variants))}.
Bold cells changed at that statement.</p>
<h2>scenario</h2>
<pre id="scenario">{numbered}</pre>
{"".join(sections)}
<h2 id="pictures">address space</h2>
{pictures}
</body></html>
"""
