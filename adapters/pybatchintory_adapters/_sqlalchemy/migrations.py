"""Schema versions of the inventory and the ordered steps from one to the next.

The inventory records its version in the ``inventory_schema`` table (one row per version
applied). A brand-new database gets the current schema and version at once, when a store
is first set up; a database at an older version is brought up to date only by
``pybatchintory migrate`` (``Inventory.migrate()``), which applies every pending migration
in order, each in its own transaction, and records its version. A store set up on an older
or newer schema raises ``SchemaMismatch`` naming the command, instead of failing later on a
missing column or index.

Version 1 is the baseline (the schema of the first releases). A migration lists its steps
as SQLAlchemy DDL constructs, compiled for the database at hand; where one database needs
other steps, ``dialects`` holds them by dialect name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from pybatchintory.errors import SchemaMismatch
from pybatchintory_adapters._sqlalchemy.tables import SCHEMA_VERSION, Tables
from pybatchintory_adapters._sqlalchemy.types import db_now

__all__ = ("MIGRATIONS", "Migration", "check", "migrate", "prepare", "read_version")

T = TypeVar("T")

Statement = ExecutableDDLElement | sa.Insert
Steps = Callable[[Tables], Sequence[ExecutableDDLElement]]
Transact = Callable[[Callable[[AsyncConnection], Awaitable[Any]]], Awaitable[Any]]
Read = Callable[[Callable[[AsyncConnection], Awaitable[T]]], Awaitable[T]]


@dataclass(frozen=True)
class Migration:
    """The steps that bring a schema from ``version - 1`` to ``version``.

    Attributes:
        version: The version this migration brings the schema to.
        description: What it changes, and why.
        steps: The DDL, in order, for every database without its own entry in ``dialects``.
        dialects: Dialect name (``postgresql``, ``mysql``, ``sqlite``) -> its own steps.
    """

    version: int
    description: str
    steps: Steps
    dialects: Mapping[str, Steps] = field(default_factory=dict)

    def statements(self, tables: Tables, dialect: str) -> Sequence[ExecutableDDLElement]:
        """The DDL of this migration on ``dialect``."""
        return self.dialects.get(dialect, self.steps)(tables)


def _index(table: sa.Table, suffix: str) -> sa.Index:
    name = f"ix_{table.name}_{suffix}"
    for index in table.indexes:
        if index.name == name:
            return index
    raise LookupError(f"no index {name} on {table.name}")  # a migration out of step with tables


def _v2(t: Tables) -> Sequence[ExecutableDDLElement]:
    return [CreateIndex(_index(t.inventory, "job_status_start"))]


def _alter_weight(t: Tables, statement: str) -> ExecutableDDLElement:
    ddl: ExecutableDDLElement = sa.DDL(statement).against(t.inventory)  # type: ignore[no-untyped-call]
    return ddl


def _v3(t: Tables) -> Sequence[ExecutableDDLElement]:
    return [_alter_weight(t, f"ALTER TABLE %(table)s ALTER COLUMN weight TYPE {_WEIGHT}")]


def _v3_mysql(t: Tables) -> Sequence[ExecutableDDLElement]:
    return [_alter_weight(t, f"ALTER TABLE %(table)s MODIFY weight {_WEIGHT} NOT NULL")]


def _v3_sqlite(t: Tables) -> Sequence[ExecutableDDLElement]:
    # SQLite cannot change a column's type, and need not: a BIGINT column (integer affinity)
    # keeps a fractional value as a real, and the column is read as stored.
    return []


_WEIGHT = "NUMERIC(38, 10)"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "index inventory (job, status, meta_id_start): an InventorySource reads its upstream "
        "job's succeeded ranges in id order, and audit pages through them, by one index range",
        _v2,
    ),
    Migration(
        3,
        "inventory.weight becomes NUMERIC(38, 10) (was BIGINT): FLOAT, REAL and NUMERIC weight "
        "columns and fractional max_weight; exact sums for NUMERIC, floats to ten places",
        _v3,
        {"mysql": _v3_mysql, "sqlite": _v3_sqlite},
    ),
)

assert MIGRATIONS[-1].version == SCHEMA_VERSION, "tables.SCHEMA_VERSION lags the migrations"


async def read_version(conn: AsyncConnection, t: Tables) -> int | None:
    """The recorded schema version; ``None`` when the database has no inventory yet."""

    def has_table(sync_conn: sa.Connection) -> bool:
        return sa.inspect(sync_conn).has_table(t.schema.name)

    if not await conn.run_sync(has_table):
        return None
    version = (await conn.execute(sa.select(sa.func.max(t.schema.c.version)))).scalar()
    return None if version is None else int(version)


def check(version: int) -> None:
    """Raise ``SchemaMismatch`` unless ``version`` is the code's."""
    if version < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"the inventory schema is at version {version}, this pybatchintory needs version "
            f"{SCHEMA_VERSION}: run `pybatchintory migrate` (or `await Inventory.migrate()`)"
        )
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"the inventory schema is at version {version}, newer than this pybatchintory "
            f"(version {SCHEMA_VERSION}): upgrade pybatchintory"
        )


