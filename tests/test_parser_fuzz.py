"""Bad input never escapes as a traceback: random and mutated scenario text gives either a
clean run or a ScenarioError with FILE:LINE:COL, and `foliosim run` exits 2 for it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.runner import execute
from foliosim.scenario.statements import parse_text

SEEDS = [
    """config thp=always
task A
A: m = mmap 4M
A: write m 4M
A: fork B
B: n = mremap m 4M 8M maymove
expect B.rss.anon == 1024
expect folio(A, m).refcount >= 1
A: munmap m+4K 4K
shrink
check
""",
    """devdax d size=2G align=1G
file f size=8M fs=shmem huge=always filled
task T
T: a = mmap 1G shared fd=d
T: b = mmap 4M fd=f
T: read b 4M
T: p = pin a 4K longterm
unpin p
truncate f 1M
expect warning "x"
print vmstat.nr_shmem_pmdmapped
""",
]
LOCATED = re.compile(r"^<fuzz>:\d+:\d+: .+")


def run_or_error(text: str) -> None:
    try:
        execute("<fuzz>", parse_text("<fuzz>", text))
    except ScenarioError as exc:
        assert LOCATED.match(str(exc)), str(exc)
        assert exc.line >= 1 and exc.col >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200))
def test_random_text(text: str) -> None:
    run_or_error(text)


TOKENS = [
    "A:",
    "B:",
    "task",
    "A",
    "m",
    "=",
    "mmap",
    "munmap",
    "4K",
    "2M",
    "1G",
    "0x1000",
    "m+4K",
    "write",
    "read",
    "fork",
    "exit",
    "expect",
    "==",
    "<",
    "folio(A,",
    "m).refcount",
    "level(A,",
    "m)",
    "none",
    "pmd",
    "shared",
    "fd=f",
    "file",
    "f",
    "size=4M",
    "fs=shmem",
    "config",
    "thp=always",
    "CONFIG_DEBUG_VM=y",
    "devdax",
    "d",
    "align=2M",
    "pin",
    "unpin",
    "p",
    '"text"',
    "#",
    "check",
    "print",
    "vmstat.thp_split_pmd",
    "madvise",
    "DONTNEED",
    "mprotect",
    "r",
    "mremap",
    "maymove",
    "fixed=m",
    "truncate",
    "punch",
    "shrink",
    "proc",
    "smaps",
    "of",
    "(",
    ")",
    ",",
    ".",
    "-1",
    "99999999999999999999T",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.sampled_from(TOKENS), max_size=8), max_size=12))
def test_token_soup(lines: list[list[str]]) -> None:
    run_or_error("\n".join(" ".join(line) for line in lines))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_scenarios(seed: str, data: st.DataObject) -> None:
    chars = list(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        if not chars:
            break
        i = data.draw(st.integers(0, len(chars) - 1))
        op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        ch = data.draw(st.sampled_from(list('AmB=:()., 0x1KMG#"\n+-zq')))
        if op == "delete":
            del chars[i]
        elif op == "insert":
            chars.insert(i, ch)
        else:
            chars[i] = ch
    run_or_error("".join(chars))


def test_cli_bad_input_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fsim"
    bad.write_text("task A\nA: m = mmap 4Q\n")
    proc = subprocess.run(
        [sys.executable, "-m", "foliosim.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{bad}:2:13: bad number '4Q'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_missing_file_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "foliosim.cli", "run", str(tmp_path / "no.fsim")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no.fsim:1:1: cannot read" in proc.stderr
