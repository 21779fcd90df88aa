"""Helpers shared by the test modules: metadata tables and plain-SQL reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ("create_meta_table", "fetch_all", "holding_job_lock", "insert_rows", "meta_table")

_CHUNK = 5000


def meta_table(name: str = "files") -> sa.Table:
    """The test metadata table: id, size_in_bytes, kind, imported."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("size_in_bytes", sa.BigInteger()),
        sa.Column("kind", sa.String(16)),
        sa.Column(
            "imported",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        ),
    )


def default_size(meta_id: int) -> int:
    """The deterministic size of a generated row."""
    return (meta_id * 7919) % 1000 + 1


async def create_meta_table(
    url: str,
    name: str = "files",
    rows: int = 1000,
    *,
    weights: Sequence[int] | None = None,
    with_timestamp: bool = True,
    kinds: Sequence[str] = ("csv", "json"),
    start_id: int = 1,
) -> None:
    """Create ``name`` with ids ``start_id .. start_id + rows - 1``."""
    table = meta_table(name)
    imported = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        values = [
            {
                "id": meta_id,
                "size_in_bytes": default_size(meta_id) if weights is None else weights[i],
                "kind": kinds[i % len(kinds)],
                "imported": imported if with_timestamp else None,
            }
            for i, meta_id in enumerate(range(start_id, start_id + rows))
        ]
        for offset in range(0, len(values), _CHUNK):
            async with engine.begin() as conn:
                await conn.execute(table.insert(), values[offset : offset + _CHUNK])
    finally:
        await engine.dispose()


async def insert_rows(url: str, name: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows into a metadata table made by ``create_meta_table``."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(meta_table(name).insert(), rows)
    finally:
        await engine.dispose()


async def fetch_all(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run a plain SQL query and return its rows as dicts.

    ``datetime`` parameters are bound as ``DateTime`` (SQLAlchemy renders them for the
    driver), never left to sqlite3's default adapter, deprecated since Python 3.12.
    """
    statement = sa.text(sql).bindparams(
        *(
            sa.bindparam(k, type_=sa.DateTime())
            for k, v in params.items()
            if isinstance(v, datetime)
        )
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(statement, params)
            if not result.returns_rows:
                await conn.commit()
                return []
            rows = [dict(row) for row in result.mappings()]
            await conn.commit()
            return rows
    finally:
        await engine.dispose()


@asynccontextmanager
async def holding_job_lock(url: str, backend: str, job: str) -> AsyncIterator[None]:
    """Hold ``job``'s lock from another connection, as an acquire in progress does.

    ``SELECT ... FOR UPDATE`` on the job's row; SQLite has no row locks, so the whole
    database's write lock (``BEGIN IMMEDIATE``). Released (rolled back) on exit.
    """
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            if backend == "sqlite":
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                locked = await conn.execute(
                    sa.text("SELECT name FROM inventory_jobs WHERE name = :name FOR UPDATE"),
                    {"name": job},
                )
                assert locked.scalar_one() == job, f"job {job!r} is not recorded"
            try:
                yield
            finally:
                await conn.rollback()
    finally:
        await engine.dispose()
