"""What `foliosim proc`, `show folio` and `show map` print: a scenario run up to a line, folio
dumps in mm/debug.c's format, an address-space picture and a ptdump-like page-table tree."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from foliosim.scenario.parser import ScenarioError, Stmt, size_value
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel, Task
    from foliosim.kernel.mm import VMA
    from foliosim.kernel.pgtable import Leaf
    from foliosim.kernel.physmem import Folio


def run_until(path: Path, at: int | None, variant: str | None = None) -> Run:
    """Run the scenario in ``path`` up to and including line ``at`` (all of it when None)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(str(path), 1, 1, f"cannot read: {exc.strerror}") from None
    stmts: list[Stmt] = parse_text(str(path), text)
    if at is not None:
        stmts = [s for s in stmts if s.line <= at]
    return execute(str(path), stmts, variant=variant)


def find_task(run: Run, name: str) -> Task:
    task = run.kernel.tasks.get(name)
    if task is None:
        raise ScenarioError(run.path, 1, 1, f"no task '{name}' at that point of the scenario")
    return task


def parse_address(run: Run, text: str) -> int:
    """NAME, NAME+SIZE, NAME-SIZE or a number, as in scenario files."""
    number = size_value(text)
    if number is not None:
        return number
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(.+))?$", text)
    if not m or m.group(1) not in run.names:
        raise ScenarioError(run.path, 1, 1, f"unknown address '{text}'")
    offset = size_value(m.group(3)) if m.group(2) else 0
    if offset is None:
        raise ScenarioError(run.path, 1, 1, f"bad offset in '{text}'")
    return run.names[m.group(1)] + (offset if m.group(2) != "-" else -offset)


# ---- __dump_folio -----------------------------------------------------------------------------
# enum pageflags (include/linux/page-flags.h, 7.1.8), bit -> name as %pGp prints it.
PG_NAMES = (
    (0, "locked"),
    (2, "referenced"),
    (3, "uptodate"),
    (4, "dirty"),
    (5, "lru"),
    (6, "head"),
    (13, "reserved"),
    (17, "swapbacked"),
)
ZONE_NORMAL = 2
ZONE_DEVICE = 4  # DMA, DMA32, NORMAL, MOVABLE, DEVICE on x86-64


def _hashed(obj: object) -> str:
    """%p prints hashed pointers: a stable 16-digit stand-in derived from the object's name."""
    if obj is None:
        return "0000000000000000"
    return f"{zlib.crc32(repr(getattr(obj, 'name', obj)).encode()):016x}"


def folio_pg_flags(folio: Folio) -> int:
    """folio->flags' PG_* bits as the model knows them (uptodate as in procfs/page.py)."""
    bits = {
        2: folio.referenced,
        3: folio.anon or folio.mapping is not None or folio.zone_device,
        4: folio.dirty,
        5: folio.lru,
        6: folio.large,
        13: folio.reserved,
        17: folio.swapbacked,
    }
    return sum(1 << bit for bit, on in bits.items() if on)


def __dump_folio(k: Kernel, folio: Folio, idx: int = 0) -> str:
    """__dump_folio() (mm/debug.c, 7.1.8) as dump_page() prints it for page ``idx`` of the
    folio: the page line (that page's own mapcount, folio_mapping(), which is NULL for anon),
    the head line for large folios, the flags line with %pGp decoding (node and zone fields;
    the raw value shows PG_* bits only). The raw struct page hex dump is left out."""
    mapping = None if folio.anon else folio.mapping
    own = 0
    if folio.large:
        if k.config.page_mapcount and folio.page_mapcounts is not None:
            own = int(folio.page_mapcounts[idx])
    else:
        own = folio.mapcount_small
    lines = [
        f"page: refcount:{folio.refcount} mapcount:{own} mapping:{_hashed(mapping)} "
        f"index:{folio.index + idx:#x} pfn:{folio.pfn + idx:#x}"
    ]
    if folio.large:
        nr_mapped = folio.folio_nr_pages_mapped() if k.config.page_mapcount else 0
        lines.append(
            f"head: order:{folio.order} mapcount:{folio.folio_mapcount()} "
            f"entire_mapcount:{folio.entire_mapcount} nr_pages_mapped:{nr_mapped} "
            f"pincount:{folio.pincount}"
        )
    if folio.anon:
        kind = "anon "
    else:
        kind = ""
        if mapping is not None:
            name = getattr(mapping, "name", "?")
            lines.append(f'aops:{_hashed(type(mapping).__name__)} ino:2 dentry name(?):"{name}"')
    value = folio_pg_flags(folio)
    names = [name for bit, name in PG_NAMES if value >> bit & 1]
    zone = ZONE_DEVICE if folio.zone_device else ZONE_NORMAL
    names += ["node=0", f"zone={zone}"]
    lines.append(f"{kind}flags: {value:#x}({'|'.join(names)})")
    return "\n".join(lines) + "\n"


