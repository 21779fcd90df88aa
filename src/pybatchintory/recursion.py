"""``InventorySource``: a job whose source is another job's succeeded attempts.

The downstream job's ids are the upstream ranges' ``meta_id_start``: one succeeded upstream
attempt is one downstream row, with the upstream weight (or count, without weights) as its
weight. The horizon stops before the oldest upstream range that is still running, waiting
for a retry, or dead, so a downstream cursor never passes a range that may still succeed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pybatchintory.errors import InvalidArgument
from pybatchintory.models import Attempt
from pybatchintory.protocols import (
    BindContext,
    InventoryStore,
    PageRequest,
    PageSummary,
    RangeCount,
)
from pybatchintory.weights import as_weight, exact
from pybatchintory.weights import total as sum_weights

__all__ = ("InventorySource",)

_PAGE = 1000
_RECOUNT_CHUNK = 100


class InventorySource:
    """Another job's succeeded attempts, in id order, as a metadata source.

    Args:
        job: The upstream job's name.
    """

    def __init__(self, job: str) -> None:
        if not isinstance(job, str) or not job:
            raise InvalidArgument(f"InventorySource needs an upstream job name, got {job!r}")
        self.job = job

    @property
    def name(self) -> str:
        """``inventory:<job>``, stored as the downstream ledger's ``meta_table``."""
        return f"inventory:{self.job}"

    def __repr__(self) -> str:
        return f"InventorySource({self.job!r})"

    async def bind(self, context: BindContext) -> BoundInventorySource:
        """Bind to the inventory's store (the upstream job need not exist yet)."""
        return BoundInventorySource(self.job, context.store)


def _item(attempt: Attempt) -> dict[str, Any]:
    return {
        "id": attempt.meta_id_start,
        "attempt_id": attempt.id,
        "job": attempt.job,
        "meta_table": attempt.meta_table,
        "meta_id_start": attempt.meta_id_start,
        "meta_id_end": attempt.meta_id_end,
        "count": attempt.count,
        "weight": attempt.weight,
        "attempt": attempt.attempt,
        "result": attempt.result,
        "processing_end": attempt.processing_end,
    }


def _weight(attempt: Attempt) -> int | Decimal:
    return exact(attempt.weight) or attempt.count


class BoundInventorySource:
    """An ``InventorySource`` bound to a store."""

    has_weight = True

    def __init__(self, job: str, store: InventoryStore) -> None:
        self.job = job
        self.store = store
        self.name = f"inventory:{job}"

    def describe(self) -> dict[str, Any]:
        """Identity: the upstream job."""
        return {"kind": "inventory", "job": self.job}

    async def horizon(self, link: object | None) -> int | None:
        """Just before the oldest upstream range that has not succeeded yet."""
        oldest = await self.store.oldest_open_start(self.job)
        return None if oldest is None else oldest - 1

    async def _read(
        self, after: int | None, end: int | None, limit: int | None, *, planning: bool = False
    ) -> list[Attempt]:
        return await self.store.succeeded_ranges(
            self.job, after=after, end=end, limit=limit, before_open=planning
        )

    async def summarize(self, request: PageRequest, link: object | None) -> PageSummary:
        """Aggregate up to ``request.limit`` upstream successes after ``request.after``."""
        # Inside an acquire (``link`` given) the horizon bounds ``request.end`` already, but
        # it was read before this page: the page re-applies it in its own statement, so both
        # come from one snapshot. Outside one (backlog, dry runs) every success counts.
        rows = await self._read(
            request.after, request.end, request.limit, planning=link is not None
        )
        if not rows:
            return PageSummary(0, None, 0, None, 0, 0, None, 0)
        total: int | Decimal = 0
        fit_weight: int | Decimal = 0
        fit_rows = 0
        fit_last: int | None = None
        cap = None if request.max_weight is None else exact(request.max_weight)
        for row in rows:
            total += _weight(row)
            if cap is None or total <= cap:
                fit_rows += 1
                fit_weight = total
                fit_last = row.meta_id_start
        return PageSummary(
            rows=len(rows),
            first_id=rows[0].meta_id_start,
            first_weight=as_weight(_weight(rows[0])),
            last_id=rows[-1].meta_id_start,
            weight=as_weight(total),
            fit_rows=fit_rows,
            fit_last_id=fit_last,
            fit_weight=as_weight(fit_weight),
        )

    async def items(self, start: int, end: int) -> list[Mapping[str, Any]]:
        """The upstream attempt records whose range starts in ``[start, end]``."""
        return [_item(a) for a in await self._read(start - 1, end, None)]

    async def iter_items(
        self, start: int, end: int, chunk_size: int
    ) -> AsyncIterator[Mapping[str, Any]]:
        """The upstream attempt records, ``chunk_size`` at a time."""
        after = start - 1
        while True:
            rows = await self._read(after, end, chunk_size)
            for row in rows:
                yield _item(row)
            if len(rows) < chunk_size:
                return
            after = rows[-1].meta_id_start

    async def recount(self, ranges: Sequence[tuple[int, int]]) -> list[RangeCount]:
        """Current number and weight of upstream successes in each range.

        One read per chunk of ranges (the successes spanning the chunk), not one per range.
        """
        out: list[RangeCount] = []
        for offset in range(0, len(ranges), _RECOUNT_CHUNK):
            chunk = ranges[offset : offset + _RECOUNT_CHUNK]
            low = min(start for start, _ in chunk)
            high = max(end for _, end in chunk)
            rows = await self._read(low - 1, high, None)
            starts = [row.meta_id_start for row in rows]  # in id order
            for start, end in chunk:
                inside = rows[bisect_left(starts, start) : bisect_right(starts, end)]
                weight = sum_weights(*(_weight(r) for r in inside))
                out.append(RangeCount(start, end, len(inside), weight))
        return out
