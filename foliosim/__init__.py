"""foliosim: an executable model of Linux huge-page mapping and folio accounting.

The model follows Linux 7.1.8 (variant ``mainline``), with the ``seed`` (v1 patch 07 of
"fs/dax: Fix FS DAX page reference counts", June 2024) and ``legacy`` (6.1) variants.

``from foliosim import Kernel`` gives the Python API of foliosim/api.py (loaded on first use,
so ``import foliosim.kernel`` and the command line do not pay for it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foliosim.api import FolioView, Kernel, Task

__version__ = "0.1.0"
__all__ = ["FolioView", "Kernel", "Task", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Kernel", "Task", "FolioView"):
        from foliosim import api

        return getattr(api, name)
    raise AttributeError(f"module 'foliosim' has no attribute {name!r}")
