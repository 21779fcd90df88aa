"""``MetaTable(where=...)``: the filter forms, checked, resolved against the table, described.

Four forms are accepted: a SQLAlchemy expression (its columns are pointed at the reflected
table by name), a callable ``(table) -> expression``, a mapping ``{"column": value |
[values] | {values} | None}``, and a ``text()`` clause. A raw SQL string is refused: its
values could not be bound. The description (the filter compiled with its values) is part
of a job's recorded identity, so a job cannot silently change what it selects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnElement

from pybatchintory.errors import InvalidArgument, UnknownColumn

__all__ = ("Filter", "check_filter_kind", "column_of", "describe_filter", "resolve_filter")

Filter = ColumnElement[bool] | sa.TextClause | Callable[[sa.Table], Any] | Mapping[str, Any] | None
"""What ``MetaTable(where=...)`` accepts."""


def check_filter_kind(where: object) -> None:
    """Refuse a raw SQL string or anything that is not one of the filter forms."""
    if where is None or isinstance(where, (ColumnElement, sa.TextClause, Mapping)):
        return
    if isinstance(where, (str, bytes)):
        raise InvalidArgument(
            "where= does not accept a raw SQL string; pass a SQLAlchemy expression "
            "(sqlalchemy.column('kind') == 'csv'), a callable(table) -> expression, "
            "or a mapping {'kind': 'csv'}"
        )
    if callable(where):
        return
    raise InvalidArgument(
        f"where= must be a SQLAlchemy expression, a callable or a mapping, got {type(where)!r}"
    )


def column_of(table: sa.Table, name: str, role: str) -> sa.Column[Any]:
    """The column ``name`` of ``table``; ``UnknownColumn`` naming its ``role`` if missing."""
    try:
        return table.c[name]
    except KeyError:
        columns = ", ".join(sorted(table.c.keys()))
        raise UnknownColumn(
            f"{role} column {name!r} not found in table {table.name!r} (columns: {columns})"
        ) from None


def resolve_filter(table: sa.Table, where: Filter) -> ColumnElement[bool] | None:
    """The filter as a condition on ``table`` (``None``: no filter)."""
    if where is None:
        return None
    if isinstance(where, Mapping):
        clauses: list[ColumnElement[bool]] = []
        for key in sorted(where):
            column = column_of(table, key, "filter")
            value = where[key]
            if isinstance(value, (set, frozenset)):
                clauses.append(column.in_(sorted(value, key=repr)))
            elif isinstance(value, (list, tuple)):
                clauses.append(column.in_(list(value)))
            elif value is None:
                clauses.append(column.is_(None))
            else:
                clauses.append(column == value)
        return sa.and_(*clauses)
    if isinstance(where, sa.TextClause):
        return sa.and_(where)
    if isinstance(where, ColumnElement):
        expression: ColumnElement[bool] = where
    else:
        produced = where(table)
        if isinstance(produced, (str, bytes)):
            check_filter_kind(produced)
        if not isinstance(produced, (ColumnElement, sa.TextClause)):
            raise InvalidArgument(
                f"the where= callable must return a SQLAlchemy expression, got {produced!r}"
            )
        expression = sa.and_(produced)
    return _rebind_columns(table, expression)


def _rebind_columns(table: sa.Table, expression: ColumnElement[bool]) -> ColumnElement[bool]:
    """Point column references of any table (or bare ``column()``) at ``table``."""

    def replace(element: Any, **_: Any) -> Any:
        if isinstance(element, sa.ColumnClause) and not isinstance(element, sa.TextClause):
            if element.table is table:
                return None
            if element.name in table.c:
                return table.c[element.name]
            raise UnknownColumn(f"filter column {element.name!r} not found in table {table.name!r}")
        return None

    return visitors.replacement_traverse(expression, {}, replace)


def describe_filter(condition: ColumnElement[bool] | None, table_name: str) -> str | None:
    """The condition compiled with its values: what a job records as its filter."""
    if condition is None:
        return None
    compiled = condition.compile()
    try:
        text = str(condition.compile(compile_kwargs={"literal_binds": True}))
    except Exception:  # a value SQL cannot spell inline (JSON, intervals, ...)
        text = f"{compiled} {sorted(compiled.params.items(), key=repr)!r}"
    if "\x00" in text or any(_has_nul(value) for value in compiled.params.values()):
        # PostgreSQL stores no NUL in text or JSON: neither the query nor the job's
        # recorded definition could be written. Refused here, before anything is.
        raise InvalidArgument(
            f"the filter of {table_name!r} contains a NUL character, which no "
            f"database compares or records as text: {text!r}"
        )
    return text


def _has_nul(value: object) -> bool:
    """A NUL character in a bound value (a string, or strings in an ``IN`` list)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_nul(item) for item in value)
    return False
