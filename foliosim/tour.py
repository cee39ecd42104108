"""`foliosim tour`: guided walks through built-in scenarios, counters after each step.

The main walk is the seed's: a 1 GiB device-dax PUD fault, fork, a partial zap that splits the
PUD, refault and unmap — run under mainline, seed and legacy side by side, so the PUD mapping
that patch 07 made refcounted (folio reference, PUD rmap, RSS) is visible next to the old
special devmap entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from foliosim.scenario.expect import show
from foliosim.scenario.parser import Query
from foliosim.scenario.runner import execute
from foliosim.scenario.statements import parse_text


@dataclass
class Step:
    title: str
    explain: str
    statements: list[str]


DAX_SETUP = ["devdax dax0 size=4G align=1G", "task A", "A: m = mmap 1G rw shared fd=dax0"]
DAX_QUERIES = [
    "level(A, m)",
    "A.rss.file",
    "folio(A, m).refcount",
    "folio(A, m).mapcount",
    "folio(A, m).entire_mapcount",
    "folio(A, m).nr_pages",
    "level(B, m)",
    "B.rss.file",
    "vmstat.nr_mapped",
    "vmstat.nr_file_pmdmapped",
    "vmstat.thp_split_pud",
    "free(dax0)",
]
DAX_STEPS = [
    Step(
        "mmap",
        "A maps 1 GiB of a device-dax instance aligned to 1 GiB: nothing is mapped yet; "
        "every page of the device is idle (refcount 1).",
        [],
    ),
    Step(
        "PUD fault",
        "A writes 4K. dev_dax_huge_fault(PUD_ORDER) -> vmf_insert_folio_pud "
        "(seed: dax_insert_pfn_pud): one PUD maps the whole 1 GiB folio. After the series the "
        "mapping takes a folio reference, a PUD rmap (entire mapcount 1) and 262144 pages of "
        "RssFile; legacy inserts a special devmap PUD with none of them. The seed sent the PUD "
        "rmap through the PMD branch, so NR_FILE_PMDMAPPED moved by HPAGE_PUD_NR.",
        ["A: write m 4K"],
    ),
    Step(
        "fork",
        "A forks B. A shared DAX mapping has no anon_vma, so vma_needs_copy() is "
        "false: B starts with nothing mapped.",
        ["A: fork B"],
    ),
    Step(
        "child refault",
        "B reads: B faults its own PUD, a second reference and mapping of the "
        "same folio (entire mapcount 2).",
        ["B: read m 4K"],
    ),
    Step(
        "partial zap",
        "A drops 2 MiB inside the PUD (MADV_DONTNEED): zap_pud_range cannot zap "
        "part of a PUD, so __split_huge_pud drops the whole entry (thp_split_pud +1): rmap, "
        "RSS and the reference go. The seed put the folio before reading it for the RSS "
        "counter (fixed upstream by 40990c87a26e): the ownership checker reports it.",
        ["A: madvise m+2M 2M DONTNEED"],
    ),
    Step("refault", "A touches the range again and refaults the whole PUD.", ["A: read m 4K"]),
    Step(
        "zap",
        "Both unmap: zap_huge_pud removes the PUD rmap, the RSS and frees the reference "
        "through the mmu_gather at PUD size. The device is idle again.",
        ["A: munmap m 1G", "B: munmap m 1G"],
    ),
]

ANON_SETUP = ["config thp=madvise", "task A", "A: m = mmap 2M"]
ANON_QUERIES = [
    "level(A, m)",
    "A.rss.anon",
    "folio(A, m).refcount",
    "folio(A, m).entire_mapcount",
    "page(A, m+4K).mapcount",
    "level(B, m)",
    "B.rss.anon",
    "vmstat.thp_fault_alloc",
    "vmstat.thp_split_pmd",
    "vmstat.thp_deferred_split_page",
    "vmstat.nr_anon_transparent_hugepages",
]
ANON_STEPS = [
    Step(
        "read",
        "A reads a 2 MiB MADV_HUGEPAGE range: the huge zero PMD, no RSS.",
        ["A: madvise m 2M HUGEPAGE", "A: read m 4K"],
    ),
    Step(
        "write",
        "A writes: do_huge_zero_wp_pmd allocates a THP in place (thp_fault_alloc).",
        ["A: write m 4K"],
    ),
    Step("fork", "copy_huge_pmd shares the THP: refcount 2, entire mapcount 2.", ["A: fork B"]),
    Step(
        "COW",
        "B writes one page: B's PMD is split (thp_split_pmd) and only that 4K page is "
        "copied; A keeps its PMD.",
        ["B: write m+4K 4K"],
    ),
    Step(
        "partial unmap",
        "A unmaps 4K inside its PMD: split, and the folio is queued for "
        "deferred split once a page is mapped by nobody.",
        ["A: munmap m+4K 4K"],
    ),
]


def _walk(name: str) -> tuple[list[str], list[Step], list[str], list[str]]:
    if name == "anon-thp":
        return ANON_SETUP, ANON_STEPS, ANON_QUERIES, ["mainline"]
    return DAX_SETUP, DAX_STEPS, DAX_QUERIES, ["mainline", "seed", "legacy"]


def collect(name: str, variants: list[str]) -> list[dict[str, object]]:
    """Run the walk once per variant; per step, every query's value under each variant."""
    setup, steps, queries, _ = _walk(name)
    lines = list(setup)
    marks = []
    for step in steps:
        lines.extend(step.statements)
        marks.append(len(lines))
        lines.extend(f"print {q}" for q in queries)
    text = "\n".join(lines) + "\n"
    out: list[dict[str, object]] = [
        {"step": s.title, "explain": s.explain, "values": {}, "reports": {}} for s in steps
    ]
    for variant in variants:
        run = execute("<tour>", parse_text("<tour>", text), variant=variant)
        printed = [r for r in run.results if r.source.startswith("print ")]
        for i, _step in enumerate(steps):
            chunk = printed[i * len(queries) : (i + 1) * len(queries)]
            values = out[i]["values"]
            assert isinstance(values, dict)
            for q, r in zip(queries, chunk, strict=True):
                values.setdefault(q, {})[variant] = next(iter(r.values.values()))
            first = marks[i] - len(steps[i].statements) + 1
            reps = [
                rep.render() for rep in run.kernel.reports.reports if first <= rep.line <= marks[i]
            ]
            reports = out[i]["reports"]
            assert isinstance(reports, dict)
            reports[variant] = reps
    return out


