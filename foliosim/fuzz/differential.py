"""Differential fuzzing: the same programs under two variants; the shortest program whose
user-visible results (RSS counters, errno, signals) differ, printed as a scenario."""

from __future__ import annotations

from typing import Any

from foliosim.fuzz.program import Generator
from foliosim.scenario.parser import ScenarioError
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text


def observe(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, task in run.kernel.tasks.items():
        if not task.exited:
            out[f"{name}.rss"] = tuple(task.mm.rss)
        out[f"{name}.errno"] = task.errno
        out[f"{name}.signal"] = task.signal
    out["errno"] = run.kernel.global_errno
    return out


def first_difference(lines: list[str], left: str, right: str) -> tuple[int, str] | None:
    """Index (into the executed statements) and description of the first difference."""
    text = "\n".join(lines) + "\n"
    try:
        stmts = parse_text("<diff>", text)
        a = execute("<diff>", stmts, variant=left, observe=observe)
        b = execute("<diff>", stmts, variant=right, observe=observe)
    except ScenarioError:
        return None
    for i, (x, y) in enumerate(zip(a.observations, b.observations, strict=True)):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            desc = "; ".join(f"{k}: {left}={x.get(k)} {right}={y.get(k)}" for k in keys)
            return i, f"after `{a.results[i].source}`: {desc}"
    return None


def differential_campaign(
    left: str, right: str, base: int, programs: int, steps: int, config: str | None
) -> dict[str, Any]:
    best: list[str] | None = None
    best_desc = ""
    for seed in range(base, base + programs):
        gen = Generator(seed, config=config)
        lines = gen.program(steps)
        diff = first_difference(lines, left, right)
        if diff is None:
            continue
        header = [ln for ln in lines if _setup(ln)]
        body = [ln for ln in lines if not _setup(ln)][: diff[0] + 1]
        body = _shrink(header, body, left, right)
        candidate = header + body
        if best is None or len(candidate) < len(best):
            best = candidate
            found = first_difference(candidate, left, right)
            best_desc = found[1] if found else ""
    return {
        "left": left,
        "right": right,
        "programs": programs,
        "base_seed": base,
        "scenario": best or [],
        "difference": best_desc,
    }


def _setup(line: str) -> bool:
    word = line.split(maxsplit=1)[0] if line.strip() else ""
    return word in ("config", "memory", "devdax", "fsdax", "file", "task")


def _shrink(header: list[str], body: list[str], left: str, right: str) -> list[str]:
    i = 0
    while i < len(body):
        trial = body[:i] + body[i + 1 :]
        if trial and first_difference(header + trial, left, right) is not None:
            body = trial
        else:
            i += 1
    return body
