"""Mixed deployments: the metadata table in one database, the inventory in another.

``MetaTable(url=...)`` names the metadata database; ``None`` = the inventory's.
Items, counts and weights must come from the metadata database; the ledger must land in the
inventory database only. Each inventory database also holds a *decoy* ``files`` table with
other weights and kinds, so reading the wrong database cannot go unnoticed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi

from tests.helpers import create_meta_table, default_size, insert_rows
from tests.integration._harness import ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROWS = 3000
BATCH = 500


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    return set(names)


def _check_rows(rows: list[Any], start: int, end: int) -> None:
    assert [row["id"] for row in rows] == list(range(start, end + 1))
    assert {row["kind"] for row in rows} == {"meta"}, "items were read from the decoy table"
    assert [row["size_in_bytes"] for row in rows] == [
        default_size(i) for i in range(start, end + 1)
    ]


async def _lease_across(inventory_url: str, meta_url: str) -> None:
    await create_meta_table(meta_url, rows=ROWS, kinds=("meta",))
    await create_meta_table(
        inventory_url, rows=ROWS // 2, weights=[7] * (ROWS // 2), kinds=("decoy",)
    )
    files = pbi.MetaTable("files", weight="size_in_bytes", timestamp="imported", url=meta_url)

    async with pbi.Inventory(inventory_url) as inv:
        for n in range(3):
            async with inv.lease("mixed", files, max_count=BATCH) as batch:
                start, end = n * BATCH + 1, (n + 1) * BATCH
                assert (batch.meta_id_start, batch.meta_id_end, batch.count) == (start, end, BATCH)
                assert batch.weight == sum(default_size(i) for i in range(start, end + 1))
                _check_rows(list(await batch.items()), start, end)
        async with inv.lease("mixed", files, max_weight=100_000) as batch:
            streamed = [row async for row in batch.iter_items(chunk_size=97)]
            _check_rows(streamed, batch.meta_id_start, batch.meta_id_end)
            assert batch.meta_id_start == 3 * BATCH + 1
            assert batch.weight == sum(row["size_in_bytes"] for row in streamed) <= 100_000
            fourth_end = batch.meta_id_end

        backlog = await inv.backlog("mixed", files)
        assert backlog.count == ROWS - fourth_end  # counted in the metadata database

        # Incremental: rows that arrive later in the metadata database are handed out too.
        await insert_rows(
            meta_url,
            "files",
            [
                {"id": i, "size_in_bytes": default_size(i), "kind": "meta", "imported": None}
                for i in range(ROWS + 1, ROWS + 101)
            ],
        )
        while True:
            try:
                async with inv.lease("mixed", files, max_count=1000) as batch:
                    _check_rows(list(await batch.items()), batch.meta_id_start, batch.meta_id_end)
            except pbi.NoBatchAvailable:
                break
        history = await inv.history(files, ROWS + 50)
        assert [(a.job, a.status) for a in history] == [("mixed", pbi.Status.SUCCEEDED)]

    attempts = await ledger(inventory_url, "mixed")
    assert {a["status"] for a in attempts} == {"succeeded"}
    assert attempts[0]["meta_id_start"] == 1 and attempts[-1]["meta_id_end"] == ROWS + 100
    for before, after in itertools.pairwise(attempts):
        assert after["meta_id_start"] == before["meta_id_end"] + 1
    assert sum(a["count"] for a in attempts) == ROWS + 100

    meta_tables = await _tables(meta_url)
    assert not {name for name in meta_tables if name.startswith("inventory")}, (
        f"the ledger leaked into the metadata database: {sorted(meta_tables)}"
    )
    assert {"inventory", "inventory_jobs"} <= await _tables(inventory_url)


async def test_metadata_in_another_database_of_the_same_backend(
    db_url: str, meta_db_url: str
) -> None:
    await _lease_across(db_url, meta_db_url)


@pytest.mark.parametrize(
    ("meta_backend", "inventory_backend"),
    [
        pytest.param(
            "mysql",
            "postgres",
            marks=[pytest.mark.mysql, pytest.mark.postgres],
            id="meta=mariadb-inventory=postgres",
        ),
        pytest.param(
            "sqlite",
            "postgres",
            marks=[pytest.mark.sqlite, pytest.mark.postgres],
            id="meta=sqlite-inventory=postgres",
        ),
        pytest.param(
            "postgres",
            "mysql",
            marks=[pytest.mark.postgres, pytest.mark.mysql],
            id="meta=postgres-inventory=mariadb",
        ),
        pytest.param(
            "postgres",
            "sqlite",
            marks=[pytest.mark.postgres, pytest.mark.sqlite],
            id="meta=postgres-inventory=sqlite",
        ),
    ],
)
async def test_metadata_and_inventory_on_different_backends(
    any_db_url_factory: Any, meta_backend: str, inventory_backend: str
) -> None:
    # The factory runs its own event loop (asyncio.run): call it from a worker thread.
    meta_url = await asyncio.to_thread(any_db_url_factory, meta_backend)
    inventory_url = await asyncio.to_thread(any_db_url_factory, inventory_backend)
    await _lease_across(inventory_url, meta_url)