@dataclass
class FolioReport:
    """Everything `show folio` prints: the dump and the counters by their kernel names."""

    dump: str
    fields: dict[str, int | str]


def folio_report(k: Kernel, task: Task, addr: int) -> FolioReport | None:
    """The folio mapped at addr in task (None when nothing is mapped there)."""
    from foliosim.scenario.queries import resolve

    m = k.lookup(task.mm, addr, peek=True)
    if m is None:
        return None
    folio, page = resolve(k, m.folio, m.page)
    fields: dict[str, int | str] = {
        "level": m.level,
        "pfn": folio.pfn + page,
        "head": folio.pfn,
        "order": folio.order,
        "refcount": folio.refcount,
        "mapcount": folio.folio_mapcount(),
        "mapping": "anon" if folio.anon else str(getattr(folio.mapping, "name", "NULL")),
        "index": folio.index + page,
    }
    if folio.large:
        fields.update(
            entire_mapcount=folio.entire_mapcount,
            large_mapcount=folio.large_mapcount,
            nr_pages_mapped=folio.folio_nr_pages_mapped(),
            pincount=folio.pincount,
        )
    fields["flags"] = "|".join(folio.flag_names()) or "0"
    return FolioReport(__dump_folio(k, folio, page), fields)


# ---- pictures ---------------------------------------------------------------------------------
@dataclass
class Run_:
    """A run of consecutive pages of one VMA mapped at one level (or not mapped)."""

    start: int
    end: int
    level: str  # "pte", "pmd", "pud", "none", "guard"
    label: str


def level_runs(k: Kernel, vma: VMA) -> list[Run_]:
    """The VMA cut into runs by the level that maps each page, consecutive leaves of one
    level merged (a 1 GiB range of PTEs is one run, not 262144)."""
    from foliosim.kernel.pgtable import PTE_MARKER_GUARD

    geo = k.geometry
    pgt = vma.mm.pgtables
    pieces: list[tuple[int, int, str, str]] = []
    addr = vma.start
    while addr < vma.end:
        pud_no = addr >> geo.pud_shift
        pmd_no = addr >> geo.pmd_shift
        if pud_no in pgt.pud_leaves:
            stop = min(vma.end, (pud_no + 1) << geo.pud_shift)
            leaf = pgt.pud_leaves[pud_no]
            pieces.append((addr, stop, "pud", _leaf_label(leaf.folio, leaf.special)))
            addr = stop
            continue
        stop = min(vma.end, (pmd_no + 1) << geo.pmd_shift)
        if pmd_no in pgt.pmd_leaves:
            leaf = pgt.pmd_leaves[pmd_no]
            pieces.append((addr, stop, "pmd", _leaf_label(leaf.folio, leaf.special)))
            addr = stop
            continue
        table = pgt.pte_tables.get(pmd_no)
        if table is None:
            pieces.append((addr, stop, "none", ""))
            addr = stop
            continue
        base = pmd_no << geo.pmd_shift
        for slot in range((addr - base) >> k.page_shift, (stop - base) >> k.page_shift):
            a = base + (slot << k.page_shift)
            if table.pfn[slot] < 0:
                level = "guard" if table.bits[slot] & PTE_MARKER_GUARD else "none"
                pieces.append((a, a + k.page_size, level, ""))
            else:
                pieces.append((a, a + k.page_size, "pte", ""))
        addr = stop
    runs: list[Run_] = []
    for a, b, level, label in pieces:
        if (
            runs
            and runs[-1].level == level
            and runs[-1].end == a
            and level in ("pte", "none", "guard")
        ):
            runs[-1].end = b
        else:
            runs.append(Run_(a, b, level, label))
    return runs


