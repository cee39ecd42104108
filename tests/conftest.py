"""Shared helpers: a kernel per configuration and small scenario runners."""

from __future__ import annotations

import pytest

from foliosim.config import KernelConfig, make_geometry, resolve_options
from foliosim.kernel.kernel import Kernel
from foliosim.scenario.runner import Run, execute
from foliosim.scenario.statements import parse_text
from foliosim.variants import get_variant


def make_kernel(
    variant: str = "mainline",
    arch: str = "x86_64",
    granule: str = "4K",
    levels: int = 4,
    **overrides: bool,
) -> Kernel:
    geo = make_geometry(arch, levels, granule)
    options = resolve_options(arch, overrides)
    config = KernelConfig(geo, options, "madvise", {}, variant)
    return Kernel(config, get_variant(variant))


def run_text(text: str, variant: str | None = None, check_each: bool = True) -> Run:
    return execute("<test>", parse_text("<test>", text), variant=variant, check_each=check_each)


@pytest.fixture
def kernel() -> Kernel:
    return make_kernel()
