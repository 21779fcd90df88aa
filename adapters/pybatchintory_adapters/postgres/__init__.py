"""PostgreSQL adapter (asyncpg).

Differences from the shared implementation: the job row lock is a real ``FOR UPDATE``
row lock under READ COMMITTED, timestamps come from ``clock_timestamp()`` in UTC, JSON is
stored as ``JSONB``, and driver errors are classified by SQLSTATE.
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
    LedgerJSON,
    db_now,
    db_now_plus,
    plus_seconds,
    seconds_clause,
)

__all__ = ("adapter",)

_NOW = "timezone('UTC', clock_timestamp())"
# serialization_failure, deadlock_detected, lock_not_available
_RETRY_STATES = {"40001", "40P01", "55P03"}
# Class 08: connection exceptions; 57P01-57P03: admin shutdown, crash shutdown, cannot connect now.
_UNAVAILABLE_PREFIXES = ("08", "57P")


@compiles(db_now, "postgresql")
def _now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _NOW


@compiles(db_now_plus, "postgresql")
def _now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({_NOW} + make_interval(secs => {seconds_clause(element, compiler, **kw)}))"


@compiles(plus_seconds, "postgresql")
def _plus_seconds(element: plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    at, seconds = element.clauses.clauses
    at_sql, seconds_sql = compiler.process(at, **kw), compiler.process(seconds, **kw)
    return f"({at_sql} + make_interval(secs => {seconds_sql}))"


@compiles(LedgerJSON, "postgresql")
def _jsonb(type_: LedgerJSON, compiler: TypeCompiler, **kw: Any) -> str:
    return "JSONB"


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(state) if state else None


def _retryable(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    return state in _RETRY_STATES or (state or "").startswith(_UNAVAILABLE_PREFIXES)


class _AsyncpgSession:
    """Acquire and settle on the pooled ``asyncpg.Connection`` (see ``_sqlalchemy.driver_path``).

    asyncpg runs a statement without ``BEGIN`` in autocommit, so a single-statement settle
    is one round trip; its own statement cache prepares each SQL string once.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def begin(self, single: bool) -> None:
        if not single:
            await self.conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    async def commit(self, single: bool) -> None:
        if not single:
            await self.conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self.conn.is_in_transaction():
            await self.conn.execute("ROLLBACK")

    async def rows(self, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await self.conn.fetch(sql, *args)
        return rows

    async def run(self, sql: str, args: Sequence[Any]) -> tuple[int, int | None]:
        status: str = await self.conn.execute(sql, *args)  # e.g. "UPDATE 1"
        count = status.rpartition(" ")[2]
        return (int(count) if count.isdigit() else 0), None

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, (OSError, ConnectionError)):
            return True
        state = _sqlstate(exc)
        if state and state.startswith(_UNAVAILABLE_PREFIXES):
            return True
        # InternalClientError: the protocol is mid-operation (an earlier one was cut off by
        # a dropped connection); the connection cannot be used again either way.
        return type(exc).__name__ in (
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "InternalClientError",
        )


def _translate(exc: DBAPIError) -> PybatchintoryError | None:
    state = _sqlstate(exc)
    if state and state.startswith(_UNAVAILABLE_PREFIXES):
        return StoreUnavailable(f"PostgreSQL is unavailable (SQLSTATE {state}): {exc.orig}")
    return None


adapter = SQLAlchemyAdapter(
    name="postgresql",
    extra="postgres",
    drivers={"asyncpg": "asyncpg"},
    capabilities=Capabilities(
        # asyncpg's autocommit is a flag on the connection: no round trip to set or reset.
        single_statement_options={"isolation_level": "AUTOCOMMIT"},
        retryable=_retryable,
        translate=_translate,
        write_in_with=True,
        acquire_in_one=True,
        driver_session=_AsyncpgSession,
    ),
    engine_options={"isolation_level": "READ COMMITTED"},
)
