"""The driver path: acquire and settle straight on the driver.

SQLAlchemy compiles, pools and types; the driver runs.

Measured on asyncpg (process CPU per call, loaded 2-core machine): a prebuilt statement
through ``AsyncConnection.execute`` costs ~130-165 us against ~35-50 us on the driver, and
``connect + begin + commit`` around it ~300 us more against ~40 us for the driver's own
``BEGIN``/``COMMIT``. A lease is two transactions and four or five statements, so that
bookkeeping, not the database, set the pace. Acquire and settle therefore borrow the
driver connection from SQLAlchemy's pool and run statements compiled once per dialect:

- ``Prepared`` holds one statement's SQL for one dialect, its positional parameter order,
  and SQLAlchemy's own bind and result processors (datetimes as text on SQLite, JSON).
- ``DriverSession`` is what an adapter provides for its driver: begin, commit, rollback,
  rows, run. Dialect differences stay in the adapters.
- ``DirectConnection`` is what the store's acquire and settle work with; it is also the
  ``link`` the planner passes to sources (``StatementLink``), so page summaries run on the
  same connection and transaction.

The only SQLAlchemy internals it needs (giving a borrowed connection back, recycling a
dead pool generation) are in ``compat``.

Driver errors are re-raised as SQLAlchemy ``DBAPIError`` (``orig`` kept) so the store's
retry and translation code is the same on both paths.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = (
    "BatchSession",
    "ThreadSession",
    "WorkSuspended",
    "DirectConnection",
    "DriverSession",
    "EngineLink",
    "HotPath",
    "PREPARED_STATEMENTS",
    "Prepared",
    "SessionFactory",
)


T = TypeVar("T")

PREPARED_STATEMENTS = 256
"""Compiled statements a store keeps (its own dozen plus the sources' page queries)."""


class DriverSession(Protocol):
    """One borrowed driver connection, as the hot path needs it."""

    async def begin(self, single: bool) -> None:
        """Start a write transaction (``single``: one statement that commits by itself)."""
        ...

    async def commit(self, single: bool) -> None:
        """Commit what ``begin`` started."""
        ...

    async def rollback(self) -> None:
        """Roll back (after an error)."""
        ...

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """Run a statement that returns rows; all of them."""
        ...

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        """Run a statement that returns no rows; its row count and last inserted id."""
        ...

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` means the connection is unusable."""
        ...


class BatchSession(DriverSession, Protocol):
    """A session that also sends many statements in one round trip (MySQL)."""

    @property
    def can_batch(self) -> bool:
        """This connection accepts a multi-statement batch."""
        ...

    async def batch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Sequence[Any]]]:
        """Run ``;``-separated statements and a ``COMMIT`` at once; the rows of each statement.

        The server stops at the first error: the transaction is then left to the caller's
        rollback.
        """
        ...


SessionFactory = Callable[[Any], DriverSession]
"""Builds a session around a driver connection (``asyncpg.Connection``, ...)."""


class HotPath(Protocol):
    """What acquire and settle run their statements through (direct or SQLAlchemy)."""

    async def all(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row ``statement`` returns."""
        ...

    async def one(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row, or ``None``."""
        ...

    async def run(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """The row count of a statement that returns no rows."""
        ...

    async def insert(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """The key of the one row inserted."""
        ...


def _returns_rows(statement: sa.Executable) -> bool:
    """An ``INSERT ... RETURNING`` (its ``exported_columns`` are the RETURNING columns)."""
    return bool(getattr(statement, "exported_columns", ()))


def _bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


class Prepared:
    """One statement compiled for one dialect, with its parameter order and processors."""

    def __init__(self, statement: sa.Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if not dialect.positional:
            raise ValueError("the direct path needs a positional paramstyle")
        # ``IN`` lists (a filter ``{"kind": ["csv", "json"]}``) compile to expanding
        # parameters; their SQL is rendered per call from the values (``statement_for``).
        self.expanding = any(b.expanding or b.literal_execute for b in compiled.binds.values())
        self.compiled = compiled
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        binds = compiled.binds
        self.processors: tuple[Callable[[Any], Any] | None, ...] = tuple(
            _bind_processor(binds[name].type, dialect) for name in self.names
        )
        self._processing = tuple(
            (index, proc) for index, proc in enumerate(self.processors) if proc is not None
        )
        self.results: tuple[Callable[[Any], Any] | None, ...] = ()
        # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns (public API of both).
        columns = getattr(statement, "exported_columns", ())
        if columns:
            self.results = tuple(
                c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
            )

    def statement_for(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """The SQL and positional driver arguments for ``params``."""
        if not self.expanding:
            return self.sql, self.args(params)
        state = self.compiled.construct_expanded_state(params)
        args = list(state.positional_parameters or ())
        processors = state.processors  # the expanded parameters' only
        by_name = dict(zip(self.names, self.processors, strict=True))
        for index, name in enumerate(state.positiontup or ()):
            proc = processors.get(name) or by_name.get(name)
            if proc is not None:
                args[index] = proc(args[index])
        return state.statement, args

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """Positional driver arguments for ``params`` (literal binds filled in)."""
        values = self.compiled.construct_params(params)
        args = [values[name] for name in self.names]
        for index, proc in self._processing:
            args[index] = proc(args[index])
        return args

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """One result row with SQLAlchemy's result processing applied."""
        if not self.results:
            return tuple(raw)
        return tuple(
            value if proc is None else proc(value)
            for value, proc in zip(raw, self.results, strict=False)
        )


class DirectConnection:
    """Statements on a borrowed driver connection; the planner's link to sources.

    Args:
        session: The adapter's driver session.
        engine: The engine the connection was borrowed from (sources compare it with
            their own to decide whether they may read through this link).
        prepared: Cache of compiled statements, shared by every connection of a store.
    """

    def __init__(
        self,
        session: DriverSession,
        engine: AsyncEngine,
        prepared: OrderedDict[int, tuple[sa.Executable, Prepared]],
    ) -> None:
        self.session = session
        self.engine = engine
        self._prepared = prepared

    def _get(self, statement: sa.Executable) -> Prepared:
        cached = self._prepared.get(id(statement))
        if cached is not None and cached[0] is statement:
            return cached[1]
        prepared = Prepared(statement, self.engine.dialect)
        # Keyed by identity and holding the statement, so an id is never reused for another.
        self._prepared[id(statement)] = (statement, prepared)
        # Bounded: a caller that builds a statement per call (or sources dropped from the
        # Inventory's cache) must not make the store hold every statement it ever ran.
        # Oldest first out; a hot statement evicted is compiled again once.
        while len(self._prepared) > PREPARED_STATEMENTS:
            self._prepared.popitem(last=False)
        return prepared

    def _wrap(self, exc: Exception, prepared: Prepared) -> DBAPIError:
        return self._wrap_plain(exc, prepared.sql)

    async def all(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row ``statement`` returns."""
        prepared = self._get(statement)
        try:
            raw = await self.session.rows(*prepared.statement_for(params))
        except DBAPIError:
            raise
        except Exception as exc:
            raise self._wrap(exc, prepared) from exc
        return [prepared.row(r) for r in raw]

    async def one(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row ``statement`` returns, or ``None``."""
        found = await self.all(statement, params)
        return found[0] if found else None

    async def fetch_one(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """``StatementLink`` for sources: the first row, or ``None``."""
        return await self.one(statement, params)

    async def run(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; its row count."""
        return (await self._run(statement, params))[0]

    async def insert(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """Insert one row; its key (from ``RETURNING`` if the statement has it)."""
        if _returns_rows(statement):
            row = await self.one(statement, params)
            assert row is not None, "INSERT ... RETURNING returned nothing"
            return int(row[0])
        last = (await self._run(statement, params))[1]
        assert last is not None, "the driver reported no inserted key"
        return int(last)

    async def _run(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> tuple[int, int | None]:
        prepared = self._get(statement)
        try:
            return await self.session.run(*prepared.statement_for(params))
        except DBAPIError:
            raise
        except Exception as exc:
            raise self._wrap(exc, prepared) from exc

    async def transaction(
        self, work: Callable[[HotPath, object], Awaitable[T]], single: bool, *, pure: bool
    ) -> T:
        """``BEGIN``, ``work(self, self)``, ``COMMIT``; the caller rolls back on an error.

        ``pure``: ``work`` touches nothing but this connection (no other engine, no event
        loop). Such work runs, where the session can run a whole transaction in one call on
        its driver's own thread (``ThreadSession``: SQLite), there: one hop to the thread,
        not one per statement. Should it wait on something else after all, it is rolled
        back there and runs here instead.
        """
        in_thread = getattr(self.session, "in_thread", None) if pure else None
        if in_thread is not None:

            def on_thread(session: DriverSession) -> Coroutine[Any, Any, T]:
                return _transaction(
                    DirectConnection(session, self.engine, self._prepared), work, single
                )

            try:
                result: T = await in_thread(on_thread)
                return result
            except WorkSuspended:
                pass
        return await _transaction(self, work, single)

    @property
    def can_batch(self) -> bool:
        """Statements can go to the server as one batch on this connection."""
        return bool(getattr(self.session, "can_batch", False))

    async def batch(
        self, statements: Sequence[sa.Executable], params: Mapping[str, Any]
    ) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` and ``COMMIT`` in one round trip (``can_batch``); their rows.

        The server runs them in order and stops at the first error, which is raised here
        (the caller rolls back).
        """
        prepared = [self._get(statement) for statement in statements]
        sql: list[str] = []
        args: list[Any] = []
        for one in prepared:
            text, values = one.statement_for(params)
            sql.append(text)
            args.extend(values)
        session: Any = self.session
        joined = ";\n".join(sql)
        try:
            results = await session.batch(joined, args)
        except DBAPIError:
            raise
        except Exception as exc:
            raise self._wrap_plain(exc, joined) from exc
        return [[one.row(r) for r in rows] for one, rows in zip(prepared, results, strict=True)]

    async def begin(self, single: bool) -> None:
        """Start the transaction (driver errors wrapped like statements')."""
        try:
            await self.session.begin(single)
        except Exception as exc:
            raise self._wrap_plain(exc, "BEGIN") from exc

    async def commit(self, single: bool) -> None:
        """Commit it."""
        try:
            await self.session.commit(single)
        except Exception as exc:
            raise self._wrap_plain(exc, "COMMIT") from exc

    def _wrap_plain(self, exc: Exception, what: str) -> DBAPIError:
        wrapped = DBAPIError.instance(
            what, None, exc, Exception, connection_invalidated=self.session.is_disconnect(exc)
        )
        assert isinstance(wrapped, DBAPIError)
        return wrapped


async def _transaction(
    direct: DirectConnection, work: Callable[[HotPath, object], Awaitable[T]], single: bool
) -> T:
    await direct.begin(single)
    result = await work(direct, direct)
    await direct.commit(single)
    return result


class WorkSuspended(Exception):
    """Work run on a driver's thread waited on something else (``ThreadSession``)."""


class ThreadSession(DriverSession, Protocol):
    """A session that runs a whole transaction in one call on its driver's thread (SQLite).

    ``in_thread(make)`` calls ``make`` there with a session whose methods run the driver
    synchronously (their coroutines never suspend), runs the coroutine it returns to its
    end in one step, and returns its result. If the coroutine suspends (it waited on
    something else), it is closed, the transaction is rolled back there, and
    ``WorkSuspended`` is raised.
    """

    async def in_thread(self, make: Callable[[DriverSession], Coroutine[Any, Any, T]]) -> T:
        """Run ``make(session)`` on the driver's thread; its result."""
        ...


class EngineLink:
    """The same operations through SQLAlchemy, for adapters without a ``DriverSession``."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.engine = conn.engine

    async def all(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row ``statement`` returns."""
        return [tuple(row) for row in await self.conn.execute(statement, params)]

    async def one(
        self, statement: sa.Executable, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row ``statement`` returns, or ``None``."""
        row = (await self.conn.execute(statement, params)).first()
        return None if row is None else tuple(row)

    async def run(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; its row count."""
        return int((await self.conn.execute(statement, params)).rowcount)

    async def insert(self, statement: sa.Executable, params: Mapping[str, Any]) -> int:
        """Insert one row; its key."""
        result = await self.conn.execute(statement, params)
        if _returns_rows(statement):
            return int(result.scalar_one())
        return int(result.inserted_primary_key[0])  # type: ignore[index]
