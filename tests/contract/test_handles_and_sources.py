"""How ranges are handed out: filters, the handle API, tasks sharing a job, sources.

Every range is checked against the metadata table and the ledger with plain SQL.
"""

from __future__ import annotations

import gc
import weakref
from datetime import timedelta
from itertools import pairwise
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import event

import pybatchintory as pbi
from pybatchintory.sources import Filter

from tests.contract._leasing import drain
from tests.contract._ledger import attempts_of, table_totals
from tests.contract.conftest import MakeFiles
from tests.helpers import fetch_all


@pytest.mark.parametrize(
    ("where", "sql"),
    [
        pytest.param({"kind": "csv"}, "kind = 'csv'", id="mapping-value"),
        pytest.param({"kind": ["csv", "parquet"]}, "kind IN ('csv', 'parquet')", id="mapping-list"),
        pytest.param(
            lambda table: table.c.size_in_bytes > 500, "size_in_bytes > 500", id="callable"
        ),
        pytest.param(
            sa.and_(sa.column("kind") != "json", sa.column("size_in_bytes") < 800),
            "kind <> 'json' AND size_in_bytes < 800",
            id="expression",
        ),
    ],
)
async def test_a_filter_excludes_rows_from_counts_weights_and_items(
    inventory: pbi.Inventory,
    make_files: MakeFiles,
    db_url: str,
    where: Filter,
    sql: str,
) -> None:
    files = await make_files(rows=90, kinds=("csv", "json", "parquet"), where=where)
    batches = await drain(inventory, "filtered", files, max_count=10)
    wanted = [
        row["id"]
        for row in await fetch_all(db_url, f"SELECT id FROM files WHERE {sql} ORDER BY id")
    ]
    assert 0 < len(wanted) < 90
    assert sum(b.count for b in batches) == len(wanted)
    assert sum(b.weight for b in batches) == (await table_totals(db_url, 1, 90, where=sql))[1]
    assert all(b.count == 10 for b in batches[:-1]) and 0 < batches[-1].count <= 10
    handed: list[int] = []
    previous_end = wanted[0] - 1  # the first range starts at the first row that passes
    for batch in batches:
        assert batch.meta_id_start == previous_end + 1  # contiguous across filtered-out rows
        previous_end = batch.meta_id_end
        assert (batch.count, batch.weight) == await table_totals(
            db_url, batch.meta_id_start, batch.meta_id_end, where=sql
        )
        items = await batch.items()
        assert len(items) == batch.count
        handed.extend(int(row["id"]) for row in items)
    assert handed == wanted
    ledger = await attempts_of(db_url, "filtered")
    assert [(r["count"], r["weight"]) for r in ledger] == [(b.count, b.weight) for b in batches]


async def test_iter_items_reads_the_filtered_range_in_chunks(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40, where={"kind": "csv"})
    async with inventory.lease("chunks", files, max_count=15) as batch:
        streamed = [int(row["id"]) async for row in batch.iter_items(chunk_size=4)]
        assert streamed == [int(row["id"]) for row in await batch.items()]
        assert streamed == list(range(1, 30, 2))
        assert all(row["kind"] == "csv" for row in await batch.items())


async def test_acquire_hands_out_a_batch_or_none(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=12)
    batch = await inventory.acquire("handles", files, max_count=8)
    assert batch is not None
    assert (batch.meta_id_start, batch.meta_id_end, batch.attempt) == (1, 8, 1)
    assert batch.status == pbi.Status.RUNNING
    (row,) = await attempts_of(db_url, "handles")
    assert (row["id"], row["status"], row["token"]) == (batch.id, "running", batch.token)
    assert row["owner"] == inventory.owner
    # The lease runs lease_ttl (30 s in the fixture) from the database clock at acquire.
    assert row["expires_at"] - row["processing_start"] == timedelta(seconds=30)
    assert batch.expires_at.tzinfo is not None
    assert batch.expires_at.replace(tzinfo=None) == row["expires_at"]
    other = await inventory.acquire("handles", files, max_count=8)
    assert other is not None and (other.meta_id_start, other.meta_id_end) == (9, 12)
    assert await inventory.acquire("handles", files, max_count=8) is None
    await batch.success({"n": 8})
    await other.success()
    rows = await attempts_of(db_url, "handles")
    assert [(r["status"], r["job_result"]) for r in rows] == [
        ("succeeded", {"n": 8}),
        ("succeeded", None),
    ]


