"""Folio dumps in the style of mm/debug.c (__dump_folio, Linux 7.1.8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.physmem import Folio


def dump_folio(k: Kernel, folio: Folio) -> str:
    """A __dump_folio()-style report (mm/debug.c, 7.1.8)."""
    mapping = getattr(folio.mapping, "name", None) or (
        f"anon_vma:{folio.mapping.id}" if folio.anon and folio.mapping is not None else "NULL"  # type: ignore[attr-defined]
    )
    lines = [
        f"page: refcount:{folio.refcount} mapcount:{folio.folio_mapcount()} "
        f"mapping:{mapping} index:{folio.index:#x} pfn:{folio.pfn:#x}",
    ]
    if folio.large:
        lines.append(
            f"head: order:{folio.order} mapcount:{folio.large_mapcount} "
            f"entire_mapcount:{folio.entire_mapcount} "
            f"nr_pages_mapped:{folio.folio_nr_pages_mapped()} pincount:{folio.pincount}"
        )
    kind = "ZONE_DEVICE " if folio.zone_device else ""
    lines.append(f"flags: {kind}{'|'.join(folio.flag_names()) or '0'}")
    return "\n".join(lines)