def _record(t: Tables, version: int) -> sa.Insert:
    return sa.insert(t.schema).values(version=version, applied_at=db_now())


async def prepare(conn: AsyncConnection, t: Tables) -> None:
    """At setup: create a new inventory at the current version, or check an existing one.

    Raises:
        SchemaMismatch: The existing schema is older or newer than the code.
    """
    version = await read_version(conn, t)
    if version is not None:
        check(version)
        return
    await conn.run_sync(t.metadata.create_all, checkfirst=True)
    await conn.execute(_record(t, SCHEMA_VERSION))


def _fresh(t: Tables) -> list[Statement]:
    statements: list[Statement] = []
    for table in t.metadata.sorted_tables:
        statements.append(CreateTable(table))
        statements.extend(CreateIndex(index) for index in table.indexes)
    statements.append(_record(t, SCHEMA_VERSION))
    return statements


async def _has_index(conn: AsyncConnection, statement: CreateIndex) -> bool:
    index = statement.element
    table = index.table
    assert table is not None, "an index of a table"

    def names(sync_conn: sa.Connection) -> set[str]:
        return {str(i["name"]) for i in sa.inspect(sync_conn).get_indexes(table.name)}

    return str(index.name) in await conn.run_sync(names)


def _sql(statement: Statement, dialect: Dialect) -> str:
    compiled = statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return str(compiled).strip() + ";"


async def migrate(
    transact: Transact, read: Read[int | None], t: Tables, dialect: Dialect, *, dry_run: bool
) -> list[str]:
    """Apply (or, with ``dry_run``, only list) the SQL that brings the schema up to date.

    Returns the SQL statements, in order; empty when the schema is current.

    Raises:
        SchemaMismatch: The schema is newer than the code.
    """
    version = await read(lambda conn: read_version(conn, t))
    if version is None:
        plan: list[tuple[int, list[Statement]]] = [(SCHEMA_VERSION, _fresh(t))]
    elif version > SCHEMA_VERSION:
        check(version)
        plan = []
    else:
        plan = [
            (m.version, [*m.statements(t, dialect.name), _record(t, m.version)])
            for m in MIGRATIONS
            if m.version > version
        ]
    shown = [_sql(statement, dialect) for _, statements in plan for statement in statements]
    if dry_run:
        return shown
    for _, statements in plan:

        async def apply(conn: AsyncConnection, statements: list[Statement] = statements) -> None:
            for statement in statements:
                if isinstance(statement, CreateIndex) and await _has_index(conn, statement):
                    # Made by a run that stopped before its version row (MySQL's DDL commits).
                    continue
                await conn.execute(statement)

        await transact(apply)
    return shown
