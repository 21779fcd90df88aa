"""``Jobs``: the jobs an ``Inventory`` works on, their bound sources, their planning.

A source is bound once per ``Inventory`` (a few are cached, least recently used out); a job
is recorded in the ledger the first time this process names it, and compared with the
record every time its definition changes; the planner cuts the next range from the cursor,
starting from the size of the job's previous range.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa

from pybatchintory._database import Database
from pybatchintory._planning import (
    RangeCutter,
    check_job_name,
    statement_page_size,
    validate_limits,
    validate_window,
)
from pybatchintory.errors import InvalidArgument, UnknownJob
from pybatchintory.models import JobSpec, Limits, PlannedRange, Weight
from pybatchintory.protocols import (
    BindContext,
    BoundSource,
    FirstPage,
    JobRecord,
    MetadataSource,
    Planner,
)
from pybatchintory.recursion import InventorySource
from pybatchintory.sources import MetaTable, SourceDefaults

__all__ = ("Jobs",)

_BOUND_SOURCES = 32
"""How many bound sources an ``Inventory`` keeps (least recently used are dropped)."""


class Jobs:
    """Bound sources, recorded job definitions and range-size hints of one ``Inventory``."""

    def __init__(self, database: Database, defaults: SourceDefaults | None = None) -> None:
        self._db = database
        self.defaults = defaults or SourceDefaults()
        self._bound: OrderedDict[int, tuple[MetadataSource, BoundSource]] = OrderedDict()
        self._tables: dict[str, MetaTable] = {}
        self._jobs: dict[str, JobSpec] = {}
        self._sources: dict[str, MetadataSource] = {}
        self._hints: dict[str, int] = {}

    def _named(self, source: MetadataSource | str) -> MetadataSource:
        """A table given by name, as one ``MetaTable`` per name: bound once, not per call."""
        if not isinstance(source, str):
            return source
        table = self._tables.get(source)
        if table is None:
            table = self._tables[source] = self.defaults.table(source)
        return table

    async def bind(self, source: MetadataSource | str) -> BoundSource:
        """``source`` bound to its database (cached per source object)."""
        cached = self._bound.get(id(source))
        if cached is not None and cached[0] is source and self._db.is_open:
            # Before isinstance(): a runtime-checkable protocol check is slow on the hot path.
            self._bound.move_to_end(id(source))
            return cached[1]
        source = self._named(source)
        if not isinstance(source, MetadataSource):
            raise InvalidArgument(f"source must be a MetaTable or InventorySource, got {source!r}")
        store = await self._db.open()
        cached = self._bound.get(id(source))
        if cached is not None and cached[0] is source:
            self._bound.move_to_end(id(source))
            return cached[1]
        context = BindContext(
            store=store,
            inventory_engine=self._db.engine,
            engine_for=self._db.engine_for,
            metadata_url=self.defaults.url,
        )
        bound = await source.bind(context)
        self._bound[id(source)] = (source, bound)
        # Least recently used first out: callers that build a new MetaTable per call must
        # not make the Inventory hold every one of them for good.
        while len(self._bound) > _BOUND_SOURCES:
            self._bound.popitem(last=False)
        return bound

    async def window(
        self, job: str, id_start: int | None, id_end: int | None
    ) -> tuple[int | None, int | None]:
        """The window of a call: as given, or the recorded one when the call gives none.

        A job's window is its identity, but callers need not repeat it: a backfill job
        recorded with ``[10, 50]`` is leased again by ``acquire("backfill", files)``. A
        different window is compared with the record (``JobConflict``) by ``prepare``.
        """
        if id_start is not None or id_end is not None:
            return id_start, id_end
        known = self._jobs.get(job)
        if known is not None:
            return known.id_start, known.id_end
        check_job_name(job)
        store = await self._db.open()
        record = await store.get_job(job)
        return (None, None) if record is None else (record.id_start, record.id_end)

    async def prepare(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None,
        max_weight: Weight | None,
        id_start: int | None,
        id_end: int | None,
        record: bool = True,
    ) -> tuple[BoundSource, Limits]:
        """Check the arguments, bind the source, record the job (unless ``record`` is false).

        Raises:
            InvalidArgument: A bad job name, window or limit.
            JobConflict: The job is recorded with another source, window or filter.
        """
        check_job_name(job)
        validate_window(id_start, id_end)
        validate_limits(max_count, max_weight)
        bound = await self.bind(source)
        limits = validate_limits(max_count, max_weight, has_weight=bound.has_weight)
        spec = JobSpec(
            name=job,
            meta_table=bound.name,
            source=bound.describe(),
            id_start=id_start,
            id_end=id_end,
        )
        if record and self._jobs.get(job) != spec:
            await self._db.store.ensure_job(spec)
            self._jobs[job] = spec
        self._sources[job] = self._named(source)
        return bound, limits

    def planner(self, job: str, bound: BoundSource, limits: Limits, id_end: int | None) -> Planner:
        """Cuts ``job``'s next range inside an acquire, from the size of its previous one."""
        return _JobPlanner(self._hints, job, bound, limits, id_end)

    async def record(self, job: str) -> JobRecord:
        """``job`` as recorded in the ledger.

        Raises:
            UnknownJob: It is not recorded.
        """
        check_job_name(job)
        store = await self._db.open()
        record = await store.get_job(job)
        if record is None:
            raise UnknownJob(f"job {job!r} is not recorded in the inventory")
        return record

    async def source_of(self, record: JobRecord, source: MetadataSource | None) -> BoundSource:
        """The bound source of a recorded job: ``source``, the one last used, or rebuilt.

        A job whose metadata table is in the inventory's database, or in the metadata
        database of the ``Inventory``'s defaults (``PYBATCHINTORY_META_URL``), or which reads
        another job's successes, is rebuilt from its record; any other needs ``source``.
        """
        if source is not None:
            return await self.bind(source)
        known = self._sources.get(record.name)
        if known is not None:
            return await self.bind(known)
        described = dict(record.source)
        reachable = described.get("database") == "inventory" or (
            described.get("database") == "separate" and self.defaults.url is not None
        )
        if described.get("kind") == "meta_table" and reachable:
            where = described.get("filter")
            on_inventory = described.get("database") == "inventory"
            rebuilt = MetaTable(
                described["table"],
                id=described["id"],
                weight=described.get("weight"),
                where=None if where is None else sa.text(where),
                # Without url= a table is looked up in the defaults' metadata database.
                url=self._db.url if on_inventory and self.defaults.url is not None else None,
            )
            self._sources[record.name] = rebuilt
            return await self.bind(rebuilt)
        if described.get("kind") == "inventory":
            upstream = InventorySource(described["job"])
            self._sources[record.name] = upstream
            return await self.bind(upstream)
        raise InvalidArgument(
            f"job {record.name!r} reads a metadata database other than the inventory's; "
            "pass source= to reach it, or set PYBATCHINTORY_META_URL and use "
            "Inventory.from_settings()"
        )


