"""Fuzz campaigns: many programs, several workers, mutants, differential runs, saved results.

Every program is identified by (seed, steps, variant, config): replaying a seed regenerates it
exactly. Counterexamples are shrunk and saved as .fsim files that reproduce the failure with
`foliosim run`; results are written atomically (write to a temporary file, then rename), so a
stopped campaign keeps what it found and `--resume` skips seeds already done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from foliosim.fuzz.engine import Outcome, run_program, shrink
from foliosim.fuzz.program import Generator
from foliosim.gc_policy import collect_less


@dataclass
class Finding:
    seed: int
    variant: str
    kind: str
    message: str
    scenario: list[str]

    def key(self) -> str:
        """Deduplicate by the shrunk scenario's statements."""
        return "\n".join(self.scenario)


@dataclass
class Summary:
    variant: str
    programs: int = 0
    steps: int = 0
    seconds: float = 0.0
    known_defects: int = 0
    findings: list[Finding] = field(default_factory=list)
    done: list[int] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Job:
    variant: str | None
    seeds: tuple[int, ...]
    steps: int
    config: str | None
    known_defects: bool
    time_limit: float | None
    shrink_budget: float


def generate(seed: int, job: Job) -> list[str]:
    return Generator(
        seed, known_defects=job.known_defects, config=job.config, variant=job.variant
    ).program(job.steps)


def run_job(job: Job) -> dict[str, object]:
    """One worker's share: runs its seeds, shrinks failures. Plain data for the pool."""
    with collect_less():
        return _run_job(job)


def _run_job(job: Job) -> dict[str, object]:
    start = time.monotonic()
    steps = programs = known = 0
    findings: list[dict[str, object]] = []
    done: list[int] = []
    for seed in job.seeds:
        if job.time_limit is not None and time.monotonic() - start > job.time_limit:
            break
        lines = generate(seed, job)
        outcome = run_program(lines, job.variant, allow_known=job.known_defects)
        programs += 1
        steps += outcome.steps
        done.append(seed)
        if outcome.kind.startswith("known:"):
            known += 1
        if outcome.failed:
            small = shrink(lines, job.variant, outcome, job.shrink_budget)
            findings.append(
                asdict(
                    Finding(seed, job.variant or "mainline", outcome.kind, outcome.message, small)
                )
            )
    return {
        "programs": programs,
        "steps": steps,
        "known": known,
        "findings": findings,
        "seconds": time.monotonic() - start,
        "done": done,
    }


def campaign(
    variant: str | None,
    base_seed: int,
    programs: int,
    steps: int,
    *,
    jobs: int = 1,
    config: str | None = None,
    known_defects: bool = False,
    time_limit: float | None = None,
    shrink_budget: float = 20.0,
    skip: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "local",
    address: str | None = None,
) -> Summary:
    """Run programs base_seed .. base_seed+programs-1 (minus ``skip``) and merge the results.

    ``engine`` "local" uses ``jobs`` processes on this machine; "dask" and "ray" submit slices
    of seeds to a Dask or Ray cluster (the one at ``address``, or a local one of ``jobs``
    workers) and merge what comes back, deduplicating counterexamples by their shrunk scenario.
    """
    seeds = [s for s in range(base_seed, base_seed + programs) if not skip or s not in skip]
    chunks = [tuple(seeds[i::jobs]) for i in range(jobs)] if jobs > 1 else [tuple(seeds)]
    summary = Summary(variant or "mainline")
    start = time.monotonic()
    results: list[dict[str, object]] = []
    if engine in ("dask", "ray"):
        slices = [tuple(seeds[i : i + 8]) for i in range(0, len(seeds), 8)]
        jobs_list = [
            Job(variant, c, steps, config, known_defects, time_limit, shrink_budget) for c in slices
        ]
        runner = run_on_dask if engine == "dask" else run_on_ray
        results = runner(jobs_list, address, jobs, progress)
    elif jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for res in pool.map(
                run_job,
                [
                    Job(variant, c, steps, config, known_defects, time_limit, shrink_budget)
                    for c in chunks
                ],
            ):
                results.append(res)
                if progress:
                    progress(int(res["programs"]))  # type: ignore[call-overload]
    else:
        # One process: run in slices so the progress bar moves (one GC setting for all).
        with collect_less():
            results = _run_slices(
                Job(variant, tuple(seeds), steps, config, known_defects, time_limit, shrink_budget),
                start,
                progress,
            )
    seen: set[str] = set()
    for res in results:
        summary.programs += int(res["programs"])  # type: ignore[call-overload]
        summary.steps += int(res["steps"])  # type: ignore[call-overload]
        summary.known_defects += int(res["known"])  # type: ignore[call-overload]
        summary.done.extend(res["done"])  # type: ignore[arg-type]
        for f in res["findings"]:  # type: ignore[attr-defined]
            finding = Finding(**f)
            if finding.key() not in seen:
                seen.add(finding.key())
                summary.findings.append(finding)
    summary.seconds = time.monotonic() - start
    return summary


