"""foliosim: an executable model of Linux huge-page mapping and folio accounting.

The model follows Linux 7.1.8 (variant ``mainline``), with the ``seed`` (v1 patch 07 of
"fs/dax: Fix FS DAX page reference counts", June 2024) and ``legacy`` (6.1) variants.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
