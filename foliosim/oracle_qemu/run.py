"""Run scenarios in QEMU guests and compare them with the model variant of the kernel."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foliosim.oracle_qemu import cprog, guest, setup
from foliosim.oracle_qemu.compare import Row, compare, parse_console, reports_in, run_model
from foliosim.scenario.parser import Stmt
from foliosim.scenario.runner import Run
from foliosim.scenario.statements import parse_text
from foliosim.variants import variant_for_kernel


def variant_for(version: str) -> str:
    """The variant a guest kernel is compared with (variants.variant_for_kernel)."""
    return variant_for_kernel(version)


@dataclass
class ScenarioResult:
    path: str
    kernel: str
    variant: str
    rows: list[Row] = field(default_factory=list)
    status: str = "ok"  # ok, unsupported, no result
    reason: str = ""
    boot: int = -1
    dmesg_reports: list[str] = field(default_factory=list)

    @property
    def agree(self) -> int:
        return sum(r.verdict == "agree" for r in self.rows)

    @property
    def disagree(self) -> int:
        return sum(r.verdict in ("DISAGREE", "no result") for r in self.rows)

    @property
    def agrees(self) -> bool:
        return self.status == "ok" and self.disagree == 0

    def json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "kernel": self.kernel,
            "variant": self.variant,
            "status": self.status,
            "reason": self.reason,
            "boot": self.boot,
            "agree": self.agree,
            "disagree": self.disagree,
            "rows": [r.json() for r in self.rows],
            "dmesg_reports": self.dmesg_reports,
        }


@dataclass
class BootInfo:
    index: int
    files: list[str]
    seconds: float
    accel: str
    release: str
    console_tail: str = ""


@dataclass
class Job:
    path: str
    stmts: list[Stmt]
    model: Run
    plan: cprog.Plan


def needs_own_boot(job: Job) -> bool:
    """A WARN_ON_ONCE site warns once per boot: a scenario expecting a warning, or one the
    model predicts a report for, gets a boot of its own."""
    return bool(job.model.kernel.reports.reports) or any(
        s.kind in ("expect_warning", "expect_no_warnings") for s in job.stmts
    )


def needs_newer_kernel(text: str, version: str) -> str:
    """A scenario's `# min-kernel: X.Y` line (what the guest must have, such as ext4's large
    folios from 6.16): the reason it cannot run on ``version``, or ""."""
    need = re.search(r"^#\s*min-kernel:\s*(\d+)\.(\d+)", text, re.M)
    have = re.match(r"(\d+)\.(\d+)", version)
    if need is None or have is None:
        return ""
    if (int(have[1]), int(have[2])) >= (int(need[1]), int(need[2])):
        return ""
    return f"needs kernel {need[1]}.{need[2]} or later (min-kernel line)"


def run_scenarios(
    paths: list[Path], kernel_spec: str, batch: bool = True, progress: Any = None
) -> tuple[list[ScenarioResult], list[BootInfo]]:
    kernel = setup.find_kernel(kernel_spec)
    userland = setup.userland_dir()
    if not (userland / "READY").is_file():
        raise setup.SetupError("guest userland missing; run `foliosim oracle qemu setup`")
    variant = variant_for(kernel.version)
    results: dict[str, ScenarioResult] = {}
    jobs: list[Job] = []
    for n, path in enumerate(paths):
        text = path.read_text()
        stmts = parse_text(str(path), text)
        res = ScenarioResult(str(path), kernel.version, variant)
        results[str(path)] = res
        too_old = needs_newer_kernel(text, kernel.version)
        if too_old:
            res.status, res.reason = "unsupported", too_old
            continue
        try:
            plan = cprog.translate(n, str(path), stmts)
        except cprog.Unsupported as exc:
            res.status, res.reason = "unsupported", str(exc)
            continue
        jobs.append(Job(str(path), stmts, run_model(str(path), stmts, variant), plan))
    groups: list[list[Job]] = []
    shared: list[Job] = []
    for job in jobs:
        if needs_own_boot(job) or not batch:
            groups.append([job])
        else:
            shared.append(job)
    if shared:
        groups.insert(0, shared)
    boots: list[BootInfo] = []
    build_dir = setup.cache_dir() / "build"
    for index, group in enumerate(groups):
        if progress is not None:
            progress(f"boot {index + 1}/{len(groups)}: {len(group)} scenario(s)")
        program = cprog.build([j.plan for j in group], build_dir)
        start = time.monotonic()
        result = guest.boot(kernel, userland, [j.plan for j in group], program)
        console = parse_console(result.console)
        boots.append(
            BootInfo(
                index,
                [j.path for j in group],
                time.monotonic() - start,
                result.accel,
                console.release,
                "" if console.done else result.console[-3000:],
            )
        )
        for job in group:
            res = results[job.path]
            res.boot = index
            gs = console.scenarios.get(job.plan.number)
            res.rows = compare(job.stmts, job.model, gs)
            if gs is None or not gs.began:
                res.status, res.reason = "no result", "the guest did not run it"
            res.dmesg_reports = reports_in(console.dmesg) if len(group) == 1 else []
    return [results[str(p)] for p in paths], boots


def summary(results: list[ScenarioResult]) -> dict[str, Any]:
    ran = [r for r in results if r.status != "unsupported"]
    agreeing = [r for r in ran if r.agrees]
    rows = sum(r.agree + r.disagree for r in ran)
    rows_ok = sum(r.agree for r in ran)
    return {
        "scenarios": len(results),
        "ran": len(ran),
        "agreeing": len(agreeing),
        "unsupported": len(results) - len(ran),
        "percent": round(100.0 * len(agreeing) / len(ran), 1) if ran else 0.0,
        "rows": rows,
        "rows_agreeing": rows_ok,
    }
