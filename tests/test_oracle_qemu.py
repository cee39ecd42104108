"""The QEMU DAX oracle: console parsing and comparison (always), the generated C program
(when gcc -static works) and one guest boot with a few scenarios (when qemu and the cached
images from `foliosim oracle qemu setup` are present; nothing is downloaded here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from foliosim.oracle_qemu import cprog, guest, setup
from foliosim.oracle_qemu.compare import compare, parse_console, run_model
from foliosim.oracle_qemu.run import needs_newer_kernel, variant_for
from foliosim.scenario.statements import parse_text

# The host oracle reads machine-wide vmstat and a QEMU guest madvises its RAM for THPs: the
# real-kernel tests share one xdist worker (--dist loadgroup) so they never overlap.
pytestmark = pytest.mark.xdist_group("real-kernel")

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "conformance" / "dax"
SMOKE = [
    "03-devdax-1g-write.fsim",
    "06-devdax-1g-munmap-unaligned.fsim",
    "10-devdax-1g-fork.fsim",
    "15-devdax-mmap-private.fsim",
]

CONSOLE = """\
@@BOOT 6.18.15+deb13-amd64 3.1 0.0
@@BEGIN s=0
@@O s=0 l=3 e=0 g=- r=0 rss=A:0:0:0
@@O s=0 l=4 e=0 g=- r=7f0000000000 rss=A:0:0:0
@@O s=0 l=5 e=0 g=- r=0 rss=A:1048576:0:0
@@O s=0 l=8 e=0 g=- r=0 rss=A:0:0:0
@@END s=0
@@DMESG
[    1.0] something
@@DONE 3.5 0.1
"""


def load(name: str) -> tuple[str, list[object]]:
    path = SUITE / name
    return str(path), parse_text(str(path), path.read_text())


def test_variant_for_kernel_versions() -> None:
    assert variant_for("6.1.176") == "legacy"
    assert variant_for("6.12.40") == "legacy"
    assert variant_for("6.18.15") == "v6.18"
    assert variant_for("7.3.4") == "mainline"


def test_min_kernel_line_keeps_a_scenario_off_older_guests() -> None:
    text = (SUITE / "32-pagecache-pmd-folio-at-eof.fsim").read_text()
    assert "6.16" in needs_newer_kernel(text, "6.1.176")
    assert needs_newer_kernel(text, "6.18.15") == ""
    assert needs_newer_kernel(text, "7.3.4") == ""
    assert needs_newer_kernel("task A\n", "6.1.176") == ""  # no line: every guest


def test_page_cache_files_get_an_ext4_without_dax() -> None:
    path, stmts = load("32-pagecache-pmd-folio-at-eof.fsim")
    plan = cprog.translate(0, path, stmts)
    assert [d.kind for d in plan.devices] == ["pagecache", "file"]
    script = guest.scenario_script(plan)
    assert "mount -t ext4 /dev/$d /mnt/pagecache" in script and "-o dax" not in script


def test_console_parsed_and_compared() -> None:
    path, stmts = load("03-devdax-1g-write.fsim")
    console = parse_console(CONSOLE)
    assert console.release == "6.18.15+deb13-amd64" and console.done
    guest = console.scenarios[0]
    assert guest.obs[5].rss["A"] == (262144, 0, 0)
    rows = compare(stmts, run_model(path, stmts, "mainline"), guest)  # type: ignore[arg-type]
    verdicts = {r.line: r.verdict for r in rows}
    assert verdicts[5] == "agree" and verdicts[7] == "agree"
    assert verdicts[6] == "not observable"  # level() needs pagemap, which disturbs a PUD
    legacy = compare(stmts, run_model(path, stmts, "legacy"), guest)  # type: ignore[arg-type]
    assert {r.line: r.verdict for r in legacy}[5] == "DISAGREE"


def test_every_suite_scenario_translates() -> None:
    paths = sorted(SUITE.glob("*.fsim"))
    assert len(paths) >= 25
    plans = [
        cprog.translate(n, str(p), parse_text(str(p), p.read_text())) for n, p in enumerate(paths)
    ]
    source = cprog.c_source(plans)
    assert "run_scenario(ops_0" in source


@pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/lib/x86_64-linux-gnu/libc.a").exists(),
    reason="gcc -static is not available (needs gcc and libc6-dev)",
)
def test_guest_program_compiles(tmp_path: Path) -> None:
    plans = [cprog.translate(n, *load(name)) for n, name in enumerate(SMOKE)]  # type: ignore[arg-type]
    binary = cprog.build(plans, tmp_path)
    assert binary.stat().st_size > 100_000


def _smoke_kernel() -> setup.KernelImage | None:
    for spec in ("6.18", "7.3", "6.1"):
        try:
            return setup.find_kernel(spec)
        except setup.SetupError:
            continue
    return None


def test_one_boot_smoke() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    kernel = _smoke_kernel()
    if kernel is None:
        pytest.skip(f"no kernel in the cache {setup.cache_dir()}: run `foliosim oracle qemu setup`")
    if not (setup.userland_dir() / "READY").is_file():
        pytest.skip("guest userland not in the cache: run `foliosim oracle qemu setup`")
    from foliosim.oracle_qemu.run import run_scenarios

    results, boots = run_scenarios([SUITE / n for n in SMOKE], kernel.version)
    assert len(boots) == 1
    assert boots[0].release == kernel.release
    for r in results:
        assert r.status == "ok", (r.path, r.reason)
        assert r.agrees, [row for row in r.rows if row.verdict != "agree"]
