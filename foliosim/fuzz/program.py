"""Random scenario programs: generated as scenario text, so a counterexample is runnable as is.

The generator tracks just enough to emit valid programs (bound names, live tasks, pins);
whether a statement succeeds is the model's business — a touch of an unmapped range is a
SIGSEGV, an unaligned split an EINVAL, and both are valid behaviour to fuzz through. Sizes are
chosen to hit PTE, PMD and PUD boundaries: aligned, straddling and partial.

Known kernel defects are left out unless asked for (``known_defects``), since they break
invariants on the real kernel too (docs/kernel-findings.md): mremap of a PUD-mapped
device-dax range ("bad pud"), and MADV_GUARD_INSTALL on a device-dax VMA, which sets
VM_MAYBE_GUARD so that fork copies refcounted PUDs without reference, rmap or RSS
(copy_huge_pud).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

K = 1 << 10
M = 1 << 20
G = 1 << 30


@dataclass
class Region:
    name: str
    kind: str  # anon, shared-anon, shmem, pagecache, devdax, fsdax
    length: int
    unit: int = 4 * K  # alignment the mapping's splits need (device-dax alignment)


@dataclass
class ProgramState:
    tasks: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # name -> fs kind
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


def at(reg: Region, off: int) -> str:
    """An address expression NAME+OFFSET for a region."""
    return f"{reg.name}+{size_text(off) if off else 0}"


def size_text(n: int) -> str:
    for unit, suffix in ((G, "G"), (M, "M"), (K, "K")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


class Generator:
    """Builds one program from a seed."""

    def __init__(
        self,
        seed: int,
        *,
        with_dax: bool = True,
        known_defects: bool = False,
        variant: str | None = None,
        config: str | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        # Extra choices added later draw from their own stream, so that the programs a seed
        # already stood for (committed counterexamples, tests) stay the same.
        self.extra_rng = random.Random(seed ^ 0x5EED)
        self.with_dax = with_dax
        self.known_defects = known_defects
        self.variant = variant
        self.config = config
        self.state = ProgramState()
        from foliosim.variants import get_variant

        try:
            self.pud_mremap_fixed = get_variant(variant or "mainline").mremap_checks_huge_pud_first
        except KeyError:
            self.pud_mremap_fixed = False

    def header(self) -> list[str]:
        r = self.rng
        thp = r.choice(["always", "madvise", "madvise", "never"])
        mapcount = r.choice(["page", "page", "page", "nopage"])
        mthp = r.choice(["", "", " mthp=64K:always", " mthp=16K:always,64K:inherit"])
        config = self.config or f"thp={thp} mapcount={mapcount}{mthp}"
        lines = [f"config {config}", "memory 8G"]
        if self.with_dax:
            lines.append("devdax dd1 size=4G align=1G")
            lines.append("devdax dd2 size=64M align=2M")
            lines.append("fsdax pm size=256M")
            lines.append("file fx size=4M fs=pm filled")
            lines.append("file fy size=8M fs=pm")
            self.state.files.update({"fx": "fsdax", "fy": "fsdax"})
        lines.append("file sh size=4M fs=shmem huge=always")
        lines.append("file sn size=4M fs=shmem")
        lines.append("file pc size=2M fs=pagecache filled")
        lines.append("file pe size=4M fs=pagecache")
        self.state.files.update(
            {"sh": "shmem", "sn": "shmem", "pc": "pagecache", "pe": "pagecache"}
        )
        lines.append("task T1")
        self.state.tasks.append("T1")
        return lines

    def program(self, steps: int) -> list[str]:
        lines = self.header()
        for _ in range(steps):
            lines.append(self.step())
        return lines

    # ---- one statement ----------------------------------------------------------------
    def step(self) -> str:
        r = self.rng
        st = self.state
        if not st.regions or r.random() < 0.12:
            return self.mmap()
        choice = r.choices(
            [
                "touch",
                "munmap",
                "madvise",
                "mprotect",
                "mremap",
                "fork",
                "exit",
                "pin",
                "unpin",
                "truncate",
                "shrink",
            ],
            weights=[30, 6, 12, 6, 4, 4, 2, 6, 3, 3, 4],
        )[0]
        statement: str = getattr(self, choice)()
        return statement

    def task(self) -> str:
        return self.rng.choice(self.state.tasks)

    def region(self) -> Region:
        return self.rng.choice(self.state.regions)

    def offset(self, reg: Region) -> int:
        r = self.rng
        cands = [
            0,
            4 * K,
            2 * M - 4 * K,
            2 * M,
            2 * M + 4 * K,
            reg.length // 2,
            reg.length - 4 * K,
            1 * G,
            1 * G - 4 * K,
        ]
        off = r.choice([c for c in cands if 0 <= c < reg.length] or [0])
        if reg.unit > 4 * K and r.random() < 0.7:
            off -= off % reg.unit
        return off

    def length(self, reg: Region, off: int) -> int:
        r = self.rng
        # Small touches are cheap and most programs need many of them; whole-PMD, straddling
        # and whole-region lengths still come up often enough to cross every boundary.
        cands = [4 * K, 64 * K, 2 * M, 2 * M + 4 * K, reg.length - off, 1 * G]
        weights = [6, 4, 2, 1, 2, 1]
        pairs = [(c, w) for c, w in zip(cands, weights, strict=True) if c > 0]
        n = r.choices([c for c, _ in pairs], weights=[w for _, w in pairs])[0]
        if reg.unit > 4 * K and r.random() < 0.7:
            n = max(reg.unit, n - n % reg.unit)
        return n

    def mmap(self) -> str:
        r = self.rng
        st = self.state
        kinds = ["anon", "anon", "anon", "shared-anon", "shmem", "pagecache"]
        if self.with_dax:
            kinds += ["devdax1g", "devdax2m", "fsdax"]
        kind = r.choice(kinds)
        name = st.fresh("m")
        t = self.task()
        if kind == "anon":
            length = r.choice([4 * K, 64 * K, 2 * M, 4 * M, 2 * M + 64 * K])
            st.regions.append(Region(name, "anon", length))
            extra = r.choice(["", "", " populate", " rw", " align=2M"])
            return f"{t}: {name} = mmap {size_text(length)} private anon{extra}"
        if kind == "shared-anon":
            length = r.choice([64 * K, 2 * M])
            st.regions.append(Region(name, "shmem", length))
            return f"{t}: {name} = mmap {size_text(length)} shared anon"
        if kind in ("shmem", "pagecache"):
            f = r.choice(["sh", "sn"] if kind == "shmem" else ["pc", "pe"])
            length = r.choice([64 * K, 2 * M, 4 * M])
            share = r.choice(["shared", "shared", "private"])
            st.regions.append(Region(name, kind, length))
            return f"{t}: {name} = mmap {size_text(length)} {share} fd={f}"
        if kind == "devdax1g":
            length = r.choice([1 * G, 2 * G])
            st.regions.append(Region(name, "devdax", length, unit=1 * G))
            return f"{t}: {name} = mmap {size_text(length)} shared fd=dd1"
        if kind == "devdax2m":
            length = r.choice([2 * M, 4 * M, 8 * M])
            st.regions.append(Region(name, "devdax", length, unit=2 * M))
            return f"{t}: {name} = mmap {size_text(length)} shared fd=dd2"
        f = r.choice(["fx", "fy"])
        length = r.choice([64 * K, 2 * M, 4 * M])
        st.regions.append(Region(name, "fsdax", length))
        return f"{t}: {name} = mmap {size_text(length)} shared fd={f}"

    def touch(self) -> str:
        reg = self.region()
        off = self.offset(reg)
        verb = self.rng.choice(["read", "write", "write"])
        return f"{self.task()}: {verb} {at(reg, off)} {size_text(self.length(reg, off))}"

    def munmap(self) -> str:
        reg = self.region()
        off = self.offset(reg)
        return f"{self.task()}: munmap {at(reg, off)} {size_text(self.length(reg, off))}"

    def madvise(self) -> str:
        reg = self.region()
        off = self.offset(reg)
        advice = self.rng.choice(
            [
                "DONTNEED",
                "DONTNEED",
                "HUGEPAGE",
                "NOHUGEPAGE",
                "COLLAPSE",
                "PAGEOUT",
                "FREE",
                "GUARD_INSTALL",
                "GUARD_REMOVE",
            ]
        )
        if advice == "GUARD_INSTALL" and reg.kind == "devdax" and not self.known_defects:
            advice = "DONTNEED"
        length = self.length(reg, off)
        if advice == "COLLAPSE" and self.extra_rng.random() < 0.5:
            off, length = 0, reg.length  # the whole mapping: aligned PMDs get collapsed
        return f"{self.task()}: madvise {at(reg, off)} {size_text(length)} {advice}"

    def mprotect(self) -> str:
        reg = self.region()
        off = self.offset(reg)
        prot = self.rng.choice(["r", "rw", "rw", "none"])
        return f"{self.task()}: mprotect {at(reg, off)} {size_text(self.length(reg, off))} {prot}"

    def mremap(self) -> str:
        candidates = [
            g
            for g in self.state.regions
            if self.known_defects or self.pud_mremap_fixed or g.kind not in ("devdax",)
        ]
        if not candidates:
            return self.touch()
        reg = self.rng.choice(candidates)
        name = self.state.fresh("r")
        new = self.rng.choice([reg.length // 2 or 4 * K, reg.length, reg.length * 2])
        self.state.regions.append(Region(name, reg.kind, new, reg.unit))
        mode = self.rng.choice(["maymove", "maymove", ""])
        old = size_text(reg.length)
        return f"{self.task()}: {name} = mremap {reg.name} {old} {size_text(new)} {mode}".rstrip()

    def fork(self) -> str:
        if len(self.state.tasks) >= 4:
            return self.touch()
        child = self.state.fresh("T")
        parent = self.task()
        self.state.tasks.append(child)
        return f"{parent}: fork {child}"

    def exit(self) -> str:
        if len(self.state.tasks) <= 1:
            return self.touch()
        t = self.task()
        self.state.tasks.remove(t)
        return f"{t}: exit"

    def pin(self) -> str:
        reg = self.region()
        off = self.offset(reg)
        name = self.state.fresh("p")
        self.state.pins.append(name)
        mode = self.rng.choice(["", "", " get", " longterm"])
        length = size_text(self.rng.choice([4 * K, 64 * K]))
        return f"{self.task()}: {name} = pin {at(reg, off)} {length}{mode}"

    def unpin(self) -> str:
        if not self.state.pins:
            return self.touch()
        name = self.rng.choice(self.state.pins)
        self.state.pins.remove(name)
        return f"unpin {name}"

    def truncate(self) -> str:
        f = self.rng.choice(sorted(self.state.files))
        if self.rng.random() < 0.5:
            off = size_text(self.rng.choice([0, 4 * K, 2 * M]))
            return f"punch {f} {off} {size_text(self.rng.choice([4 * K, 2 * M]))}"
        return f"truncate {f} {size_text(self.rng.choice([4 * K, 1 * M, 2 * M, 16 * M]))}"

    def shrink(self) -> str:
        return "shrink"
