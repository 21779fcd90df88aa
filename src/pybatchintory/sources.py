"""Built-in metadata sources: ``MetaTable`` (a SQL table) and ``InventorySource`` (recursion).

A source is a *description*; ``bind()`` resolves it against a real database (reflection,
validation) and returns a bound source that answers the planner's page summaries with one
aggregate query each. Only SQLAlchemy Core is used here, no dialect: what differs between
databases lives in the adapters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from pybatchintory._filters import (
    Filter,
    check_filter_kind,
    column_of,
    describe_filter,
    resolve_filter,
)
from pybatchintory.errors import (
    InvalidArgument,
    InvalidColumn,
    UnknownTable,
)
from pybatchintory.models import Weight
from pybatchintory.protocols import (
    BindContext,
    PageRequest,
    PageSummary,
    RangeCount,
    StatementLink,
    split_weighted_page,
)
from pybatchintory.weights import as_weight

__all__ = ("Filter", "MetaTable", "SourceDefaults", "page_params")


_RECOUNT_CHUNK = 200


@dataclass(frozen=True, slots=True)
class SourceDefaults:
    """How an ``Inventory`` completes a source named by a string, or a ``MetaTable`` without url.

    ``Inventory.from_settings()`` fills it from ``PYBATCHINTORY_META_URL``, ``META_ID``,
    ``META_WEIGHT`` and ``META_TIMESTAMP``; a plain ``Inventory(url)`` uses the defaults here
    (the inventory's own database, an ``id`` column, no weight, no timestamp).

    Attributes:
        url: The metadata database of a source that names none; ``None``: the inventory's.
        id: Id column of a table named by a string.
        weight: Weight column of a table named by a string.
        timestamp: Timestamp column of a table named by a string.
    """

    url: str | None = None
    id: str = "id"
    weight: str | None = None
    timestamp: str | None = None

    def table(self, name: str) -> MetaTable:
        """The ``MetaTable`` a string ``name`` stands for."""
        return MetaTable(name, id=self.id, weight=self.weight, timestamp=self.timestamp)


class MetaTable:
    """A metadata table in a SQL database: one row per data asset.

    Args:
        table: Table name; ``"schema.table"`` is allowed.
        id: Unique, increasing integer column.
        weight: Optional size column; without it ``max_weight`` is an error.
        timestamp: Optional insertion-time column; needed for ``settle``.
        settle: Never hand out rows younger than this (needs ``timestamp``).
        where: A filter: a SQLAlchemy expression, a callable ``(table) -> expression``,
            or a mapping ``{"column": value | [values]}``. Raw strings are refused.
        url: The metadata database; ``None`` uses the inventory's database (or the one
            named by ``PYBATCHINTORY_META_URL`` on an ``Inventory.from_settings()``).

    Raises:
        InvalidArgument: On a raw string filter, ``settle`` without ``timestamp``, or an
            empty table name. Table and columns are checked when the table is first used.
    """

    def __init__(
        self,
        table: str,
        *,
        id: str = "id",
        weight: str | None = None,
        timestamp: str | None = None,
        settle: timedelta | None = None,
        where: Filter = None,
        url: str | None = None,
    ) -> None:
        if not isinstance(table, str) or not table.strip():
            raise InvalidArgument(f"table must be a non-empty name, got {table!r}")
        if settle is not None:
            if not isinstance(settle, timedelta) or settle < timedelta(0):
                raise InvalidArgument(f"settle must be a non-negative timedelta, got {settle!r}")
            if timestamp is None:
                raise InvalidArgument("settle= needs a timestamp column: MetaTable(timestamp=...)")
        check_filter_kind(where)
        self.table = table
        self.id = id
        self.weight = weight
        self.timestamp = timestamp
        self.settle = settle
        self.where = where
        self.url = url

    @property
    def name(self) -> str:
        """The table name, as stored in the ledger's ``meta_table`` column."""
        return self.table

    def __repr__(self) -> str:
        return f"MetaTable({self.table!r}, id={self.id!r}, weight={self.weight!r})"

    async def bind(self, context: BindContext) -> BoundMetaTable:
        """Reflect and validate the table; return a queryable source.

        Raises:
            UnknownTable: The table does not exist.
            UnknownColumn: A named column does not exist.
            InvalidColumn: The id column is not an integer, or the weight is not numeric.
        """
        url = self.url if self.url is not None else context.metadata_url
        engine = context.inventory_engine if url is None else context.engine_for(url)
        schema, _, name = self.table.rpartition(".")
        try:
            async with engine.connect() as conn:
                table = await conn.run_sync(
                    lambda sync: sa.Table(
                        name, sa.MetaData(), schema=schema or None, autoload_with=sync
                    )
                )
        except NoSuchTableError as exc:
            where = engine.url.render_as_string(hide_password=True)
            hint = (
                "pass MetaTable(..., url=...) or set PYBATCHINTORY_META_URL if it lives in "
                "another database"
                if url is None
                else "check PYBATCHINTORY_META_TABLE / the table name and the metadata URL"
            )
            raise UnknownTable(
                f"metadata table {self.table!r} does not exist in {where}: {hint}"
            ) from exc
        return BoundMetaTable(self, engine, table, separate=engine is not context.inventory_engine)


