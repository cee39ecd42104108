"""Studies: the review of patch 07 answered by measurement on the model.

David Hildenbrand's review of "huge_memory: Allow mappings of PUD sized pages" (v1, July 2024)
asked whether DAX needs mapcounts at all, pointed out that a folio is mapped by one PUD or by
PTEs but never PUD and PMD mixed, that per-page mapcounts defeat the device-dax vmemmap
optimisation, and that the large mapcount is what keeps folio_mapcount() cheap. Each question
has a function here that runs the model and returns plain data; study_report.py renders it.

(a) ``refcount_only_study``: DAX scenarios under ``mainline`` and ``refcount-only``.
(b) ``mixed_pud_pmd_study``: one folio mapped by a PUD in one mm and a PMD in another.
(c) ``vmemmap_study``: memmap bytes of a device and the struct page aliasing under the
    optimisation.
(d) ``mapcount_cost_study``: counter reads needed by folio_mapcount with and without
    _large_mapcount.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foliosim.kernel import dax, rmap
from foliosim.kernel.kernel import Kernel
from foliosim.kernel.physmem import Folio
from foliosim.kernel.rmap import folio_maybe_mapped_shared
from foliosim.scenario.queries import page_field, resolve
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text

# ---- (a) refcount-only ---------------------------------------------------------------------

# Each scenario names the (task, address name) pairs probed after every statement.
SCENARIOS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "devdax-1g-pud": (
        """
devdax dax0 size=2G align=1G
task A
A: m = mmap 1G rw shared fd=dax0
A: write m 4K
""",
        [("A", "m")],
    ),
    "devdax-2m-pmd": (
        """
devdax dax0 size=1G align=2M
task A
A: m = mmap 4M rw shared fd=dax0
A: write m 2M
""",
        [("A", "m")],
    ),
    "devdax-4k-pte": (
        """
devdax dax0 size=1G align=4K
task A
A: m = mmap 64K rw shared fd=dax0
A: write m 4K
""",
        [("A", "m")],
    ),
    "devdax-1g-fork-refault": (
        """
devdax dax0 size=2G align=1G
task A
A: m = mmap 1G rw shared fd=dax0
A: write m 4K
A: fork B
B: write m 4K
B: munmap m 1G
""",
        [("A", "m"), ("B", "m")],
    ),
    "devdax-2m-two-tasks": (
        """
devdax dax0 size=1G align=2M
task A
task B
A: m = mmap 2M rw shared fd=dax0
B: n = mmap 2M rw shared fd=dax0
A: write m 4K
B: write n 4K
""",
        [("A", "m"), ("B", "n")],
    ),
    "fsdax-pte": (
        """
fsdax pmem0 size=1G
file f size=64K fs=pmem0 filled
task A
A: m = mmap 64K rw shared fd=f
A: write m 4K
""",
        [("A", "m")],
    ),
    "fsdax-pmd-two-tasks": (
        """
fsdax pmem0 size=1G
file f size=4M fs=pmem0 filled
task A
task B
A: m = mmap 4M rw shared fd=f align=2M
B: n = mmap 4M rw shared fd=f align=2M
A: write m 2M
B: read n 2M
""",
        [("A", "m"), ("B", "n")],
    ),
    "fsdax-truncate-mapped": (
        """
fsdax pmem0 size=1G
file f size=4M fs=pmem0 filled
task A
A: m = mmap 4M rw shared fd=f align=2M
A: write m 4M
truncate f 0
""",
        [("A", "m")],
    ),
    "fsdax-pin-truncate": (
        """
fsdax pmem0 size=1G
file f size=64K fs=pmem0 filled
task A
A: m = mmap 64K rw shared fd=f
A: write m 4K
A: p = pin m 4K
truncate f 0
unpin p
""",
        [("A", "m")],
    ),
    "devdax-2m-pin": (
        """
