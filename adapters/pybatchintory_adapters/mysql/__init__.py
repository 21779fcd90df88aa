"""MySQL and MariaDB adapter (aiomysql).

Differences from the shared implementation: READ COMMITTED (the default REPEATABLE READ
deadlocks concurrent claims through gap locks), timestamps with microseconds
(``DATETIME(6)``, ``UTC_TIMESTAMP(6)``), and driver errors classified by errno, with
deadlocks (1213) and lock wait timeouts (1205) retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler, TypeCompiler

from pybatchintory.errors import PybatchintoryError, StoreUnavailable
from pybatchintory_adapters._sqlalchemy import Capabilities, SQLAlchemyAdapter
from pybatchintory_adapters._sqlalchemy.types import (
    Timestamp,
    db_now,
    db_now_plus,
    plus_seconds,
    seconds_clause,
)

__all__ = ("adapter",)

_NOW = "UTC_TIMESTAMP(6)"
_DEADLOCK, _LOCK_WAIT_TIMEOUT = 1213, 1205
# The MySQL protocol's client flag for ``;``-separated statements in one round trip
# (``pymysql.constants.CLIENT.MULTI_STATEMENTS``); aiomysql always connects with it.
_MULTI_STATEMENTS = 1 << 16
# Server gone away, lost connection, cannot connect, killed connection, server shutdown.
_UNAVAILABLE = {2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031}


@compiles(db_now, "mysql", "mariadb")
def _now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _NOW


@compiles(db_now_plus, "mysql", "mariadb")
def _now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = seconds_clause(element, compiler, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND({seconds} * 1000000), {_NOW})"


@compiles(plus_seconds, "mysql", "mariadb")
def _plus_seconds(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    at, seconds = element.clauses.clauses
    at_sql, seconds_sql = compiler.process(at, **kw), compiler.process(seconds, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND({seconds_sql} * 1000000), {at_sql})"


@compiles(Timestamp, "mysql", "mariadb")
def _timestamp(type_: Timestamp, compiler: TypeCompiler, **kw: Any) -> str:
    return "DATETIME(6)"


def _errno(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _retryable(exc: BaseException) -> bool:
    return _errno(exc) in {_DEADLOCK, _LOCK_WAIT_TIMEOUT, *_UNAVAILABLE}


class _AiomysqlSession:
    """Acquire and settle on the pooled ``aiomysql.Connection`` (see ``_sqlalchemy.driver_path``).

    The connection is not in autocommit: the first statement opens the transaction (no
    ``BEGIN`` round trip) and ``COMMIT`` ends it. Row counts are rows matched, not changed:
    the adapter connects with ``CLIENT.FOUND_ROWS``, as SQLAlchemy does.

    On a connection that allows batches (``CLIENT.MULTI_STATEMENTS``, which aiomysql always
    asks for), a single-statement write (a settle, a heartbeat) sends its ``COMMIT`` in the
    same round trip, as autocommit would; and the common acquire is one batch.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._single = False
        # A statement ran since the last COMMIT: the transaction is open. Tracked here, not
        # read from the server's status flags: those do not say "in a transaction" after a
        # transaction of plain SELECTs (a lock and a page read), whose row locks are held.
        self._open = False

    @property
    def can_batch(self) -> bool:
        """The connection was opened with ``CLIENT.MULTI_STATEMENTS``."""
        return bool(getattr(self.conn, "client_flag", 0) & _MULTI_STATEMENTS)

    async def begin(self, single: bool) -> None:
        self._single = single and self.can_batch

    async def commit(self, single: bool) -> None:
        if self._open:  # not when every statement went with its COMMIT
            await self.conn.commit()
            self._open = False

    async def batch(self, sql: str, args: Sequence[Any]) -> list[Sequence[Sequence[Any]]]:
        self._open = False  # it commits (an error leaves the rest to the caller's rollback)
        async with self.conn.cursor() as cursor:
            await cursor.execute(f"{sql};\nCOMMIT", tuple(args))
            results: list[Sequence[Sequence[Any]]] = [await cursor.fetchall() or ()]
            while await cursor.nextset():
                results.append(await cursor.fetchall() or ())
            return results[:-1]  # not the COMMIT's

    async def rollback(self) -> None:
        self._open = False
        await self.conn.rollback()

    def _sql(self, sql: str) -> str:
        self._open = not self._single
        return f"{sql};\nCOMMIT" if self._single else sql

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        async with self.conn.cursor() as cursor:
            await cursor.execute(self._sql(sql), tuple(args))
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            while await cursor.nextset():  # the COMMIT's (empty) result
                pass
            return rows

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        async with self.conn.cursor() as cursor:
            await cursor.execute(self._sql(sql), tuple(args))
            counted: tuple[int, int | None] = int(cursor.rowcount), cursor.lastrowid
            while await cursor.nextset():
                pass
            return counted

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, (OSError, ConnectionError)) or _errno(exc) in _UNAVAILABLE


def _translate(exc: DBAPIError) -> PybatchintoryError | None:
    code = _errno(exc)
    if code in _UNAVAILABLE:
        return StoreUnavailable(f"MySQL is unavailable (error {code}): {exc.orig}")
    return None


adapter = SQLAlchemyAdapter(
    name="mysql",
    extra="mysql",
    drivers={"aiomysql": "aiomysql", "asyncmy": "asyncmy"},
    capabilities=Capabilities(
        retryable=_retryable,
        translate=_translate,
        driver_session=_AiomysqlSession,
        acquire_in_batch=True,
    ),
    engine_options={"isolation_level": "READ COMMITTED", "pool_recycle": 3600},
)
