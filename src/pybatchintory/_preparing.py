"""Preparing a job for an acquire: bind its source, record it, plan its next range.

Mixed into ``Inventory``. A source is bound once per ``Inventory`` (a few are cached, least
recently used out); a job is recorded in the ledger the first time this process names it,
and compared with the record every time its definition changes; the planner cuts the next
range from the cursor, starting from the size of the job's previous range.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pybatchintory._planning import (
    RangeCutter,
    check_job_name,
    validate_limits,
    validate_window,
)
from pybatchintory.errors import InvalidArgument
from pybatchintory.models import JobSpec, Limits, PlannedRange
from pybatchintory.protocols import BindContext, BoundSource, InventoryStore, MetadataSource
from pybatchintory.sources import MetaTable

__all__ = ("Preparing",)

_BOUND_SOURCES = 32
"""How many bound sources an ``Inventory`` keeps (least recently used are dropped)."""


class Preparing:
    """Mixed into ``Inventory``: binding sources, recording jobs, planning ranges."""

    if TYPE_CHECKING:
        _store: InventoryStore | None
        _bound: OrderedDict[int, tuple[MetadataSource, BoundSource]]
        _tables: dict[str, MetaTable]
        _jobs: dict[str, JobSpec]
        _sources: dict[str, MetadataSource]
        _hints: dict[str, int]
        _engine_for: Callable[[str], AsyncEngine]

        @property
        def store(self) -> InventoryStore: ...

        @property
        def engine(self) -> AsyncEngine: ...

        async def open(self) -> Any: ...

    def _named(self, source: MetadataSource | str) -> MetadataSource:
        """A table given by name, as one ``MetaTable`` per name: bound once, not per call."""
        if not isinstance(source, str):
            return source
        table = self._tables.get(source)
        if table is None:
            table = self._tables[source] = MetaTable(source)
        return table

    async def _bind(self, source: MetadataSource | str) -> BoundSource:
        cached = self._bound.get(id(source))
        if cached is not None and cached[0] is source and self._store is not None:
            # Before isinstance(): a runtime-checkable protocol check is slow on the hot path.
            self._bound.move_to_end(id(source))
            return cached[1]
        source = self._named(source)
        if not isinstance(source, MetadataSource):
            raise InvalidArgument(f"source must be a MetaTable or InventorySource, got {source!r}")
        await self.open()
        cached = self._bound.get(id(source))
        if cached is not None and cached[0] is source:
            self._bound.move_to_end(id(source))
            return cached[1]
        context = BindContext(
            store=self.store, inventory_engine=self.engine, engine_for=self._engine_for
        )
        bound = await source.bind(context)
        self._bound[id(source)] = (source, bound)
        # Least recently used first out: callers that build a new MetaTable per call must
        # not make the Inventory hold every one of them for good.
        while len(self._bound) > _BOUND_SOURCES:
            self._bound.popitem(last=False)
        return bound

    async def _prepare(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None,
        max_weight: int | None,
        id_start: int | None,
        id_end: int | None,
        record: bool = True,
    ) -> tuple[BoundSource, Limits]:
        check_job_name(job)
        validate_window(id_start, id_end)
        validate_limits(max_count, max_weight)
        bound = await self._bind(source)
        limits = validate_limits(max_count, max_weight, has_weight=bound.has_weight)
        spec = JobSpec(
            name=job,
            meta_table=bound.name,
            source=bound.describe(),
            id_start=id_start,
            id_end=id_end,
        )
        if record and self._jobs.get(job) != spec:
            await self.store.ensure_job(spec)
            self._jobs[job] = spec
        self._sources[job] = self._named(source)
        return bound, limits

    def _planner(self, job: str, bound: BoundSource, limits: Limits, id_end: int | None) -> Any:
        async def plan(link: object | None, cursor: int | None) -> PlannedRange | None:
            end = id_end
            horizon = await bound.horizon(link)
            if horizon is not None:
                end = horizon if end is None else min(end, horizon)
            cutter = RangeCutter(after=cursor, end=end, limits=limits, hint=self._hints.get(job))
            while (request := cutter.request()) is not None:
                cutter.feed(await bound.summarize(request, link))
            cut = cutter.result()
            if cut is not None and not cut.oversized:
                self._hints[job] = cut.count
            return cut

        return plan