class _JobPlanner:
    """The planner of one acquire: ``await planner(link, cursor)`` cuts the next range.

    ``first_page`` offers the cut's first page as a statement to a store that runs the
    whole acquire as one statement (``FirstPage``); ``taken`` hears what such a store cut.
    """

    __slots__ = ("_bound", "_hints", "_id_end", "_job", "_limits")

    def __init__(
        self,
        hints: dict[str, int],
        job: str,
        bound: BoundSource,
        limits: Limits,
        id_end: int | None,
    ) -> None:
        self._hints = hints
        self._job = job
        self._bound = bound
        self._limits = limits
        self._id_end = id_end

    async def __call__(self, link: object | None, cursor: int | None) -> PlannedRange | None:
        end = self._id_end
        horizon = await self._bound.horizon(link)
        if horizon is not None:
            end = horizon if end is None else min(end, horizon)
        cutter = RangeCutter(
            after=cursor, end=end, limits=self._limits, hint=self._hints.get(self._job)
        )
        while (request := cutter.request()) is not None:
            cutter.feed(await self._bound.summarize(request, link))
        cut = cutter.result()
        if cut is not None:
            self.taken(cut)
        return cut

    def taken(self, cut: PlannedRange) -> None:
        """A range was cut: its count sizes the job's next first page (unless oversized)."""
        if not cut.oversized:
            self._hints[self._job] = cut.count

    def first_page(self, engine: Any) -> FirstPage | None:
        """The first page of the cut as a statement, if the source can give one."""
        offer = getattr(self._bound, "first_page", None)
        if offer is None:
            return None
        # The page's size and caps do not depend on the cursor (only the hint does).
        cutter = RangeCutter(
            after=None, end=self._id_end, limits=self._limits, hint=self._hints.get(self._job)
        )
        request = cutter.request()
        if request is None:
            return None
        if request.limit is not None and request.max_weight is not None:
            # A few fixed sizes, so the store's statement (the size written into it) and
            # the database's plan for it stay the same from one lease to the next.
            size = statement_page_size(request.limit, self._limits.max_count)
            request = dataclasses.replace(request, limit=size)
        found = offer(engine, request)
        if found is None:
            return None
        query, rows, params = found
        return FirstPage(
            query=query,
            rows=rows,
            params=params,
            limit=request.limit,
            max_count=self._limits.max_count,
            max_weight=self._limits.max_weight,
            taken=self.taken,
        )