devdax dax0 size=1G align=2M
task A
A: m = mmap 2M rw shared fd=dax0
A: write m 4K
A: p = pin m 4K
A: munmap m 2M
unpin p
""",
        [("A", "m")],
    ),
}

QUERY_FIELDS = (
    "refcount",
    "mapcount",
    "entire_mapcount",
    "large_mapcount",
    "folio_mapped",
    "kpagecount",
    "precise_mapcount",
    "maybe_mapped_shared",
    "dax_busy_page",
    "smaps_shared",
    "rss.file",
    "vmstat.nr_mapped",
)


def dax_busy_page(folio: Folio) -> bool:
    """dax_busy_page() (fs/dax.c, 7.1.8): busy when folio_ref_count - folio_mapcount != 0."""
    return folio.refcount - folio.folio_mapcount() != 0


def smaps_account_shared(k: Kernel, folio: Folio, page: int) -> bool:
    """The sharing decision of smaps_account() (fs/proc/task_mmu.c, 7.1.8) for one present
    page: refcount 1 means mapped once (private); otherwise, with CONFIG_PAGE_MAPCOUNT, the
    page is shared when folio_precise_page_mapcount >= 2 (else folio_maybe_mapped_shared)."""
    if folio.refcount == 1:
        return False
    if k.config.page_mapcount:
        return folio.precise_page_mapcount(page) >= 2
    return folio_maybe_mapped_shared(k, folio)


def probe(run: Run, task_name: str, name: str) -> dict[str, Any]:
    """The queried counters of the folio and page that task_name maps at address ``name``."""
    k = run.kernel
    values: dict[str, Any] = dict.fromkeys(QUERY_FIELDS)
    values["vmstat.nr_mapped"] = k.vmstat.counters.get("nr_mapped", 0)
    task = k.tasks.get(task_name)
    addr = run.names.get(name)
    if task is None or task.exited or addr is None:
        return values
    values["rss.file"] = task.mm.rss[0]
    m = k.lookup(task.mm, addr, peek=True)
    if m is None or m.special:
        return values
    folio, page = resolve(k, m.folio, m.page)
    values.update(
        refcount=folio.refcount,
        mapcount=folio.folio_mapcount(),
        entire_mapcount=folio.entire_mapcount if folio.large else None,
        large_mapcount=folio.large_mapcount if folio.large else None,
        folio_mapped=int(folio.folio_mapped()),
        kpagecount=page_field(k, folio, page, "mapcount"),
        precise_mapcount=page_field(k, folio, page, "precise_mapcount"),
        maybe_mapped_shared=int(folio_maybe_mapped_shared(k, folio)),
        dax_busy_page=int(dax_busy_page(folio)) if folio.kind == "fsdax" else None,
        smaps_shared=int(smaps_account_shared(k, folio, page)),
    )
    return values


@dataclass
class ScenarioOutcome:
    name: str
    steps: list[str]
    values: dict[str, list[dict[str, dict[str, Any]]]]  # variant -> step -> probe -> fields
    invariants: dict[str, dict[str, int]]  # variant -> invariant -> first line it broke
    outputs: dict[str, list[str]]  # variant -> errno/signal lines of the run
    differing: dict[str, list[str]]  # probe -> fields that differ at some step

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_scenario(
    name: str, variants: tuple[str, str] = ("mainline", "refcount-only")
) -> ScenarioOutcome:
    text, probes = SCENARIOS[name]
    path = f"<study:{name}>"
    stmts = parse_text(path, text.lstrip())
    values: dict[str, list[dict[str, dict[str, Any]]]] = {}
    invariants: dict[str, dict[str, int]] = {}
    outputs: dict[str, list[str]] = {}
    steps: list[str] = []
    for variant in variants:
        seen: dict[str, int] = {}

        def observe(run: Run, seen: dict[str, int] = seen) -> dict[str, Any]:
            for v in run.violations:
                seen.setdefault(v.invariant, run.results[-1].line if run.results else 0)
            return {f"{t}:{n}": probe(run, t, n) for t, n in probes}

        run = execute(path, stmts, variant=variant, check_each=True, observe=observe)
        values[variant] = run.observations
        invariants[variant] = seen
        outputs[variant] = [o for r in run.results for o in r.output if "invariant" not in o]
        steps = [r.source for r in run.results]
    differing: dict[str, list[str]] = {}
    base, other = variants[0], variants[1]
    for key in (f"{t}:{n}" for t, n in probes):
        fields = [
            f
            for f in QUERY_FIELDS
            if any(a[key][f] != b[key][f] for a, b in zip(values[base], values[other], strict=True))
        ]
        differing[key] = fields
    return ScenarioOutcome(name, steps, values, invariants, outputs, differing)


def refcount_only_study() -> list[ScenarioOutcome]:
    return [run_scenario(name) for name in SCENARIOS]


# ---- (b) one folio mapped by a PUD and by a PMD -------------------------------------------------
def mixed_pud_pmd_study() -> dict[str, Any]:
    """Map a 1 GiB device-dax folio by a PUD in A, then try to map its first 2 MiB by a PMD
    in B through each layer the kernel has: the device's fault handler, vmf_insert_folio_pmd,
    folio_add_file_rmap_pmd, and finally forcing the entry and the PMD-branch counters in."""
    from foliosim.check import check_all
    from foliosim.kernel.pgtable import Leaf

    text = """
