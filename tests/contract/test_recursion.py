"""Recursion: ``InventorySource(job)`` hands out another job's succeeded attempts.

See docs/recursion.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import event

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles, statements
from tests.helpers import fetch_all


async def _run(
    inv: pbi.Inventory, job: str, source: pbi.MetadataSource, n: int, **limits: Any
) -> list[pbi.Batch]:
    """Lease and succeed up to ``n`` batches of ``job``; stop early when none is left."""
    done: list[pbi.Batch] = []
    for _ in range(n):
        batch = await inv.acquire(job, source, **limits)
        if batch is None:
            break
        batch.result = {"job": job, "rows": len(await batch.items())}
        await batch.success()
        done.append(batch)
    return done


async def test_a_downstream_job_gets_upstream_successes_in_id_order(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=500)
    upstream = await _run(inventory, "ingest", files, 5, max_count=100)
    ingest = pbi.InventorySource("ingest")

    async with inventory.lease("transform", ingest, max_count=2) as batch:
        assert batch.meta_table == "inventory:ingest"
        assert (batch.meta_id_start, batch.meta_id_end, batch.count) == (1, 101, 2)
        assert batch.weight == int(upstream[0].weight) + int(upstream[1].weight)
        items = await batch.items()
    assert [item["id"] for item in items] == [1, 101]
    for item, up in zip(items, upstream[:2], strict=True):
        assert item["attempt_id"] == up.id
        assert item["job"] == "ingest"
        assert item["meta_table"] == "files"
        assert (item["meta_id_start"], item["meta_id_end"]) == (up.meta_id_start, up.meta_id_end)
        assert (item["count"], item["weight"]) == (up.count, up.weight)
        assert item["attempt"] == 1
        assert item["result"] == {"job": "ingest", "rows": 100}
        assert item["processing_end"] is not None

    # Ranges are contiguous in the downstream id space: each starts right after the cursor.
    rest = await _run(inventory, "transform", ingest, 5, max_count=2)
    assert [(b.meta_id_start, b.meta_id_end, b.count) for b in rest] == [
        (102, 301, 2),
        (302, 401, 1),
    ]
    assert [[i["id"] for i in await b.items()] for b in rest] == [[201, 301], [401]]


async def test_downstream_weight_is_the_upstream_weight_and_caps_apply(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=600)
    upstream = await _run(inventory, "ingest", files, 6, max_count=100)
    weights = [int(b.weight) for b in upstream]
    cap = weights[0] + weights[1] + weights[2] // 2  # two upstream ranges fit, three do not

    async with inventory.lease("heavy", pbi.InventorySource("ingest"), max_weight=cap) as batch:
        assert (batch.count, batch.weight) == (2, weights[0] + weights[1])
    backlog = await inventory.backlog("heavy")
    assert (backlog.count, backlog.weight) == (4, sum(weights[2:]))


async def test_without_upstream_weights_the_downstream_weight_is_the_count(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300, weight=None)
    await _run(inventory, "counted", files, 3, max_count=100)
    async with inventory.lease("down", pbi.InventorySource("counted"), max_weight=250) as batch:
        assert (batch.count, batch.weight) == (2, 200)
        assert [item["weight"] for item in await batch.items()] == [0, 0]


async def test_the_horizon_stops_before_the_oldest_running_upstream_attempt(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    ingest = pbi.InventorySource("ingest")
    first, second, third = [
        await inventory.acquire("ingest", files, max_count=100) for _ in range(3)
    ]
    assert first is not None and second is not None and third is not None
    assert await inventory.acquire("transform", ingest) is None

    await first.success()
    await third.success()
    async with inventory.lease("transform", ingest) as early:
        assert [item["id"] for item in await early.items()] == [1]
    assert await inventory.acquire("transform", ingest) is None
    assert await inventory.plan("transform", ingest) == []
    # The backlog counts every upstream success after the cursor, held back or not.
    backlog = await inventory.backlog("transform")
    assert (backlog.count, backlog.weight) == (1, third.weight)

    await second.success()
    async with inventory.lease("transform", ingest) as late:
        assert (late.meta_id_start, late.meta_id_end) == (2, 201)
        assert [item["id"] for item in await late.items()] == [101, 201]


async def test_a_failed_upstream_range_holds_the_horizon_until_its_retry_succeeds(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 1, max_count=100)
    with pytest.raises(RuntimeError):
        async with inventory.lease("ingest", files, max_count=100):
            raise RuntimeError("transient")
    # 201..300 goes out after the retry of 101..200 (retried first); run both.
    retried = await _run(inventory, "ingest", files, 2, max_count=100)
    assert [(b.meta_id_start, b.attempt) for b in retried] == [(101, 2), (201, 1)]

    ranges = await _run(inventory, "transform", ingest, 5)
    assert [(b.meta_id_start, b.meta_id_end, b.count) for b in ranges] == [(1, 201, 3)]
    items = await ranges[0].items()
    assert [(i["id"], i["attempt"]) for i in items] == [(1, 1), (101, 2), (201, 1)]


async def test_a_dead_upstream_range_holds_the_horizon_until_revived(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 1, max_count=100)
    for _ in range(3):  # max_attempts: 101..200 is dead afterwards
        with pytest.raises(RuntimeError):
            async with inventory.lease("ingest", files, max_count=100):
                raise RuntimeError("poison")
    await _run(inventory, "ingest", files, 1, max_count=100)  # 201..300 succeeds

    assert [b.meta_id_start for b in await _run(inventory, "transform", ingest, 5)] == [1]
    assert await inventory.retry("ingest") == 1
    assert [b.meta_id_start for b in await _run(inventory, "ingest", files, 1)] == [101]
    after = await _run(inventory, "transform", ingest, 5)
    assert [(b.meta_id_start, b.meta_id_end, b.count) for b in after] == [(2, 201, 2)]


async def test_history_of_an_upstream_range_shows_the_downstream_attempts(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 3, max_count=100)
    (down,) = await _run(inventory, "transform", ingest, 1, max_count=2)
    assert [a.id for a in await inventory.history(ingest, 101)] == [down.id]
    assert [a.id for a in await inventory.history("inventory:ingest", 1)] == [down.id]
    assert await inventory.history(ingest, 201) == []


async def test_a_chain_of_three_jobs_covers_every_row_exactly_once(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    rows = 1000
    files = await make_files(rows=rows)
    ingest, transform = pbi.InventorySource("ingest"), pbi.InventorySource("transform")
    # Interleaved, as independent schedulers would run them: each stage sees partial input.
    for _ in range(20):
        await _run(inventory, "ingest", files, 2, max_count=37)
        await _run(inventory, "transform", ingest, 1, max_count=3)
        await _run(inventory, "publish", transform, 1, max_count=4)
    for job, source, limits in (
        ("ingest", files, {"max_count": 37}),
        ("transform", ingest, {"max_count": 3}),
        ("publish", transform, {"max_count": 4}),
    ):
        await _run(inventory, job, source, 1000, **limits)

    seen: Counter[int] = Counter()
    async with inventory.lease("audit_chain", pbi.InventorySource("publish")) as top:
        for publish_item in await top.items():
            assert publish_item["job"] == "publish"
            transforms = await fetch_all(
                db_url,
                "SELECT meta_id_start, meta_id_end FROM inventory WHERE job = 'transform' "
                "AND status = 'succeeded' AND meta_id_start BETWEEN :s AND :e",
                s=publish_item["meta_id_start"],
                e=publish_item["meta_id_end"],
            )
            for t in transforms:
                ingests = await fetch_all(
                    db_url,
                    "SELECT meta_id_start, meta_id_end FROM inventory WHERE job = 'ingest' "
                    "AND status = 'succeeded' AND meta_id_start BETWEEN :s AND :e",
                    s=t["meta_id_start"],
                    e=t["meta_id_end"],
                )
                for i in ingests:
                    seen.update(range(int(i["meta_id_start"]), int(i["meta_id_end"]) + 1))
    assert sorted(seen) == list(range(1, rows + 1))
    assert set(seen.values()) == {1}
    for job in ("ingest", "transform", "publish"):
        backlog = await inventory.backlog(job)
        assert (backlog.count, backlog.running, backlog.retry_due) == (0, 0, 0)


async def test_audit_of_a_downstream_job_after_the_upstream_reran_a_range(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=400)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 4, max_count=100)
    await _run(inventory, "transform", ingest, 2, max_count=2)  # [1, 101], [102, 301]
    assert await inventory.audit("transform") == []

    await inventory.set_cursor("ingest", 250)  # the upstream reprocesses 251..350
    await _run(inventory, "ingest", files, 1, max_count=100)
    (finding,) = await inventory.audit("transform")
    assert (finding.attempt.meta_id_start, finding.attempt.meta_id_end) == (102, 301)
    assert (finding.attempt.count, finding.count) == (2, 3)


async def test_audit_of_a_downstream_job_reads_upstream_once_per_chunk(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=400)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 40, max_count=10)
    assert len(await _run(inventory, "transform", ingest, 40, max_count=1)) == 40
    with statements(inventory) as seen:
        assert await inventory.audit("transform") == []
    upstream_reads = [s for s in seen if "inventory" in s and "inventory_jobs" not in s]
    # One read of the succeeded transform ranges, one of the ingest successes under them,
    # and the read that finds no further transform range: not one per range.
    assert len(upstream_reads) <= 4, upstream_reads


async def test_an_upstream_success_behind_a_range_leased_while_planning_is_not_skipped(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """The horizon and the upstream successes must come from one consistent read.

    While the downstream job plans (between its horizon and its read of upstream
    successes), another worker leases upstream 101..200 and 201..300 and finishes only the
    second. The downstream must not take 201 and pass 101, which would then never come.
    Where the store serialises all writers (SQLite), the worker waits until the downstream
    acquire commits: the same invariant holds, the interleaving just cannot happen.
    """
    files = await make_files(rows=300)
    ingest = pbi.InventorySource("ingest")
    await _run(inventory, "ingest", files, 1, max_count=100)

    go, done = threading.Event(), threading.Event()

    async def other_worker() -> None:
        async with pbi.Inventory(db_url, owner="other") as other:
            same = pbi.MetaTable("files", weight="size_in_bytes", timestamp="imported")
            await other.plan("ingest", same, max_count=100)  # bound and warm: no writes
            await anyio.to_thread.run_sync(go.wait)
            first = await other.acquire("ingest", same, max_count=100)
            second = await other.acquire("ingest", same, max_count=100)
            assert first is not None and second is not None
            await second.success()
            done.set()
            await first.release()  # 101..200 comes back as a retry

    worker = threading.Thread(target=lambda: asyncio.run(other_worker()))
    worker.start()
    armed = [True]

    def interleave(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        values = list(parameters.values()) if isinstance(parameters, dict) else parameters
        if armed[0] and "succeeded" in values and "ingest" in values:
            armed[0] = False
            go.set()
            done.wait(timeout=2)

    event.listen(inventory.engine.sync_engine, "before_cursor_execute", interleave)
    try:
        async with inventory.lease("transform", ingest) as first_down:
            first_ids = [item["id"] for item in await first_down.items()]
    finally:
        event.remove(inventory.engine.sync_engine, "before_cursor_execute", interleave)
        go.set()
        await anyio.to_thread.run_sync(worker.join)
    assert not armed[0]

    await _run(inventory, "ingest", files, 5, max_count=100)  # the retry of 101..200
    later = await _run(inventory, "transform", ingest, 5)
    later_ids = [item["id"] for batch in later for item in await batch.items()]
    assert sorted(first_ids + later_ids) == [1, 101, 201]


async def test_an_operator_inventory_reads_a_downstream_job_from_the_ledger(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """The CLI's fresh ``Inventory`` rebuilds the upstream source from the jobs table."""
    files = await make_files(rows=500)
    upstream = await _run(inventory, "ingest", files, 5, max_count=100)
    await _run(inventory, "transform", pbi.InventorySource("ingest"), 1, max_count=2)
    await inventory.set_cursor("ingest", 50)
    await _run(inventory, "ingest", files, 1, max_count=100)  # 51..150, inside [1, 101]

    async with pbi.Inventory(db_url) as operator:
        backlog = await operator.backlog("transform")
        (finding,) = await operator.audit("transform")
        plan = await operator.plan("transform", pbi.InventorySource("ingest"), max_count=2)
    # Upstream successes after the downstream cursor (101): 201, 301, 401.
    assert (backlog.count, backlog.weight) == (3, sum(b.weight for b in upstream[2:]))
    assert (finding.attempt.meta_id_start, finding.attempt.meta_id_end) == (1, 101)
    assert (finding.attempt.count, finding.count) == (2, 3)
    assert [(p.meta_id_start, p.meta_id_end, p.count) for p in plan] == [
        (102, 301, 2),
        (302, 401, 1),
    ]
