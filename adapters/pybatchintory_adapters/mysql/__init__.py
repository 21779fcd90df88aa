"""MySQL and MariaDB adapter (aiomysql).

Differences from the shared implementation: READ COMMITTED (the default REPEATABLE READ
deadlocks concurrent claims through gap locks), timestamps with microseconds
(``DATETIME(6)``, ``UTC_TIMESTAMP(6)``), and driver errors classified by errno, with
deadlocks (1213) and lock wait timeouts (1205) retried.
"""

from __future__ import annotations

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
        skip_locked=True,
    ),
    engine_options={"isolation_level": "READ COMMITTED", "pool_recycle": 3600},
)