async def test_acquire_many_hands_out_disjoint_ranges_in_order(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=45)
    batches = await inventory.acquire_many("many", files, 4, max_count=10)
    assert [(b.meta_id_start, b.meta_id_end) for b in batches] == [
        (1, 10),
        (11, 20),
        (21, 30),
        (31, 40),
    ]
    assert len({b.token for b in batches}) == 4
    rest = await inventory.acquire_many("many", files, 4, max_count=10)
    assert [(b.meta_id_start, b.meta_id_end) for b in rest] == [(41, 45)]
    assert await inventory.acquire_many("many", files, 4, max_count=10) == []
    for batch in (*batches, *rest):
        await batch.success()
    rows = await attempts_of(db_url, "many")
    assert [(r["meta_id_start"], r["meta_id_end"], r["status"]) for r in rows] == [
        (b.meta_id_start, b.meta_id_end, "succeeded") for b in (*batches, *rest)
    ]


async def test_acquire_many_takes_retries_first_then_new_ranges(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=50)
    first, second = await inventory.acquire_many("many", files, 2, max_count=10)
    await first.error(RuntimeError("boom"))
    await second.release()
    batches = await inventory.acquire_many("many", files, 3, max_count=10)
    assert [(b.meta_id_start, b.meta_id_end, b.attempt) for b in batches] == [
        (1, 10, 2),
        (11, 20, 2),
        (21, 30, 1),
    ]
    for batch in batches:
        await batch.release()


async def test_leases_yields_up_to_iterations_batches(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    ranges = []
    async for batch in inventory.leases("loop", files, max_count=15, iterations=3):
        async with batch:
            ranges.append((batch.meta_id_start, batch.meta_id_end))
    assert ranges == [(1, 15), (16, 30), (31, 45)]
    async for batch in inventory.leases("loop", files, max_count=15):
        async with batch:
            ranges.append((batch.meta_id_start, batch.meta_id_end))
    assert ranges[3:] == [(46, 60), (61, 75), (76, 90), (91, 100)]
    rows = await attempts_of(db_url, "loop")
    assert [r["status"] for r in rows] == ["succeeded"] * 7


async def test_concurrent_tasks_of_two_inventories_get_disjoint_gap_free_ranges(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    taken: list[tuple[str, int, int]] = []

    async def worker(inv: pbi.Inventory) -> None:
        while True:
            try:
                async with inv.lease("shared", files, max_count=7, max_weight=3000) as batch:
                    taken.append((inv.owner, batch.meta_id_start, batch.meta_id_end))
                    await anyio.sleep(0.01)
            except pbi.NoBatchAvailable:
                return

    async with (
        pbi.Inventory(db_url, owner="left") as left,
        pbi.Inventory(db_url, owner="right") as right,
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for inv in (left, right) * 4:
                    tg.start_soon(worker, inv)
    ranges = sorted((start, end) for _, start, end in taken)
    assert ranges[0][0] == 1 and ranges[-1][1] == 300
    for (_, end), (start, _) in pairwise(ranges):
        assert start == end + 1  # no overlap, no gap
    assert {owner for owner, _, _ in taken} == {"left", "right"}
    rows = await attempts_of(db_url, "shared")
    assert sorted((r["meta_id_start"], r["meta_id_end"]) for r in rows) == ranges
    assert all(r["status"] == "succeeded" and r["attempt"] == 1 for r in rows)
    for start, end in ranges:
        count, weight = await table_totals(db_url, start, end)
        assert count <= 7 and (weight <= 3000 or count == 1)


async def test_a_table_named_by_a_string_is_inspected_once_not_on_every_call(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    await make_files(rows=200)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(inventory.engine.sync_engine, "before_cursor_execute", count)
    try:
        per_call: dict[str, list[int]] = {}
        for job, source in (("by_name", "files"), ("by_object", pbi.MetaTable("files"))):
            for _ in range(3):
                statements.clear()
                async with inventory.lease(job, source, max_count=10) as batch:
                    assert batch.count == 10
                per_call.setdefault(job, []).append(len(statements))
    finally:
        event.remove(inventory.engine.sync_engine, "before_cursor_execute", count)
    # After the first call, naming the table costs what passing a MetaTable costs.
    assert per_call["by_name"][1:] == per_call["by_object"][1:]
    assert per_call["by_name"][2] < per_call["by_name"][0]


async def test_an_inventory_does_not_keep_every_source_it_was_given(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    await make_files(rows=200)
    calls = 80
    given: list[weakref.ref[pbi.MetaTable]] = []
    for _ in range(calls):
        source = pbi.MetaTable("files")  # a new description per call, as loops often do
        given.append(weakref.ref(source))
        batch = await inventory.acquire("fresh", source, max_count=2)
        assert batch is not None
        await batch.success()
    del source, batch
    gc.collect()
    alive = sum(ref() is not None for ref in given)
    assert alive < calls // 2, f"{alive} of {calls} sources are still referenced"
