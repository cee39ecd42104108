"""Reference ownership: which kernel path holds which folio reference, and use-after-put.

Each instrumented kernel path runs as a :class:`RefContext`. A context holds references it
took (folio_get, try_grab_folio) or adopted from an entry it cleared (the PTE/PMD/PUD entry's
or the page cache's reference passes to the code that removed the entry), and gives them up
with folio_put or by handing them over (to a page-table entry, to the mmu_gather batch, to a
pin). Touching a folio is allowed while the context holds a reference or while a lifetime
rule covers it — the model's rule is "the page-table lock is held and the entry being looked
at still maps the folio" (declared with :meth:`RefContext.under_lock`, ended by the entry's
clearing). Strict ownership: once a context gave its reference up it may not touch the folio,
whatever other references happen to keep the folio alive (device-dax's idle reference does,
which is why the seed's split ordering never crashed on device-dax).

Reports, kernel-style: "BUG: KASAN: use-after-put" (a touch without reference or rule),
"BUG: KASAN: put of a reference not held" (underflow), "BUG: reference leak" (still held when
the context ends). The checker is sequential: real concurrency (another CPU freeing the folio
in the window) is out of its reach; it finds orderings that are wrong on any schedule.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foliosim.kernel.kernel import Kernel
    from foliosim.kernel.physmem import Folio


class RefContext:
    """One kernel path's view of the references it holds; a context manager (a class rather
    than a generator: it runs on every COW fault and page-cache removal)."""

    __slots__ = ("covered", "folios", "held", "name", "owner")

    def __init__(self, owner: Ownership, name: str) -> None:
        self.owner = owner
        self.name = name
        self.held: defaultdict[int, int] = defaultdict(int)
        self.covered: set[int] = set()
        self.folios: dict[int, Folio] = {}

    def __enter__(self) -> RefContext:
        self.owner.stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner._leaves(self)

    def _note(self, folio: Folio) -> int:
        self.folios[id(folio)] = folio
        return id(folio)

    def under_lock(self, folio: Folio) -> None:
        """The context reads an entry that maps folio with the page-table lock held."""
        self.covered.add(self._note(folio))

    def entry_cleared(self, folio: Folio, adopt: bool = True) -> None:
        """The entry mapping folio was cleared: the lock no longer covers it; with ``adopt``
        the entry's reference now belongs to this context."""
        key = self._note(folio)
        self.covered.discard(key)
        if adopt:
            self.held[key] += 1

    def get(self, folio: Folio, n: int = 1) -> None:
        self.held[self._note(folio)] += n

    def put(self, folio: Folio, n: int = 1) -> None:
        key = self._note(folio)
        if self.held[key] < n:
            self.owner.report(
                "BUG: KASAN", f"put of a reference not held in {self.name}", folio, self
            )
            self.held[key] = 0
        else:
            self.held[key] -= n

    def hand_over(self, folio: Folio, n: int = 1, to: str = "") -> None:
        """The reference goes to an entry, the mmu_gather or another holder."""
        key = self._note(folio)
        self.held[key] = max(self.held[key] - n, 0)

    def touch(self, folio: Folio, what: str) -> None:
        key = self._note(folio)
        if self.held[key] > 0 or key in self.covered:
            return
        self.owner.report(
            "BUG: KASAN",
            f"use-after-put in {self.name}: {what} after the context gave up its reference",
            folio,
            self,
        )


class Ownership:
    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.enabled = True
        self.stack: list[RefContext] = []

    def context(self, name: str) -> RefContext:
        """``with k.ownership.context("fn") as ctx:`` — a kernel path that holds references."""
        return RefContext(self, name)

    def _leaves(self, ctx: RefContext) -> None:
        self.stack.pop()
        if self.enabled:
            for key, count in ctx.held.items():
                if count > 0:
                    self.report(
                        "BUG",
                        f"reference leak: {ctx.name} ended holding {count} reference(s)",
                        ctx.folios[key],
                        ctx,
                    )

    def report(self, kind: str, message: str, folio: Folio, ctx: RefContext) -> None:
        if not self.enabled:
            return
        from foliosim.kernel.debug import dump_folio

        chain = " <- ".join(c.name for c in reversed(self.stack)) or ctx.name
        self.k.reports.add(
            kind, ctx.name, message, details=f"{dump_folio(self.k, folio)}\ncall chain: {chain}"
        )