class _AsRead(sa.types.UserDefinedType[Any]):
    """A sum of weights, as the driver reads it: ``int``, ``float`` or ``Decimal``.

    Without it SQLAlchemy would process a ``NUMERIC`` sum as the column's type (and warn on
    SQLite, which has no decimals); ``as_weight`` makes the value what the API shows.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "NUMERIC"


_CAP = sa.Numeric(38, 10)
"""The weight cap's bound type: ``NUMERIC`` compares with integer, float and decimal sums."""


def page_params(request: PageRequest) -> dict[str, Any]:
    """The bound parameters of a page summary; the weight cap as a ``Decimal``.

    ``1.5`` and ``10**9`` alike: the cap is compared with a running sum of any numeric
    column, and a float becomes the decimal of its shortest repr, not its binary value.
    """
    params: dict[str, Any] = {
        "p_after": request.after,
        "p_end": request.end,
        "p_limit": request.limit,
        "p_max_weight": None if request.max_weight is None else _decimal(request.max_weight),
    }
    return {k: v for k, v in params.items() if v is not None}


def _decimal(value: Weight) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _python_type(column: sa.Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


class BoundMetaTable:
    """A ``MetaTable`` resolved against its database. Built by ``MetaTable.bind``."""

    def __init__(
        self, spec: MetaTable, engine: AsyncEngine, table: sa.Table, *, separate: bool = False
    ) -> None:
        self.spec = spec
        self.separate = separate
        self.engine = engine
        self.table = table
        self.name = spec.table
        self.id_col = column_of(table, spec.id, "id")
        if not isinstance(self.id_col.type, sa.Integer):
            raise InvalidColumn(
                f"id column {spec.id!r} of {spec.table!r} must be an integer column, "
                f"not {self.id_col.type}"
            )
        self.weight_col: sa.Column[Any] | None = None
        if spec.weight is not None:
            self.weight_col = column_of(table, spec.weight, "weight")
            if _python_type(self.weight_col) not in (int, float, Decimal) or isinstance(
                self.weight_col.type, sa.Boolean
            ):
                raise InvalidColumn(
                    f"weight column {spec.weight!r} of {spec.table!r} must be numeric "
                    f"(integer, FLOAT, REAL or NUMERIC), not {self.weight_col.type}"
                )
        self.has_weight = self.weight_col is not None
        self.ts_col: sa.Column[Any] | None = None
        if spec.timestamp is not None:
            self.ts_col = column_of(table, spec.timestamp, "timestamp")
        self.condition = resolve_filter(table, spec.where)
        self._filter_text = describe_filter(self.condition, spec.table)
        self._page_queries: dict[tuple[bool, bool, bool, bool, bool], Any] = {}
        self._page_rows: dict[tuple[bool, bool, bool, bool, bool], Any] = {}
        # PostgreSQL reads a weighted page as a plain-sum head and a windowed tail
        # (``_split_summary``): LATERAL and a skipped branch need its planner.
        self._splits = self.engine.dialect.name == "postgresql"
        self._horizon_query: sa.Select[Any] | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able identity: what a job records and later compares."""
        return {
            "kind": "meta_table",
            "table": self.spec.table,
            "id": self.spec.id,
            "weight": self.spec.weight,
            "filter": self._filter_text,
            "database": "separate" if self.separate else "inventory",
        }

    # -- queries --------------------------------------------------------------------------

    def _where(self, after: int | None, end: int | None) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if after is not None:
            clauses.append(self.id_col > after)
        if end is not None:
            clauses.append(self.id_col <= end)
        if self.condition is not None:
            clauses.append(self.condition)
        return clauses

    def _weight_expr(self) -> ColumnElement[Any]:
        if self.weight_col is None:
            return sa.literal(0, sa.BigInteger)
        return sa.type_coerce(sa.func.coalesce(self.weight_col, 0), _AsRead())

    def _link(self, link: object | None) -> AsyncConnection | None:
        if isinstance(link, AsyncConnection) and link.engine is self.engine:
            return link
        return None

    def _statement_link(self, link: object | None) -> StatementLink | None:
        # Duck-typed: isinstance() against a runtime-checkable protocol costs more than
        # the rest of a page summary's Python work.
        if getattr(link, "engine", None) is self.engine and hasattr(link, "fetch_one"):
            return link  # type: ignore[return-value]
        return None

    async def _scalar_row(
        self, query: sa.Select[Any], link: object | None, params: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """The one row of an aggregate ``query``.

        On the store's open transaction if ``link`` is one on this engine, else on a fresh
        connection.
        """
        direct = self._statement_link(link)
        if direct is not None:
            row = await direct.fetch_one(query, params or {})
            assert row is not None, "an aggregate query returned no row"
            return tuple(row)
        conn = self._link(link)
        if conn is not None:
            return tuple((await conn.execute(query, params)).one())
        async with self.engine.connect() as own:
            return tuple((await own.execute(query, params)).one())

    async def horizon(self, link: object | None) -> int | None:
        """Highest id older than ``settle`` (all rows when ``settle`` is not set)."""
        if self.spec.settle is None or self.ts_col is None:
            return None
        timezone_aware = bool(getattr(self.ts_col.type, "timezone", False))
        cutoff = datetime.now(UTC) - self.spec.settle
        if not timezone_aware:
            cutoff = cutoff.replace(tzinfo=None)
        if self._horizon_query is None:  # built once: the cutoff is a bound parameter
            self._horizon_query = sa.select(sa.func.min(self.id_col)).where(
                sa.or_(
                    self.ts_col > sa.bindparam("p_cutoff", type_=self.ts_col.type),
                    self.ts_col.is_(None),
                )
            )
        youngest = (await self._scalar_row(self._horizon_query, link, {"p_cutoff": cutoff}))[0]
        return None if youngest is None else int(youngest) - 1

    def _shape(
        self, request: PageRequest, *, after: bool = False
    ) -> tuple[bool, bool, bool, bool, bool]:
        """The page-summary statement ``request`` needs: ``_page_query``'s key.

        ``after``: it has a cursor even if ``request.after`` is ``None`` (a first page).
        """
        weighted = request.max_weight is not None
        has_after = after or request.after is not None
        split = (
            self._splits
            and weighted
            and has_after
            and request.limit is not None
            and split_weighted_page(request.limit) is not None
        )
        return (
            has_after,
            request.end is not None,
            request.limit is not None,
            weighted,
            split,
        )

    @staticmethod
    def _params(request: PageRequest, key: tuple[bool, ...]) -> dict[str, Any]:
        """``page_params``, and a split page's ``p_head_limit`` and ``p_tail_limit``."""
        params = page_params(request)
        split = None if request.limit is None else split_weighted_page(request.limit)
        if key[-1] and split is not None:  # ``_shape`` split it: the limits are known
            params["p_head_limit"], params["p_tail_limit"] = split
        return params

    def _page_query(
        self, has_after: bool, has_end: bool, has_limit: bool, weighted: bool, split: bool
    ) -> Any:
        """The page-summary statement of one shape, built once (bound parameters ``p_*``)."""
        key = (has_after, has_end, has_limit, weighted, split)
        cached = self._page_queries.get(key)
        if cached is not None:
            return cached
        clauses: list[ColumnElement[bool]] = []
        if has_after:
            clauses.append(self.id_col > sa.bindparam("p_after", type_=sa.BigInteger()))
        if has_end:
            clauses.append(self.id_col <= sa.bindparam("p_end", type_=sa.BigInteger()))
        if self.condition is not None:
            clauses.append(self.condition)
        if split:
            whole = (has_after, has_end, has_limit, weighted, False)
            self._page_query(*whole)  # the page's rows are the one-piece summary's
            self._page_rows[key] = self._page_rows[whole]
            split_query = self._split_summary(clauses[1:])  # all but ``p_after``: it has one
            self._page_queries[key] = split_query
            return split_query
        page = (
            sa.select(self.id_col.label("id"), self._weight_expr().label("w"))
            .where(*clauses)
            .order_by(self.id_col)
        )
        if has_limit:
            page = page.limit(sa.bindparam("p_limit", type_=sa.Integer()))
        self._page_rows[key] = page
        rows = page.subquery("page")
        query: sa.Select[Any]
        if not weighted:
            total = sa.func.coalesce(sa.func.sum(rows.c.w), 0)
            query = sa.select(
                sa.func.count(),
                sa.func.min(rows.c.id),
                sa.literal(0, sa.BigInteger()),
                sa.func.max(rows.c.id),
                total,
                sa.func.count(),
                sa.func.max(rows.c.id),
                total,
            )
        else:
            running = sa.select(
                rows.c.id,
                rows.c.w,
                # ROWS, not the default RANGE frame: ids are unique, so both give the same
                # running sum, and ROWS spares the database its search for peer rows.
                sa.func.sum(rows.c.w).over(order_by=rows.c.id, rows=(None, 0)).label("cw"),
            ).subquery("running")
            fits = running.c.cw <= sa.bindparam("p_max_weight", type_=_CAP)
            query = sa.select(
                sa.func.count(),
                sa.func.min(running.c.id),
                sa.func.min(running.c.cw),
                sa.func.max(running.c.id),
                sa.func.coalesce(sa.func.sum(running.c.w), 0),
                sa.func.coalesce(sa.func.sum(sa.case((fits, 1), else_=0)), 0),
                sa.func.max(sa.case((fits, running.c.id))),
                sa.func.coalesce(sa.func.max(sa.case((fits, running.c.cw))), 0),
            )
        self._page_queries[key] = query
        return query

    def _split_summary(self, rest: list[ColumnElement[bool]]) -> Any:
        """A weighted page summary read as a head and a tail (``split_weighted_page``).

        The head (``p_head_limit`` rows after ``p_after``) is read with plain aggregates.
        If none of its weights is negative and their sum is within the cap, every head row
        fits, and the running sum (a window function, the costly part) runs over the tail
        only (``p_tail_limit`` rows after the head), starting from the head's sum; else
        over the whole page (``p_limit`` rows), as the one-piece summary does. The branch
        not taken is skipped (a one-time filter), so each row is read once in the common
        case. ``rest``: the conditions other than ``p_after``. Same eight columns, same
        values as the one-piece summary (``test_page_summaries_agree``).
        """
        id_col, weight = self.id_col, self._weight_expr()
        cap = sa.bindparam("p_max_weight", type_=_CAP)

        def rows(after: Any, gate: Any, limit: str, outer: Any = None) -> sa.Select[Any]:
            where = [id_col > after, *rest] if gate is None else [id_col > after, gate, *rest]
            query = (
                sa.select(id_col.label("id"), weight.label("w"))
                .where(*where)
                .order_by(id_col)
                .limit(sa.bindparam(limit, type_=sa.Integer()))
            )
            return query if outer is None else query.correlate(outer)

        after = sa.bindparam("p_after", type_=sa.BigInteger())
        head_rows = rows(after, None, "p_head_limit").subquery("pbi_head_rows")
        sums = sa.select(
            sa.func.count().label("n"),
            sa.func.sum(head_rows.c.w).label("s"),
            sa.func.min(head_rows.c.w).label("lo"),
            sa.func.min(head_rows.c.id).label("first"),
            sa.func.max(head_rows.c.id).label("last"),
        ).subquery("pbi_head_sums")
        fits_all = sa.and_(sums.c.n > 0, sums.c.lo >= 0, sums.c.s <= cap)
        first_weight = sa.select(weight).where(id_col == sums.c.first).scalar_subquery()
        head = (
            sa.select(
                sums,
                sa.func.coalesce(fits_all, sa.false()).label("ok"),
                first_weight.label("first_w"),
            )
            # OFFSET 0 keeps the head a subquery of its own: pulled up into the join, the
            # first row's weight would be read again for every tail row.
            .offset(sa.literal_column("0", sa.Integer()))
            .subquery("pbi_head")
        )
        ok = head.c.ok
        quick = rows(head.c.last, ok, "p_tail_limit", head).subquery("pbi_quick")
        whole = rows(after, sa.not_(ok), "p_limit", head).subquery("pbi_whole")
        tail = sa.union_all(sa.select(quick), sa.select(whole)).subquery("pbi_tail")
        start = sa.case((ok, head.c.s), else_=sa.literal(0))
        running = sa.select(
            tail.c.id,
            tail.c.w,
            (start + sa.func.sum(tail.c.w).over(order_by=tail.c.id, rows=(None, 0))).label("cw"),
        ).lateral("pbi_running")
        fits = running.c.cw <= cap
        n_head = sa.func.max(sa.case((ok, head.c.n), else_=0))
        head_last = sa.func.max(sa.case((ok, head.c.last)))
        head_sum = sa.func.max(sa.case((ok, head.c.s)))
        least_cw = sa.func.min(running.c.cw)
        return sa.select(
            n_head + sa.func.count(running.c.id),
            sa.func.coalesce(sa.func.max(sa.case((ok, head.c.first))), sa.func.min(running.c.id)),
            sa.case(
                (sa.func.bool_or(ok), sa.func.least(sa.func.max(head.c.first_w), least_cw)),
                else_=least_cw,
            ),
            sa.func.coalesce(sa.func.max(running.c.id), head_last),
            sa.func.coalesce(head_sum, 0) + sa.func.coalesce(sa.func.sum(running.c.w), 0),
            n_head + sa.func.coalesce(sa.func.sum(sa.case((fits, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.max(sa.case((fits, running.c.id))), head_last),
            sa.func.coalesce(
                sa.func.greatest(head_sum, sa.func.max(sa.case((fits, running.c.cw)))), 0
            ),
        ).select_from(head.outerjoin(running, sa.true()))

    def first_page(
        self, engine: AsyncEngine, request: PageRequest
    ) -> tuple[Any, Any, dict[str, Any]] | None:
        """``request``'s page as statements for an acquire's own statement.

        ``(summary, rows, params)``: the page summary (``PageSummary``'s fields as
        columns) and the page's rows themselves (``id``, ``w``, in id order, at most
        ``p_limit``). Their cursor is the bind parameter ``p_after``; the other parameters
        come with them (the weight cap as a ``Decimal``, as ``page_params`` gives it).
        ``None`` when the store cannot read it inside its statement: the table lives in
        another database, or a ``settle=`` horizon must be read first.
        """
        if engine is not self.engine or (self.spec.settle is not None and self.ts_col is not None):
            return None
        key = self._shape(request, after=True)
        query = self._page_query(*key)
        params = self._params(request, key)
        params.pop("p_after", None)
        return query, self._page_rows[key], params

    async def summarize(self, request: PageRequest, link: object | None) -> PageSummary:
        """One aggregate query over at most ``request.limit`` rows after ``request.after``.

        With a weight cap, a running sum (window function) says how many leading rows fit;
        the database reads at most ``limit`` rows through the id index either way.
        """
        key = self._shape(request)
        row = await self._scalar_row(self._page_query(*key), link, self._params(request, key))
        count, first, first_w, last, weight, fit_rows, fit_last, fit_weight = row
        return PageSummary(
            rows=int(count),
            first_id=None if first is None else int(first),
            first_weight=as_weight(first_w),
            last_id=None if last is None else int(last),
            weight=as_weight(weight),
            fit_rows=int(fit_rows or 0),
            fit_last_id=None if fit_last is None else int(fit_last),
            fit_weight=as_weight(fit_weight),
        )

    def _range_query(self, start: int, end: int) -> sa.Select[Any]:
        return sa.select(self.table).where(*self._where(start - 1, end)).order_by(self.id_col)

    async def items(self, start: int, end: int) -> list[Mapping[str, Any]]:
        """Every row of ``[start, end]`` that passes the filter, in id order."""
        async with self.engine.connect() as conn:
            result = await conn.execute(self._range_query(start, end))
            return [dict(row) for row in result.mappings()]

    async def iter_items(
        self, start: int, end: int, chunk_size: int
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Rows of ``[start, end]`` in id order, ``chunk_size`` per query (keyset paging)."""
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be > 0, got {chunk_size}")
        after = start - 1
        id_key = self.id_col.name
        while after < end:
            query = (
                sa.select(self.table)
                .where(*self._where(after, end))
                .order_by(self.id_col)
                .limit(chunk_size)
            )
            async with self.engine.connect() as conn:
                rows = [dict(row) for row in (await conn.execute(query)).mappings()]
            for row in rows:
                yield row
            if len(rows) < chunk_size:
                return
            after = int(rows[-1][id_key])

    async def recount(self, ranges: Sequence[tuple[int, int]]) -> list[RangeCount]:
        """Current count and weight of each range: one grouped query per chunk of ranges."""
        out: list[RangeCount] = []
        for offset in range(0, len(ranges), _RECOUNT_CHUNK):
            chunk = ranges[offset : offset + _RECOUNT_CHUNK]
            bounds = sa.union_all(
                *(
                    sa.select(
                        sa.literal(i, sa.Integer).label("idx"),
                        sa.literal(start, sa.BigInteger).label("lo"),
                        sa.literal(end, sa.BigInteger).label("hi"),
                    )
                    for i, (start, end) in enumerate(chunk)
                )
            ).subquery("bounds")
            clauses = [self.id_col >= bounds.c.lo, self.id_col <= bounds.c.hi]
            if self.condition is not None:
                clauses.append(self.condition)
            query = (
                sa.select(
                    bounds.c.idx,
                    sa.func.count(self.id_col),
                    sa.func.coalesce(sa.func.sum(self._weight_expr()), 0),
                )
                .select_from(bounds.join(self.table, sa.and_(*clauses)))
                .group_by(bounds.c.idx)
            )
            async with self.engine.connect() as conn:
                found = {int(i): (int(c), as_weight(w)) for i, c, w in await conn.execute(query)}
            for i, (start, end) in enumerate(chunk):
                count, weight = found.get(i, (0, 0))
                out.append(RangeCount(start, end, count, weight))
        return out
