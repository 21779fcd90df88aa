"""SQLite adapter (aiosqlite): the embedded default.

Differences from the shared implementation: write transactions start with ``BEGIN
IMMEDIATE`` (SQLite's one writer lock serialises acquires, so no row locks are needed),
single-statement writes (settle, heartbeat) run without ``BEGIN`` in SQLite's own
autocommit, the journal is WAL with a busy timeout so several processes can share one
file, and the clock is ``strftime`` in UTC.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import await_only

from pybatchintory_adapters._sqlalchemy import Capabilities, SQLAlchemyAdapter
from pybatchintory_adapters._sqlalchemy.driver_path import DriverSession, WorkSuspended
from pybatchintory_adapters._sqlalchemy.types import db_now, db_now_plus, seconds_clause

__all__ = ("adapter",)

T = TypeVar("T")

_WRITE = "pybatchintory_write"
_SINGLE = "pybatchintory_single_statement"
_BUSY_TIMEOUT_MS = 30_000
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
# strftime's %f has milliseconds; padding to six digits keeps the text comparable with
# the microsecond timestamps SQLAlchemy writes.
_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


@compiles(db_now, "sqlite")
def _now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _NOW


@compiles(db_now_plus, "sqlite")
def _now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = seconds_clause(element, compiler, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', {seconds}))"


def _retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is None:
        return False
    return (code & 0xFF) in _BUSY_CODES


def _configure(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's begin event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_SINGLE):
            return  # one statement: SQLite's autocommit makes it atomic by itself
        statement = "BEGIN IMMEDIATE" if options.get(_WRITE) else "BEGIN DEFERRED"
        # Straight to the driver: one hop to aiosqlite's thread instead of a cursor's
        # create/execute/close through SQLAlchemy (the hot path begins twice per lease).
        driver = conn.connection.driver_connection
        assert driver is not None, "begin on a closed connection"
        try:
            await_only(driver.execute(statement))
        except sqlite3.Error as exc:
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


class _AiosqliteSession:
    """Acquire and settle on the pooled ``aiosqlite.Connection`` (see ``_sqlalchemy.driver_path``).

    A whole transaction runs in one hop to aiosqlite's thread (``in_thread``: each
    statement there is a plain ``sqlite3`` call), not one hop per statement; the methods
    below, one hop each, serve the rest. ``BEGIN IMMEDIATE`` takes the write lock up front;
    a single statement runs in SQLite's autocommit.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def in_thread(self, make: Callable[[DriverSession], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make`` builds on aiosqlite's thread, to its end, in one hop.

        Uses aiosqlite's ``_execute`` (queue a callable for its thread) and ``_conn`` (the
        ``sqlite3`` connection), checked by ``tests/adapters/test_compat.py``.
        """
        conn = self.conn

        def drive() -> T:
            raw: sqlite3.Connection = conn._conn
            work = make(_SqliteSession(raw))
            try:
                work.send(None)
            except StopIteration as done:
                result: T = done.value
                return result
            # It waited on something other than this connection: undo it here.
            work.close()
            if raw.in_transaction:
                raw.rollback()
            raise WorkSuspended("the transaction waited on another connection")

        done: T = await conn._execute(drive)
        return done

    async def begin(self, single: bool) -> None:
        if not single:
            await self.conn.execute("BEGIN IMMEDIATE")

    async def commit(self, single: bool) -> None:
        if not single:
            await self.conn.commit()

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await self.conn.execute_fetchall(sql, tuple(args))
        return rows

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        cursor = await self.conn.execute(sql, tuple(args))
        return int(cursor.rowcount), cursor.lastrowid

    def is_disconnect(self, exc: BaseException) -> bool:
        return False


class _SqliteSession:
    """The same operations on the ``sqlite3`` connection itself, on aiosqlite's thread.

    Its coroutines never suspend: ``_AiosqliteSession.in_thread`` runs them in one step.
    """

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    async def begin(self, single: bool) -> None:
        if not single:
            self.raw.execute("BEGIN IMMEDIATE")

    async def commit(self, single: bool) -> None:
        if not single:
            self.raw.commit()

    async def rollback(self) -> None:
        self.raw.rollback()

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        return self.raw.execute(sql, tuple(args)).fetchall()

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        cursor = self.raw.execute(sql, tuple(args))
        return int(cursor.rowcount), cursor.lastrowid

    def is_disconnect(self, exc: BaseException) -> bool:
        return False


def _translate(exc: DBAPIError) -> None:
    return None


adapter = SQLAlchemyAdapter(
    name="sqlite",
    extra="sqlite",
    drivers={"aiosqlite": "aiosqlite"},
    capabilities=Capabilities(
        write_options={_WRITE: True},
        single_statement_options={_SINGLE: True},
        retryable=_retryable,
        translate=_translate,
        driver_session=_AiosqliteSession,
    ),
    engine_options={"connect_args": {"timeout": _BUSY_TIMEOUT_MS / 1000}},
    configure=_configure,
)
