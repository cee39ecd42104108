"""The fuzzer: reproducible programs, a clean mainline, the incremental checker agreeing with
the full one, the Hypothesis engine, differential runs and resumable parallel campaigns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foliosim.fuzz.campaign import Summary, campaign, load_state, save_state
from foliosim.fuzz.differential import differential_campaign
from foliosim.fuzz.engine import program_for, run_program
from foliosim.fuzz.hypo import hypothesis_campaign


def test_programs_replay_exactly() -> None:
    assert program_for(1234, 50, None) == program_for(1234, 50, None)
    assert program_for(1234, 50, None) != program_for(1235, 50, None)


def test_mainline_has_no_findings() -> None:
    summary = campaign("mainline", 500, 40, 60)
    assert summary.programs == 40
    assert summary.steps > 40 * 30
    assert summary.findings == [], [f.message for f in summary.findings]


@pytest.mark.parametrize(
    "variant",
    ["mainline", "zap-pte-no-rmap", "fork-pte-no-ref", "split-pud-no-put", "dax-pmd-no-rss"],
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_incremental_checker_matches_full_check(variant: str, seed: int) -> None:
    lines = program_for(seed, 60, variant)
    fast = run_program(lines, variant)
    full = run_program(lines, variant, full_check=True)
    assert (fast.failed, fast.line) == (full.failed, full.line)
    if fast.failed:
        assert fast.kind == full.kind


def test_hypothesis_engine_catches_a_mutant() -> None:
    result = hypothesis_campaign("pin-one-ref", examples=60, steps=30, seed=None)
    assert result.failure.startswith("invariant refcount broken")
    assert result.scenario[-1] == "check"
    assert sum(1 for line in result.scenario if ":" in line) <= 10


def test_differential_legacy_mainline_finds_dax_rss() -> None:
    """Seeds 200-229 reach the DAX RSS difference of the series first: a 2M device-dax write
    fault counts 512 pages in mainline and none in legacy (vmf_insert_pfn_pmd took no RSS)."""
    result = differential_campaign("legacy", "mainline", 200, 30, 40, None)
    assert result["scenario"], "legacy and mainline differ in DAX RSS"
    assert "rss" in result["difference"]
    assert "legacy=(0, 0, 0, 0) mainline=(512, 0, 0, 0)" in result["difference"]


def test_differential_reports_both_values() -> None:
    """Whatever difference comes first (seeds 0-29: MADV_GUARD_INSTALL, which 6.1 lacks), the
    report names the statement and both variants' values."""
    result = differential_campaign("legacy", "mainline", 0, 30, 40, None)
    assert result["scenario"]
    assert "legacy=" in result["difference"] and "mainline=" in result["difference"]


def test_parallel_campaign_and_resume(tmp_path: Path) -> None:
    summary = campaign("mainline", 900, 8, 30, jobs=2)
    assert summary.programs == 8 and sorted(summary.done) == list(range(900, 908))
    state = tmp_path / "state.json"
    save_state(state, summary)
    assert json.loads(state.read_text())["programs"] == 8
    assert load_state(state) == set(range(900, 908))
    again = campaign("mainline", 900, 10, 30, skip=load_state(state))
    assert again.programs == 2


def _assert_same_as_local(remote: Summary) -> None:
    """A cluster campaign of mutant zap-pte-no-rmap, seeds 0-11, 40 steps, gives the local
    engine's programs, steps and finding kinds, each finding once."""
    local = campaign("zap-pte-no-rmap", 0, 12, 40, shrink_budget=5.0)
    assert remote.programs == local.programs == 12
    assert remote.steps == local.steps
    assert sorted(remote.done) == sorted(local.done) == list(range(12))
    assert remote.findings and {f.kind for f in remote.findings} == {f.kind for f in local.findings}
    assert len({f.key() for f in remote.findings}) == len(remote.findings)


def test_dask_cluster_campaign() -> None:
    """A campaign on a Dask cluster (scheduler and two worker processes started here) gives
    the same programs, steps and finding kinds as the local engine, deduplicated."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = campaign(
            "zap-pte-no-rmap",
            0,
            12,
            40,
            engine="dask",
            address=cluster.scheduler_address,
            shrink_budget=5.0,
        )
    _assert_same_as_local(remote)


def test_ray_cluster_campaign() -> None:
    """A campaign on a Ray cluster (a head node with 2 CPUs started here as separate processes;
    the campaign connects to it by address and disconnects) gives the same programs, steps and
    finding kinds as the local engine, deduplicated."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
        shutdown_at_exit=False,
    )
    try:
        remote = campaign(
            "zap-pte-no-rmap",
            0,
            12,
            40,
            engine="ray",
            address=cluster.address,
            shrink_budget=5.0,
        )
        assert not ray.is_initialized()  # the campaign's connection is closed, the cluster kept
        assert cluster.head_node.remaining_processes_alive()
    finally:
        cluster.shutdown()
    _assert_same_as_local(remote)


def test_a_finished_program_leaves_no_folios_behind() -> None:
    """run_program frees the dead kernel before it returns (gc_policy.collect_after), page
    cache cycles held through NumPy object arrays included: no Folio stays tracked."""
    import gc

    from foliosim.kernel.physmem import Folio

    def live_folios() -> int:  # other tests' folios may still be about: count, compare
        return sum(isinstance(o, Folio) for o in gc.get_objects())

    assert gc.isenabled()
    gc.collect()
    for seed in (424243, 424244, 424247):  # programs with filled page-cache files
        before = live_folios()
        outcome = run_program(program_for(seed, 100, None), None)
        assert outcome.steps == 110 and not outcome.failed
        assert live_folios() <= before
