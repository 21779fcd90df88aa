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
    seconds_clause,
)

__all__ = ("adapter",)

_NOW = "UTC_TIMESTAMP(6)"
_DEADLOCK, _LOCK_WAIT_TIMEOUT = 1213, 1205
# Server gone away, lost connection, cannot connect, killed connection, server shutdown.
_UNAVAILABLE = {2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031}


@compiles(db_now, "mysql", "mariadb")
def _now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _NOW


@compiles(db_now_plus, "mysql", "mariadb")
def _now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = seconds_clause(element, compiler, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND({seconds} * 1000000), {_NOW})"


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
    ``BEGIN`` round trip) and ``COMMIT`` ends it, for a settle too. Row counts are rows
    matched, not changed: SQLAlchemy connects with ``CLIENT.FOUND_ROWS``.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def begin(self, single: bool) -> None:
        return None

    async def commit(self, single: bool) -> None:
        await self.conn.commit()

    async def rollback(self) -> None:
        await self.conn.rollback()

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        async with self.conn.cursor() as cursor:
            await cursor.execute(sql, tuple(args))
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            return rows

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        async with self.conn.cursor() as cursor:
            await cursor.execute(sql, tuple(args))
            return int(cursor.rowcount), cursor.lastrowid

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
    ),
    engine_options={"isolation_level": "READ COMMITTED", "pool_recycle": 3600},
)