devdax dax0 size=2G align=1G
task A
task B
A: m = mmap 1G rw shared fd=dax0
A: write m 4K
B: n = mmap 2M rw shared fd=dax0
B: o = mmap 1G rw shared fd=dax0
B: munmap o 2M
"""
    path = "<study:mixed>"
    run = execute(path, parse_text(path, text.lstrip()), variant="mainline", check_each=True)
    k = run.kernel
    out: dict[str, Any] = {
        "device_level": [{"statement": r.source, "output": list(r.output)} for r in run.results[5:]]
    }
    a, b = k.tasks["A"], k.tasks["B"]
    ma = k.lookup(a.mm, run.names["m"])
    assert ma is not None
    folio = ma.folio
    vma_b = b.mm.find_vma(run.names["o"])
    assert vma_b is not None and vma_b.file is not None
    base = vma_b.start

    def reports_since(n: int) -> list[str]:
        return [r.render() for r in k.reports.reports[n:]]

    def counters() -> dict[str, int]:
        return {
            "refcount": folio.refcount,
            "entire_mapcount": folio.entire_mapcount,
            "large_mapcount": folio.large_mapcount,
            "nr_mapped": k.vmstat.counters.get("nr_mapped", 0),
            "nr_file_pmdmapped": k.vmstat.counters.get("nr_file_pmdmapped", 0),
        }

    device = vma_b.file
    assert isinstance(device, dax.DaxDevice)
    out["dev_dax_huge_fault_pmd"] = device.huge_fault(k, vma_b, base, True, k.geometry.pmd_order)
    n0 = len(k.reports.reports)
    before = counters()
    result = dax.vmf_insert_folio_pmd(k, vma_b, base, folio, True)
    out["vmf_insert_folio_pmd"] = {
        "result": result,
        "reports": reports_since(n0),
        "counters_before": before,
        "counters_after": counters(),
    }
    n1 = len(k.reports.reports)
    ok = rmap.__folio_add_rmap(k, folio, 0, k.config.pmd_nr, vma_b, rmap.Level.PMD)
    out["folio_add_file_rmap_pmd"] = {
        "accepted": ok,
        "reports": reports_since(n1),
        "counters_after": counters(),
    }
    # Force it: what __folio_add_rmap's PMD branch would do had the check not stopped it.
    k.folio_get(folio)
    folio.entire_mapcount += 1
    rmap.folio_add_return_large_mapcount(folio, 1, vma_b)
    k.vmstat.mod("nr_file_pmdmapped", folio.nr_pages)
    b.mm.rss[0] += k.config.pmd_nr
    b.mm.pgtables.pmd_leaves[base >> k.geometry.pmd_shift] = Leaf(folio, write=True, dirty=True)
    far = 1000  # a page A maps through its PUD and B does not map at all
    out["forced"] = {
        "counters_after": counters(),
        "precise_mapcount_page_1000": folio.precise_page_mapcount(far),
        "entries_mapping_page_1000": sum(
            1 for r in k.rmap_walk(folio) if r.page <= far < r.page + r.nr
        ),
        "invariants": sorted({v.invariant for v in check_all(k)}),
        "violations": [v.render().splitlines()[0] for v in check_all(k)],
    }
    return out


# ---- (c) vmemmap ---------------------------------------------------------------------------
PAGE_SIZE = 4096
STRUCT_PAGE = 64
VMEMMAP_RESERVE_NR = 2


def __vmemmap_can_optimize(nr_pages: int, altmap: bool = False) -> bool:
    """__vmemmap_can_optimize() (include/linux/mm.h, 7.1.8): no altmap, a power-of-two struct
    page and more than VMEMMAP_RESERVE_NR vmemmap pages per compound page."""
    return not altmap and (nr_pages * STRUCT_PAGE) // PAGE_SIZE > VMEMMAP_RESERVE_NR


def compound_nr_pages(nr_pages: int, optimised: bool) -> int:
    """compound_nr_pages() (mm/mm_init.c, 7.1.8): struct pages memmap_init_compound really
    initialises per compound page: all of them, or the two reserved vmemmap pages' worth."""
    if not optimised or not __vmemmap_can_optimize(nr_pages):
        return nr_pages
    return VMEMMAP_RESERVE_NR * (PAGE_SIZE // STRUCT_PAGE)


def vmemmap_frame_of(index: int, nr_pages: int, optimised: bool) -> int:
    """The physical vmemmap page holding struct page ``index`` of a compound page, as
    vmemmap_populate_compound_pages() (mm/sparse-vmemmap.c, 7.1.8) lays it out: frame 0 for
    the head's vmemmap page, frame 1 for the first tail vmemmap page, and every later vmemmap
    page of the compound page mapped to frame 1 again."""
    frame = index * STRUCT_PAGE // PAGE_SIZE
    if optimised and __vmemmap_can_optimize(nr_pages):
        return min(frame, VMEMMAP_RESERVE_NR - 1)
    return frame


def vmemmap_study(device_bytes: int = 1 << 40) -> dict[str, Any]:
    rows = []
    for align in (4096, 2 << 20, 1 << 30):
        order = (align // PAGE_SIZE).bit_length() - 1
        nr_pages = device_bytes // PAGE_SIZE
        pgmap = dax.DevPagemap("generic", 0, nr_pages, order, 1, 12)
        per_folio = 1 << order
        frames = {vmemmap_frame_of(i, per_folio, True) for i in range(per_folio)}
        # Write a PTE mapcount into one tail page's slot and count the pages that read it back.
        slot_bytes = {}
        victim = min(per_folio - 1, 200)
        for i in range(per_folio):
            slot_bytes[i] = (vmemmap_frame_of(i, per_folio, True), i * STRUCT_PAGE % PAGE_SIZE)
        aliases = sum(1 for i in range(per_folio) if slot_bytes[i] == slot_bytes[victim]) - 1
        rows.append(
            {
                "align": align,
                "folio_pages": per_folio,
                "folios": nr_pages >> order,
                "can_optimize": __vmemmap_can_optimize(per_folio),
                "plain_bytes": pgmap.vmemmap_bytes(False),
                "optimised_bytes": pgmap.vmemmap_bytes(True),
                "vmemmap_pages_per_folio": (per_folio * STRUCT_PAGE + PAGE_SIZE - 1) // PAGE_SIZE,
                "distinct_vmemmap_pages_per_folio": len(frames),
                "struct_pages_initialised": compound_nr_pages(per_folio, True),
                "pages_aliasing_page_200": aliases,
            }
        )
    return {"device_bytes": device_bytes, "rows": rows}


# ---- (d) folio_mapcount cost ---------------------------------------------------------------
class CountingFolio:
    """Read access to a model folio's mapcount fields that counts the reads."""

    def __init__(self, folio: Folio) -> None:
        self.folio = folio
        self.reads = 0

    def large_mapcount(self) -> int:
        self.reads += 1
        return self.folio.large_mapcount

    def entire_mapcount(self) -> int:
        self.reads += 1
        return self.folio.entire_mapcount

    def page_mapcount(self, i: int) -> int:
        self.reads += 1
        return self.folio.page_mapcount_of(i)


def folio_mapcount(f: CountingFolio) -> int:
    """folio_mapcount() for a large folio (include/linux/mm.h, 7.1.8): one read of
    _large_mapcount, which counts every PTE, PMD and PUD mapping of the folio."""
    return f.large_mapcount()


def folio_mapcount_summed(f: CountingFolio) -> int:
    """The scheme before _large_mapcount existed: the entire mapcount plus every page's own
    mapcount, nr_pages + 1 reads."""
    total = f.entire_mapcount()
    for i in range(f.folio.nr_pages):
        total += f.page_mapcount(i)
    return total


def mapcount_cost_study() -> list[dict[str, Any]]:
    text = "file g size=4K fs=pagecache\ntask A\nA: m = mmap 1G rw shared fd=g\n"
    run = execute("<study:cost>", parse_text("<study:cost>", text), variant="mainline")
    k = run.kernel
    vma = k.tasks["A"].mm.find_vma(run.names["m"])
    assert vma is not None
    geo = k.geometry
    cases = (
        ("1G folio, one PUD", geo.pud_order, "pud"),
        ("1G folio, every page by a PTE", geo.pud_order, "pte"),
        ("2M folio, one PMD", geo.pmd_order, "pmd"),
        ("2M folio, every page by a PTE", geo.pmd_order, "pte"),
    )
    rows = []
    for label, order, how in cases:
        folio = Folio(1 << 30, order, kind="ram")
        if how == "pud":
            rmap.__folio_add_rmap(k, folio, 0, folio.nr_pages, vma, rmap.Level.PUD)
        elif how == "pmd":
            rmap.folio_add_file_rmap_pmd(k, folio, vma)
        else:
            rmap.folio_add_file_rmap_ptes(k, folio, 0, folio.nr_pages, vma)
        fast, slow = CountingFolio(folio), CountingFolio(folio)
        rows.append(
            {
                "case": label,
                "nr_pages": folio.nr_pages,
                "large_value": folio_mapcount(fast),
                "large_reads": fast.reads,
                "summed_value": folio_mapcount_summed(slow),
                "summed_reads": slow.reads,
            }
        )
    return rows
