"""A ledger of the previous schema version is migrated with its rows intact, on every backend."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi
from pybatchintory_adapters._sqlalchemy.migrations import MIGRATIONS
from pybatchintory_adapters._sqlalchemy.tables import SCHEMA_VERSION, Tables, build_tables

from tests.helpers import create_meta_table, fetch_all

SCRIPT = Path(sys.executable).with_name("pybatchintory")
NEW_INDEX = "ix_inventory_job_status_start"


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """These tests are about creating and migrating the schema: an empty database each."""
    return empty_db_url


def test_the_migrations_end_at_the_schema_version() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(versions) and versions[-1] == SCHEMA_VERSION == 3
    assert versions == list(range(2, SCHEMA_VERSION + 1))


async def _to_version_1(url: str) -> None:
    """Turn the schema back into version 1: the new index dropped, the version row 1."""
    tables = build_tables()
    (index,) = [i for i in tables.inventory.indexes if i.name == NEW_INDEX]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.schema.DropIndex(index))
            await conn.execute(sa.delete(tables.schema))
            await conn.execute(sa.insert(tables.schema).values(version=1))
    finally:
        await engine.dispose()


async def _indexes(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: {str(i["name"]) for i in sa.inspect(c).get_indexes("inventory")}
            )
    finally:
        await engine.dispose()


async def _set_version(url: str, version: int) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(f"INSERT INTO inventory_schema (version) VALUES ({version})")
            )
    finally:
        await engine.dispose()


async def test_a_version_1_ledger_is_migrated_with_its_rows(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    await create_meta_table(db_url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(db_url, max_attempts=2) as inv:
        for n in range(3):
            try:
                async with inv.lease("ingest", files, max_count=20):
                    if n == 1:
                        raise ValueError("boom")
            except ValueError:
                pass
    await _to_version_1(db_url)
    select = "SELECT * FROM inventory ORDER BY id"
    before = await fetch_all(db_url, select)
    jobs_before = await fetch_all(db_url, "SELECT * FROM inventory_jobs ORDER BY name")
    assert len(before) == 3 and NEW_INDEX not in await _indexes(db_url)

    with pytest.raises(pbi.SchemaMismatch, match=r"version 1.*pybatchintory migrate"):
        async with pbi.Inventory(db_url):
            pass
    dry = await pbi.Inventory(db_url).migrate(dry_run=True)
    # Version 2 (the index, its version row), then version 3 (the weight column's type,
    # nothing to do on SQLite, and its version row).
    v3 = 1 if backend == "sqlite" else 2
    assert len(dry) == 2 + v3 and NEW_INDEX in dry[0] and "inventory_schema" in dry[1]
    assert "inventory_schema" in dry[-1]
    assert NEW_INDEX not in await _indexes(db_url)  # a dry run changes nothing

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    env["PYBATCHINTORY_INVENTORY_URL"] = db_url
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "migrate",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert NEW_INDEX in out.decode() and f"applied {2 + v3} statement(s)" in out.decode()

    assert NEW_INDEX in await _indexes(db_url)
    assert await fetch_all(db_url, select) == before
    assert await fetch_all(db_url, "SELECT * FROM inventory_jobs ORDER BY name") == jobs_before
    versions = await fetch_all(db_url, "SELECT version FROM inventory_schema ORDER BY version")
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert await pbi.Inventory(db_url).migrate() == []  # nothing left to do

    # A run that stopped after its DDL but before its version row is finished by the next.
    engine = create_async_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM inventory_schema WHERE version >= 2"))
    await engine.dispose()
    assert len(await pbi.Inventory(db_url).migrate()) == 2 + v3
    assert len(await fetch_all(db_url, "SELECT version FROM inventory_schema")) == 3

    async with pbi.Inventory(db_url, max_attempts=2) as inv:  # the ledger carries on
        async with inv.lease("ingest", files, max_count=20) as batch:
            assert (batch.meta_id_start, batch.attempt) == (41, 1)

    await _set_version(db_url, SCHEMA_VERSION + 1)
    with pytest.raises(pbi.SchemaMismatch, match=r"newer.*upgrade pybatchintory"):
        async with pbi.Inventory(db_url):
            pass
    with pytest.raises(pbi.SchemaMismatch, match="newer"):
        await pbi.Inventory(db_url).migrate()


def _version_2_tables() -> Tables:
    """The tables of schema version 2: ``inventory.weight`` a ``BIGINT``."""
    tables = build_tables()
    tables.inventory.c.weight.type = sa.BigInteger()
    return tables


_FILES_SOURCE = {
    "kind": "meta_table",
    "table": "files",
    "id": "id",
    "weight": "size_in_bytes",
    "filter": None,
    "database": "inventory",
}


async def _version_2_ledger(url: str) -> None:
    """A ledger as version 2 wrote it: BIGINT weights, one job, three attempts."""
    tables = _version_2_tables()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(tables.metadata.create_all)
            await conn.execute(sa.insert(tables.schema).values(version=1))
            await conn.execute(sa.insert(tables.schema).values(version=2))
            await conn.execute(
                sa.insert(tables.jobs).values(
                    name="ingest", meta_table="files", source=_FILES_SOURCE, cursor=30
                )
            )
            past = datetime(2020, 1, 1)
            rows = [
                (1, 10, 5_500, "succeeded", {"rows": 10}, None, None, None),
                (11, 20, 4_321, "failed", None, "ValueError", "boom", past),
                (21, 30, 9_999_999_999, "succeeded", None, None, None, None),
            ]
            await conn.execute(
                sa.insert(tables.inventory),
                [
                    {
                        "meta_table": "files",
                        "job": "ingest",
                        "owner": "old",
                        "meta_id_start": start,
                        "meta_id_end": end,
                        "count": 10,
                        "weight": weight,
                        "attempt": 1,
                        "status": status,
                        "job_result": result,
                        "failures": 1 if status == "failed" else 0,
                        "error_type": error_type,
                        "error_message": message,
                        "retry_after": retry_after,
                        "processing_start": past,
                        "processing_end": past,
                    }
                    for start, end, weight, status, result, error_type, message, retry_after in rows
                ],
            )
    finally:
        await engine.dispose()


async def _weight_type(url: str) -> str:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: sa.inspect(c).get_columns("inventory"))
    finally:
        await engine.dispose()
    (weight,) = [c for c in columns if c["name"] == "weight"]
    return str(weight["type"]).upper()


async def test_a_version_2_ledger_gets_numeric_weights_with_its_rows(
    backend: str, db_url: str
) -> None:
    await _version_2_ledger(db_url)
    select = "SELECT * FROM inventory ORDER BY id"
    before = await fetch_all(db_url, select)
    assert "BIGINT" in await _weight_type(db_url)
    with pytest.raises(pbi.SchemaMismatch, match=r"version 2.*version 3"):
        async with pbi.Inventory(db_url):
            pass

    applied = await pbi.Inventory(db_url).migrate()
    assert "inventory_schema" in applied[-1]
    if backend != "sqlite":  # SQLite keeps the declared type: a BIGINT column holds reals
        assert "NUMERIC(38, 10)" in applied[0] and "weight" in applied[0]
        assert "NUMERIC" in await _weight_type(db_url) or "DECIMAL" in await _weight_type(db_url)
    after = await fetch_all(db_url, select)
    assert after == before  # every row and column as it was (5500 == Decimal("5500.0"))
    versions = await fetch_all(db_url, "SELECT version FROM inventory_schema ORDER BY version")
    assert [v["version"] for v in versions] == [1, 2, 3]

    await create_meta_table(db_url, rows=40)
    engine = create_async_engine(db_url)
    async with engine.begin() as conn:  # fractional sizes from here on
        await conn.execute(sa.text("UPDATE files SET size_in_bytes = 1 WHERE id > 30"))
    await engine.dispose()
    async with pbi.Inventory(db_url) as inv:
        (old, failed, big) = sorted(await inv.batches("ingest"), key=lambda a: a.id)
        assert (old.weight, failed.weight, big.weight) == (5_500, 4_321, 9_999_999_999)
        assert type(old.weight) is int and failed.error_message == "boom"
        async with inv.lease(
            "ingest", pbi.MetaTable("files", weight="size_in_bytes"), max_weight=2.5
        ) as batch:
            assert (batch.meta_id_start, batch.weight) == (11, 4_321)  # the retry first
        floats = await _float_files(db_url)
        async with inv.lease("fractional", floats, max_weight=1.5) as batch:
            assert (batch.count, round(float(batch.weight), 9)) == (3, 1.2)
        (stored,) = await fetch_all(db_url, "SELECT weight FROM inventory WHERE job = 'fractional'")
        assert round(float(stored["weight"]), 9) == 1.2


async def _float_files(url: str) -> pbi.MetaTable:
    table = sa.Table(
        "mib",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("size_in_mib", sa.Double()),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(
                table.insert(), [{"id": i, "size_in_mib": 0.4} for i in range(1, 11)]
            )
    finally:
        await engine.dispose()
    return pbi.MetaTable("mib", weight="size_in_mib")


async def test_a_new_database_is_created_at_the_current_version(db_url: str) -> None:
    async with pbi.Inventory(db_url) as inv:
        assert await inv.status() == []
    versions = await fetch_all(db_url, "SELECT version FROM inventory_schema")
    assert [v["version"] for v in versions] == [SCHEMA_VERSION]
    assert NEW_INDEX in await _indexes(db_url)
