"""Fuzzing the model against this machine's kernel (`foliosim oracle host-fuzz`).

The fuzzer's programs (foliosim.fuzz.program), cut down to what the host oracle can run (no
DAX, no pins, the host's fixed configuration), with probes after every statement: each live
task's RSS counters and, where the statement names an address, the page-table level and the
folio order there. Each program runs on the model and on the kernel like a conformance
scenario; a program whose probes disagree is kept as a scenario file for triage. vmstat is
not probed: it is machine-wide and other processes move it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foliosim.fuzz.program import Generator, Region

# Statements the host cannot run (see host.UNSUPPORTED) and the lines that depend on them.
_PIN = re.compile(r"^(\w+): (\w+) = pin ")
_UNPIN = re.compile(r"^unpin (\w+)")
_TASK = re.compile(r"^(\w+): ")
_ADDR = re.compile(r"^(\w+): (?:read|write|madvise|mprotect) (\w+(?:[+-]\w+)?) ")
_FORK = re.compile(r"^(\w+): fork (\w+)")
_EXIT = re.compile(r"^(\w+): exit")


class HostGenerator(Generator):
    """The fuzz generator, kept inside its own mappings: on the host the scenario's mappings
    sit next to the worker's libraries and heap, so a length running past a region, or an
    mremap growing in place into what lies above, would reach memory the model knows
    nothing of."""

    def length(self, reg: Region, off: int) -> int:
        return min(super().length(reg, off), reg.length - off)

    def mremap(self) -> str:
        line = super().mremap()
        return line if " = mremap " not in line or line.endswith("maymove") else f"{line} maymove"


@dataclass
class HostProgram:
    seed: int
    statements: list[str] = field(default_factory=list)  # without the probes

    @property
    def lines(self) -> list[str]:
        """The program with a probe block after every task statement."""
        out: list[str] = []
        live = ["T1"]
        for line in self.statements:
            out.append(line)
            if not _TASK.match(line):
                continue
            fork = _FORK.match(line)
            if fork:
                live.append(fork.group(2))
            gone = _EXIT.match(line)
            if gone and gone.group(1) in live:
                live.remove(gone.group(1))
            out += probes(line, live)
        return out


def host_program(seed: int, steps: int) -> HostProgram:
    """A fuzz program for the host: a configuration the host can be put in, no DAX, no pins,
    a probe block after every statement."""
    rng = random.Random(seed ^ 0x4057)
    thp = rng.choice(["always", "madvise", "madvise", "never"])
    mthp = rng.choice(["", "", " mthp=64K:always", " mthp=16K:always,64K:inherit"])
    gen = HostGenerator(seed, with_dax=False, config=f"thp={thp}{mthp}")
    out = HostProgram(seed)
    pins: set[str] = set()
    for line in gen.program(steps):
        pin = _PIN.match(line)
        if pin:
            pins.add(pin.group(2))
            continue
        unpin = _UNPIN.match(line)
        if (unpin and unpin.group(1) in pins) or line.startswith("memory "):
            continue
        out.statements.append(line)
    return out


def shrink(program: HostProgram, disagrees: Callable[[HostProgram], bool]) -> HostProgram:
    """Drop statements, last first, while the program still disagrees (setup lines stay):
    what is left is the smallest program this greedy pass finds, probes regenerated."""
    body = list(program.statements)
    i = len(body) - 1
    while i >= 0:
        if _TASK.match(body[i]) or body[i].split()[0] in ("shrink", "truncate", "punch"):
            trial = HostProgram(program.seed, body[:i] + body[i + 1 :])
            if disagrees(trial):
                body = trial.statements
        i -= 1
    return HostProgram(program.seed, body)


def probes(line: str, live: list[str]) -> list[str]:
    """`print` queries after one task statement: RSS of every live task, and level and folio
    order at the address the statement names (if its task is alive)."""
    out = [f"print {t}.rss.{kind}" for t in live for kind in ("anon", "file", "shmem")]
    m = _ADDR.match(line)
    if m and m.group(1) in live:
        task, addr = m.group(1), m.group(2)
        out += [f"print level({task}, {addr})", f"print folio({task}, {addr}).order"]
    return out


def save(directory: Path, program: HostProgram, disagreements: list[str]) -> Path:
    """Write a disagreeing program as a scenario (the rows that differ in its header)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"host-fuzz-seed{program.seed}.fsim"
    header = [f"# foliosim oracle host-fuzz, seed {program.seed}: model and kernel differ at"]
    header += [f"#   {row}" for row in disagreements[:10]]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(header + program.lines) + "\n")
    tmp.replace(path)
    return path
