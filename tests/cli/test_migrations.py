"""A ledger of the previous schema version is migrated with its rows intact, on every backend."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi
from pybatchintory_adapters._sqlalchemy.migrations import MIGRATIONS
from pybatchintory_adapters._sqlalchemy.tables import SCHEMA_VERSION, build_tables

from tests.helpers import create_meta_table, fetch_all

SCRIPT = Path(sys.executable).with_name("pybatchintory")
NEW_INDEX = "ix_inventory_job_status_start"


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """These tests are about creating and migrating the schema: an empty database each."""
    return empty_db_url


def test_the_migrations_end_at_the_schema_version() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(versions) and versions[-1] == SCHEMA_VERSION == 2
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
    assert len(dry) == 2 and NEW_INDEX in dry[0] and "inventory_schema" in dry[1]
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
    assert NEW_INDEX in out.decode() and "applied 2 statement(s)" in out.decode()

    assert NEW_INDEX in await _indexes(db_url)
    assert await fetch_all(db_url, select) == before
    assert await fetch_all(db_url, "SELECT * FROM inventory_jobs ORDER BY name") == jobs_before
    versions = await fetch_all(db_url, "SELECT version FROM inventory_schema ORDER BY version")
    assert [v["version"] for v in versions] == [1, 2]
    assert await pbi.Inventory(db_url).migrate() == []  # nothing left to do

    # A run that stopped after its DDL but before its version row is finished by the next.
    engine = create_async_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM inventory_schema WHERE version = 2"))
    await engine.dispose()
    assert len(await pbi.Inventory(db_url).migrate()) == 2
    assert len(await fetch_all(db_url, "SELECT version FROM inventory_schema")) == 2

    async with pbi.Inventory(db_url, max_attempts=2) as inv:  # the ledger carries on
        async with inv.lease("ingest", files, max_count=20) as batch:
            assert (batch.meta_id_start, batch.attempt) == (41, 1)

    await _set_version(db_url, SCHEMA_VERSION + 1)
    with pytest.raises(pbi.SchemaMismatch, match=r"newer.*upgrade pybatchintory"):
        async with pbi.Inventory(db_url):
            pass
    with pytest.raises(pbi.SchemaMismatch, match="newer"):
        await pbi.Inventory(db_url).migrate()


async def test_a_new_database_is_created_at_the_current_version(db_url: str) -> None:
    async with pbi.Inventory(db_url) as inv:
        assert await inv.status() == []
    versions = await fetch_all(db_url, "SELECT version FROM inventory_schema")
    assert [v["version"] for v in versions] == [SCHEMA_VERSION]
    assert NEW_INDEX in await _indexes(db_url)
