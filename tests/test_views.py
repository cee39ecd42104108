"""`foliosim proc`, `show folio`, `show map`, `report` (HTML in headless Chromium), the pytest
plugin and the Python API examples of docs/api.md."""

from __future__ import annotations

import doctest
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from foliosim.cli import app

ROOT = Path(__file__).parent.parent
DAX = ROOT / "docs" / "examples" / "dax-pud-tour.fsim"
runner = CliRunner()


def test_proc_command_runs_up_to_a_line() -> None:
    result = runner.invoke(app, ["proc", str(DAX), "smaps_rollup", "--task", "A", "--at", "7"])
    assert result.exit_code == 0, result.output
    assert "[rollup]" in result.output
    # Reading smaps split the PUD before gathering: nothing is resident any more.
    assert "Rss:                   0 kB" in result.output
    result = runner.invoke(app, ["proc", str(DAX), "vmstat", "--at", "7"])
    assert "thp_split_pud 0" in result.output


def test_proc_pagemap_raw_is_u64_per_page() -> None:
    result = runner.invoke(app, ["proc", str(DAX), "pagemap", "--task", "A", "--at", "7", "--raw"])
    assert result.exit_code == 0
    assert len(result.stdout_bytes) == (1 << 30) // 4096 * 8


def test_show_folio_dump() -> None:
    result = runner.invoke(
        app, ["show", "folio", str(DAX), "--task", "B", "--addr", "m+4K", "--at", "9"]
    )
    assert result.exit_code == 0, result.output
    assert "page: refcount:3 mapcount:0 mapping:" in result.output
    assert "head: order:18 mapcount:2 entire_mapcount:2 nr_pages_mapped:0 pincount:0" in (
        result.output
    )
    assert "pfn:0x1000001" in result.output


def test_show_map_levels_and_tree() -> None:
    result = runner.invoke(app, ["show", "map", str(DAX), "--task", "B", "--at", "10", "--plain"])
    assert result.exit_code == 0, result.output
    assert "pud" in result.output and "(262144 pages)" in result.output
    assert "PUD 0x7fff80000000 1G leaf" in result.output


def test_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "x.fsim"
    bad.write_text("task A\nA: frobnicate\n")
    assert runner.invoke(app, ["proc", str(bad), "status", "--task", "A"]).exit_code == 2
    assert runner.invoke(app, ["proc", str(DAX), "nosuchfile"]).exit_code == 2


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    from foliosim.report import build_report

    html = build_report(DAX, ["legacy", "seed", "mainline"], at=[7, 10])
    assert 'src="http' not in html and 'href="http' not in html  # nothing fetched
    assert "<script" not in html
    out = tmp_path / "report.html"
    out.write_text(html)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CONSOLE" not in proc.stderr, proc.stderr[-2000:]
    dom = proc.stdout
    for variant in ("legacy", "seed", "mainline"):
        assert f'id="counters-{variant}"' in dom
    assert "vmstat.thp_split_pud" in dom and "A: madvise m+2M 2M DONTNEED" in dom
    assert dom.count("<svg") >= 3


def test_pytest_plugin_collects_only_given_dirs(tmp_path: Path) -> None:
    import sys

    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "ok.fsim").write_text(
        "task A\nA: m = mmap 8K\nA: write m 4K\nexpect A.rss.anon == 1\n"
    )
    (cases / "bad.fsim").write_text(
        "# variants: mainline,legacy\ntask A\nA: m = mmap 8K\nA: write m 4K\n"
        "expect A.rss.anon == 2\n"
    )
    (tmp_path / "elsewhere.fsim").write_text("task A\n")
    base = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--rootdir",
        str(tmp_path),
        "-c",
        "/dev/null",
    ]
    proc = subprocess.run(
        [*base, "--fsim", str(cases), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert "1 passed" in proc.stdout and "2 failed" in proc.stdout, proc.stdout[-3000:]
    assert "| line | statement              | expected | actual |" in proc.stdout
    assert "| 5    | expect A.rss.anon == 2 | == 2     | 1      |" in proc.stdout
    proc = subprocess.run(
        [*base, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 5, proc.stdout[-3000:]  # no tests collected without --fsim


def test_api_docs_examples_run() -> None:
    import foliosim.api

    failures, tried = doctest.testfile(
        str(ROOT / "docs" / "api.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert tried > 10 and failures == 0
    assert doctest.testmod(foliosim.api).failed == 0


def test_kernel_export_keeps_model_imports() -> None:
    import foliosim
    from foliosim.kernel.kernel import Kernel as ModelKernel

    assert foliosim.Kernel is not ModelKernel
    assert foliosim.Kernel.__module__ == "foliosim.api"