def run_on_dask(
    jobs_list: list[Job],
    address: str | None,
    workers: int,
    progress: Callable[[int], None] | None,
) -> list[dict[str, object]]:
    """Map run_job over a Dask cluster: an existing scheduler (``address``), or an in-process
    local cluster for the run. The local one shares this interpreter (threads), so it checks
    the Dask path rather than adding cores: for cores on one machine use the local engine."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        cluster = LocalCluster(
            n_workers=max(workers, 1), threads_per_worker=1, processes=False, dashboard_address=None
        )
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        futures = client.map(run_job, jobs_list, pure=False)
        results: list[dict[str, object]] = []
        for future in as_completed(futures):
            res = future.result()
            results.append(res)
            if progress:
                progress(int(res["programs"]))
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_on_ray(
    jobs_list: list[Job],
    address: str | None,
    workers: int,
    progress: Callable[[int], None] | None,
) -> list[dict[str, object]]:
    """Run run_job as one Ray task per Job on an existing cluster (``address``, e.g.
    "auto" or "HOST:PORT"), or on a local Ray started for the run with ``workers`` CPUs
    (worker processes). A connection this process already has is used as it is."""
    import ray

    owned = not ray.is_initialized()
    if owned and address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=max(workers, 1),
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    elif owned:
        ray.init(address=address, logging_level=logging.ERROR)
    try:
        task = ray.remote(num_cpus=1)(run_job)
        pending = [task.remote(job) for job in jobs_list]
        results: list[dict[str, object]] = []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            res: dict[str, object] = ray.get(ready[0])
            results.append(res)
            if progress:
                progress(int(res["programs"]))  # type: ignore[call-overload]
        return results
    finally:
        if owned:
            ray.shutdown()


def _run_slices(
    job: Job, start: float, progress: Callable[[int], None] | None
) -> list[dict[str, object]]:
    """run_job over ``job``'s seeds a fiftieth at a time, within its time limit."""
    results: list[dict[str, object]] = []
    seeds = job.seeds
    per = max(1, len(seeds) // 50)
    for i in range(0, len(seeds), per):
        left = None if job.time_limit is None else job.time_limit - (time.monotonic() - start)
        if left is not None and left <= 0:
            break
        res = run_job(replace(job, seeds=tuple(seeds[i : i + per]), time_limit=left))
        results.append(res)
        if progress:
            progress(int(res["programs"]))  # type: ignore[call-overload]
    return results


def replay(
    seed: int, steps: int, variant: str | None, config: str | None, known_defects: bool
) -> tuple[Outcome, list[str]]:
    job = Job(variant, (seed,), steps, config, known_defects, None, 20.0)
    lines = generate(seed, job)
    return run_program(lines, variant, allow_known=known_defects), lines


def save_finding(directory: Path, finding: Finding) -> Path:
    """Write a counterexample as a runnable scenario (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{finding.variant}-{finding.kind}-seed{finding.seed}.fsim".replace(":", "_")
    path = directory / name
    first_line = finding.message.splitlines()[0] if finding.message else finding.kind
    header = [
        f"# Counterexample found by `foliosim fuzz --variant {finding.variant} --seed "
        f"{finding.seed}`, shrunk to {sum(':' in s for s in finding.scenario)} task statements.",
        f"# Failure: {first_line}",
        "# expect-exit: 1",
        f"# variants: {finding.variant}",
        "# invariants: off",
    ]
    body = list(finding.scenario)
    if finding.kind == "report" and body and body[-1] == "check":
        # A kernel BUG report alone does not fail `foliosim run`: ask for its absence.
        body.insert(len(body) - 1, "expect no warnings")
    atomic_write(path, "\n".join(header + body) + "\n")
    return path


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_state(path: Path, summary: Summary) -> None:
    data = {
        "variant": summary.variant,
        "programs": summary.programs,
        "steps": summary.steps,
        "seconds": summary.seconds,
        "known_defects": summary.known_defects,
        "findings": [asdict(f) for f in summary.findings],
        "done": sorted(summary.done),
    }
    atomic_write(path, json.dumps(data, indent=2))


def load_state(path: Path) -> set[int]:
    """Seeds a previous run of this campaign already finished (for --resume)."""
    if not path.exists():
        return set()
    data = json.loads(path.read_text())
    return set(data.get("done", []))
