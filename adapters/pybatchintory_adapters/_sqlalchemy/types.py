"""Portable column types and the database-clock constructs.

Each is its own class so that an adapter can change how *our* columns and expressions
compile on its dialect (``@compiles(Timestamp, "mysql")``) without touching anyone else's.
The default compilations here fit SQLite; adapters register the rest when imported.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler, TypeCompiler
from sqlalchemy.sql.functions import FunctionElement

from pybatchintory.models import Weight
from pybatchintory.weights import LEDGER_PLACES, as_weight, exact

__all__ = ("LedgerId", "LedgerJSON", "LedgerWeight", "Timestamp", "db_now", "db_now_plus")


class Timestamp(sa.DateTime):
    """A naive UTC timestamp with microseconds (``DATETIME(6)`` on MySQL)."""

    cache_ok = True


class LedgerJSON(sa.JSON):
    """A JSON document (``JSONB`` on PostgreSQL)."""

    cache_ok = True


class LedgerId(sa.BigInteger):
    """A 64-bit auto-incrementing key (``INTEGER`` on SQLite, where only that is a rowid)."""

    cache_ok = True


class _PlainNumeric(sa.types.UserDefinedType[Any]):
    """``NUMERIC(38, 10)`` without processors: SQLite has no decimals to convert to.

    SQLAlchemy's ``Numeric`` would turn every value read into a ``Decimal`` through a float
    (and warn that it does); SQLite stores a whole weight as an integer and a fractional one
    as a float, and they are read as such.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return f"NUMERIC(38, {LEDGER_PLACES})"


_QUANTUM = Decimal(1).scaleb(-LEDGER_PLACES)


class LedgerWeight(sa.types.TypeDecorator[Any]):
    """A range's weight: ``NUMERIC(38, 10)``, exact for decimal sums, floats kept to 10 places.

    Values are written as ``Decimal`` (a float as the decimal of its shortest repr, rounded
    to the column's ten places) and read back through ``as_weight``: whole weights as
    ``int``, others as ``Decimal`` (``float`` on SQLite).
    """

    impl = sa.Numeric(38, LEDGER_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.supports_native_decimal:
            return dialect.type_descriptor(sa.Numeric(38, LEDGER_PLACES))
        return dialect.type_descriptor(_PlainNumeric())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or isinstance(value, int):
            return value
        number = Decimal(exact(value)).quantize(_QUANTUM)
        if dialect.supports_native_decimal:
            return number
        return as_weight(float(number))

    def process_result_value(self, value: Any, dialect: Dialect) -> Weight:
        return as_weight(value)


@compiles(Timestamp)
def _timestamp_default(type_: Timestamp, compiler: TypeCompiler, **kw: Any) -> str:
    return compiler.process(sa.DateTime(), **kw)


@compiles(LedgerJSON)
def _json_default(type_: LedgerJSON, compiler: TypeCompiler, **kw: Any) -> str:
    return compiler.process(sa.JSON(), **kw)


@compiles(LedgerId)
def _id_default(type_: LedgerId, compiler: TypeCompiler, **kw: Any) -> str:
    return compiler.process(sa.BigInteger(), **kw)


@compiles(LedgerId, "sqlite")
def _id_sqlite(type_: LedgerId, compiler: TypeCompiler, **kw: Any) -> str:
    return "INTEGER"


class db_now(FunctionElement[datetime]):
    """The database's current UTC time, as a naive timestamp."""

    type = Timestamp()
    inherit_cache = True
    name = "db_now"


class db_now_plus(FunctionElement[datetime]):
    """The database's current UTC time plus ``seconds`` (a bound parameter)."""

    type = Timestamp()
    inherit_cache = True
    name = "db_now_plus"

    def __init__(self, seconds: float | sa.ColumnElement[Any]) -> None:
        if isinstance(seconds, sa.ColumnElement):
            super().__init__(seconds)
        else:
            super().__init__(sa.literal(float(seconds), sa.Float()))


def seconds_clause(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    """Compile the seconds argument of ``db_now_plus`` (for adapters' compile hooks)."""
    (seconds,) = element.clauses.clauses
    return compiler.process(seconds, **kw)


@compiles(db_now)
def _now_default(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    raise sa.exc.CompileError(f"no database clock registered for dialect {compiler.dialect.name!r}")


@compiles(db_now_plus)
def _now_plus_default(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    raise sa.exc.CompileError(f"no database clock registered for dialect {compiler.dialect.name!r}")