def _leaf_label(folio: Folio, special: bool) -> str:
    if folio.zero:
        return "huge zero"
    return "special" if special else f"pfn {folio.pfn:#x}"


def _leaf_line(prefix: str, addr: int, size: int, leaf: Leaf) -> str:
    """One huge leaf of the page-table tree: level, address, size, access, what it maps."""
    rw = "RW" if leaf.write else "ro"
    return f"{prefix} {addr:#014x} {human(size)} leaf {rw} {_leaf_label(leaf.folio, leaf.special)}"


def human(nbytes: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B"


GLYPH = {"pud": "█", "pmd": "▓", "pte": "▒", "none": "·", "guard": "x"}
STYLE = {"pud": "bold magenta", "pmd": "bold cyan", "pte": "green", "none": "dim", "guard": "red"}


def address_space_lines(k: Kernel, task: Task) -> list[tuple[str, str]]:
    """The picture as (text, rich style) lines: one header per VMA and one bar line per run."""
    from foliosim.procfs.task_mmu import show_map_vma

    out: list[tuple[str, str]] = []
    for vma in task.mm.vmas:
        out.append((show_map_vma(k, vma).rstrip(), "bold"))
        for r in level_runs(k, vma):
            width = max(1, min(40, (r.end - r.start).bit_length() - 11))
            bar = GLYPH[r.level] * width
            label = f" {r.label}" if r.label else ""
            pages = (r.end - r.start) >> k.page_shift
            text = (
                f"  {r.start:012x}-{r.end:012x} {r.level:<5} {human(r.end - r.start):>6} "
                f"({pages} pages){label} {bar}"
            )
            out.append((text, STYLE[r.level]))
    if not task.mm.vmas:
        out.append(("(no VMAs)", "dim"))
    return out


def render_address_space(k: Kernel, task: Task) -> str:
    return "\n".join(text for text, _ in address_space_lines(k, task)) + "\n"


def ptdump_lines(k: Kernel, task: Task) -> list[str]:
    """A ptdump-like tree (arch/x86/mm/dump_pagetables.c in spirit): PGD/PUD/PMD/PTE levels
    with the entries present, consecutive PTEs merged into runs."""
    geo = k.geometry
    pgt = task.mm.pgtables
    pmds_by_pud: dict[int, set[int]] = {}
    for pmd_no in set(pgt.pmd_leaves) | {n for n, t in pgt.pte_tables.items()}:
        pmds_by_pud.setdefault((pmd_no << geo.pmd_shift) >> geo.pud_shift, set()).add(pmd_no)
    puds = sorted(set(pgt.pud_leaves) | set(pmds_by_pud))
    lines = [f"mm {task.mm.id} ({task.name})"]
    for pud_no in puds:
        addr = pud_no << geo.pud_shift
        leaf = pgt.pud_leaves.get(pud_no)
        if leaf is not None:
            lines.append(_leaf_line("└─ PUD", addr, geo.pud_size, leaf))
            continue
        lines.append(f"└─ PUD {addr:#014x} -> PMD table")
        for pmd_no in sorted(pmds_by_pud[pud_no]):
            paddr = pmd_no << geo.pmd_shift
            pleaf = pgt.pmd_leaves.get(pmd_no)
            if pleaf is not None:
                lines.append(_leaf_line("   └─ PMD", paddr, geo.pmd_size, pleaf))
                continue
            table = pgt.pte_tables[pmd_no]
            lines.append(f"   └─ PMD {paddr:#014x} -> PTE table ({table.present} present)")
            for slot, nr, folio, page, special in table.runs(peek=True):
                a = paddr + (slot << k.page_shift)
                what = "zero page" if folio.zero else f"pfn {folio.pfn + page:#x}"
                kind = " special" if special else ""
                lines.append(f"      └─ PTE {a:#014x} x{nr} {what}{kind}")
    return lines