def run_tour(console: Console, walk: str, variant: str | None, json_out: bool) -> int:
    if walk not in ("dax-pud", "anon-thp"):
        console.print(f"unknown walk '{walk}' (dax-pud, anon-thp)")
        return 2
    _, _, queries, variants = _walk(walk)
    if variant is not None:
        variants = [variant]
    data = collect(walk, variants)
    if json_out:
        print(
            json.dumps({"walk": walk, "variants": variants, "steps": data}, indent=2, default=str)
        )
        return 0
    title = (
        "The seed's PUD mapping: 1 GiB device-dax, Linux 7.1.8 (mainline) vs v1 patch 07 "
        "(seed) vs 6.1 (legacy)"
        if walk == "dax-pud"
        else "Anonymous THP walk (mainline)"
    )
    console.print(Panel(title, style="bold"))
    for i, step in enumerate(data, start=1):
        console.print(f"\n[bold]Step {i}: {step['step']}[/bold]")
        console.print(str(step["explain"]), style="dim")
        table = Table(show_header=True, header_style="bold")
        table.add_column("query")
        for v in variants:
            table.add_column(v, justify="right")
        values = step["values"]
        assert isinstance(values, dict)
        for q in queries:
            row = [show(values[q].get(v)) for v in variants]
            style = "yellow" if len(set(row)) > 1 else ""
            table.add_row(q, *row, style=style)
        console.print(table)
        reports = step["reports"]
        assert isinstance(reports, dict)
        for v in variants:
            for rep in reports.get(v, []):
                console.print(f"[magenta]{v}: {rep}[/magenta]")
    console.print(
        "\nRows in yellow differ between variants. Run a scenario yourself: "
        "[bold]foliosim run FILE[/bold]; compare variants: [bold]foliosim diff FILE[/bold]."
    )
    return 0


__all__ = ["Query", "collect", "run_tour"]
