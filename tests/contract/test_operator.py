"""Operator controls: ``plan`` (a dry run), ``set_cursor`` and ``mark_done``.

See docs/operations.md.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles
from tests.helpers import fetch_all

LEDGER = "SELECT COUNT(*) AS n FROM inventory"
JOBS = "SELECT * FROM inventory_jobs ORDER BY name"  # `cursor` is a keyword on MariaDB


async def _snapshot(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ledger's full content and the jobs table, read with plain SQL."""
    ledger = await fetch_all(url, "SELECT * FROM inventory ORDER BY id")
    jobs = await fetch_all(url, JOBS)
    return ledger, jobs


def _ranges(batches: list[pbi.Batch]) -> list[tuple[int, int, int, object, bool]]:
    return [(b.meta_id_start, b.meta_id_end, b.count, b.weight, b.oversized) for b in batches]


def _planned(plan: list[pbi.PlannedRange]) -> list[tuple[int, int, int, object, bool]]:
    return [(p.meta_id_start, p.meta_id_end, p.count, p.weight, p.oversized) for p in plan]


async def _lease_n(
    inv: pbi.Inventory, job: str, source: pbi.MetaTable, n: int, **limits: Any
) -> list[pbi.Batch]:
    out: list[pbi.Batch] = []
    for _ in range(n):
        async with inv.lease(job, source, **limits) as batch:
            out.append(batch)
    return out


# -- plan -----------------------------------------------------------------------------------


async def test_plan_of_a_new_job_writes_nothing_and_matches_five_leases(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=1000)
    before = await _snapshot(db_url)
    plan = await inventory.plan("p", files, max_count=70, n=5)
    assert await _snapshot(db_url) == before == ([], [])
    with pytest.raises(pbi.UnknownJob):
        await inventory.backlog("p")

    assert [(p.meta_id_start, p.meta_id_end) for p in plan] == [
        (1, 70),
        (71, 140),
        (141, 210),
        (211, 280),
        (281, 350),
    ]
    assert _planned(plan) == _ranges(await _lease_n(inventory, "p", files, 5, max_count=70))


async def test_plan_of_a_running_job_starts_after_its_cursor(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=1000)
    await _lease_n(inventory, "p2", files, 2, max_count=100)
    held = await inventory.acquire("p2", files, max_count=100)  # a running lease
    assert held is not None

    before = await _snapshot(db_url)
    plan = await inventory.plan("p2", files, max_count=100, n=5)
    assert await _snapshot(db_url) == before
    assert plan[0].meta_id_start == 301
    await held.success()
    assert _planned(plan) == _ranges(await _lease_n(inventory, "p2", files, 5, max_count=100))


async def test_plan_with_max_weight_matches_five_leases(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    weights = [100 + (i * 37) % 900 for i in range(400)]
    weights[20] = 50_000  # heavier than the cap: goes out alone, flagged
    files = await make_files(rows=400, weights=weights)
    before = await _snapshot(db_url)
    plan = await inventory.plan("pw", files, max_weight=5_000, n=5)
    assert await _snapshot(db_url) == before
    assert len(plan) == 5
    assert [p.oversized for p in plan].count(True) == 1
    for planned in plan:
        span = weights[planned.meta_id_start - 1 : planned.meta_id_end]
        assert (planned.count, planned.weight) == (len(span), sum(span))
        assert planned.oversized or planned.weight <= 5_000
        # Maximal: the next row would not have fit.
        if not planned.oversized and planned.meta_id_end < 400:
            assert planned.weight + weights[planned.meta_id_end] > 5_000
    for earlier, later in itertools.pairwise(plan):
        assert later.meta_id_start == earlier.meta_id_end + 1
    assert _planned(plan) == _ranges(await _lease_n(inventory, "pw", files, 5, max_weight=5_000))


async def test_plan_with_both_caps_matches_five_leases(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=1000)
    plan = await inventory.plan("pb", files, max_count=30, max_weight=8_000, n=5)
    assert all(p.count <= 30 and p.weight <= 8_000 for p in plan)
    leased = await _lease_n(inventory, "pb", files, 5, max_count=30, max_weight=8_000)
    assert _planned(plan) == _ranges(leased)


async def test_plan_stops_at_the_end_of_a_window(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=1000)
    plan = await inventory.plan("pwin", files, id_start=101, id_end=250, max_count=60, n=5)
    assert [(p.meta_id_start, p.meta_id_end) for p in plan] == [
        (101, 160),
        (161, 220),
        (221, 250),
    ]
    assert await _snapshot(db_url) == ([], [])
    leased = await _lease_n(inventory, "pwin", files, 3, id_start=101, id_end=250, max_count=60)
    assert _planned(plan) == _ranges(leased)
    assert await inventory.plan("pwin", files, id_start=101, id_end=250, max_count=60) == []


async def test_plan_of_a_filtered_source_counts_only_matching_rows(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300, where={"kind": "json"})
    plan = await inventory.plan("pf", files, max_count=25, n=5)
    # The first range starts at the first matching row, later ones right after the cursor.
    assert [(p.meta_id_start, p.meta_id_end, p.count) for p in plan][:2] == [
        (2, 50, 25),
        (51, 100, 25),
    ]
    assert _planned(plan) == _ranges(await _lease_n(inventory, "pf", files, 5, max_count=25))


async def test_plan_of_an_existing_job_with_another_window_is_a_conflict(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    await _lease_n(inventory, "pc", files, 1, id_start=1, id_end=50, max_count=10)
    with pytest.raises(pbi.JobConflict):
        await inventory.plan("pc", files, id_start=1, id_end=80, max_count=10)


async def test_plan_rejects_a_bad_n(inventory: pbi.Inventory, make_files: MakeFiles) -> None:
    files = await make_files(rows=10)
    for n in (0, -1, True, 2.5):
        with pytest.raises(pbi.InvalidArgument, match="n must be"):
            await inventory.plan("pn", files, max_count=5, n=n)  # type: ignore[arg-type]


# -- set_cursor -----------------------------------------------------------------------------


async def test_set_cursor_creates_a_job_and_leases_start_after_it(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=500)
    await inventory.set_cursor("sc", 300, source=files)
    (job,) = await fetch_all(db_url, JOBS)
    assert (job["name"], int(job["cursor"])) == ("sc", 300)
    assert await fetch_all(db_url, "SELECT id FROM inventory") == []  # nothing handed out

    async with inventory.lease("sc", files, max_count=50) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (301, 350)
    assert (await inventory.backlog("sc")).count == 150


async def test_set_cursor_moves_an_existing_job_without_a_source(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=500)
    await _lease_n(inventory, "sc2", files, 2, max_count=100)
    await inventory.set_cursor("sc2", 400)  # skip ahead
    async with inventory.lease("sc2", files, max_count=100) as ahead:
        assert (ahead.meta_id_start, ahead.meta_id_end) == (401, 500)
    await inventory.set_cursor("sc2", 150)  # rewind: reprocess from 151
    async with inventory.lease("sc2", files, max_count=100) as again:
        assert (again.meta_id_start, again.meta_id_end) == (151, 250)
    (line,) = await inventory.status()
    assert line.cursor == 250


async def test_set_cursor_of_a_new_job_without_a_source_is_a_clear_error(
    inventory: pbi.Inventory, db_url: str
) -> None:
    with pytest.raises(pbi.UnknownJob, match=r"'ghost'.*source="):
        await inventory.set_cursor("ghost", 10)
    assert await fetch_all(db_url, JOBS) == []


async def test_set_cursor_rejects_a_non_integer(inventory: pbi.Inventory) -> None:
    with pytest.raises(pbi.InvalidArgument, match="meta_id"):
        await inventory.set_cursor("x", "10")  # type: ignore[arg-type]


async def test_set_cursor_with_the_source_of_an_existing_backfill(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    """Passing the source again for a windowed job is not a conflict: the window stays."""
    files = await make_files(rows=500)
    await _lease_n(inventory, "scw", files, 1, id_start=101, id_end=400, max_count=50)
    await inventory.set_cursor("scw", 300, source=files)
    async with inventory.lease("scw", files, id_start=101, id_end=400, max_count=500) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (301, 400)


# -- mark_done ------------------------------------------------------------------------------


async def test_mark_done_records_a_succeeded_range_that_leases_skip(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=300)
    attempt_id = await inventory.mark_done("md", 1, 120, source=files)

    (row,) = await fetch_all(
        db_url, "SELECT COUNT(*) AS n, SUM(size_in_bytes) AS w FROM files WHERE id <= 120"
    )
    (done,) = await inventory.batches("md")
    assert done.id == attempt_id
    assert done.status is pbi.Status.SUCCEEDED
    assert (done.meta_id_start, done.meta_id_end) == (1, 120)
    assert (done.count, done.weight) == (int(row["n"]), int(row["w"]))
    assert [a.id for a in await inventory.history(files, 77)] == [attempt_id]
    assert await inventory.batches("md", status="succeeded") == [done]

    async with inventory.lease("md", files, max_count=100) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (121, 220)
    (line,) = await inventory.status()
    assert line.cursor == 220


async def test_mark_done_of_an_existing_job_continues_after_the_range(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=300)
    await _lease_n(inventory, "md2", files, 1, max_count=50)
    await inventory.mark_done("md2", 51, 200)
    async with inventory.lease("md2", files, max_count=500) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (201, 300)
    succeeded = await inventory.batches("md2", status="succeeded")
    assert sorted((a.meta_id_start, a.meta_id_end) for a in succeeded) == [
        (1, 50),
        (51, 200),
        (201, 300),
    ]


async def test_mark_done_of_a_filtered_job_counts_only_matching_rows(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100, where={"kind": "csv"})
    await inventory.mark_done("mdf", 1, 40, source=files)
    (done,) = await inventory.batches("mdf")
    (row,) = await fetch_all(
        db_url,
        "SELECT COUNT(*) AS n, SUM(size_in_bytes) AS w FROM files WHERE id <= 40 AND kind = 'csv'",
    )
    assert (done.count, done.weight) == (int(row["n"]), int(row["w"]))


async def test_mark_done_inside_a_backfill_window(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=500)
    await _lease_n(inventory, "mdw", files, 1, id_start=101, id_end=400, max_count=50)
    await inventory.mark_done("mdw", 151, 300, source=files)
    async with inventory.lease("mdw", files, id_start=101, id_end=400) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (301, 400)


async def test_mark_done_that_would_skip_rows_is_refused(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """Rows between the cursor and ``start`` would never be handed out: refused."""
    files = await make_files(rows=300)
    await _lease_n(inventory, "gap", files, 1, max_count=50)
    with pytest.raises(pbi.InvalidArgument, match="skip"):
        await inventory.mark_done("gap", 101, 200)
    assert len(await inventory.batches("gap")) == 1
    (line,) = await inventory.status()
    assert line.cursor == 50


async def test_mark_done_needs_start_before_end(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)
    with pytest.raises(pbi.InvalidArgument):
        await inventory.mark_done("bad", 5, 4, source=files)
    with pytest.raises(pbi.UnknownJob):
        await inventory.mark_done("bad", 1, 4)


@pytest.mark.parametrize("dead", [False, True], ids=["retry-pending", "dead"])
async def test_mark_done_of_a_failed_range_settles_it(
    inventory: pbi.Inventory, make_files: MakeFiles, dead: bool
) -> None:
    """A failed range fixed by hand: leases skip it, and it no longer holds anything back."""
    files = await make_files(rows=100)
    await _lease_n(inventory, "fix", files, 1, max_count=10)
    for _ in range(3 if dead else 1):
        with pytest.raises(RuntimeError):
            async with inventory.lease("fix", files, max_count=10) as failing:
                assert failing.meta_id_start == 11
                raise RuntimeError("corrupt input")
    backlog = await inventory.backlog("fix")
    assert (backlog.retry_due, backlog.dead) == ((0, 1) if dead else (1, 0))

    await inventory.mark_done("fix", 11, 20)
    backlog = await inventory.backlog("fix")
    assert (backlog.retry_due, backlog.dead) == (0, 0)
    async with inventory.lease("fix", files, max_count=10) as batch:
        assert (batch.meta_id_start, batch.attempt) == (21, 1)
    async with inventory.lease("down", pbi.InventorySource("fix")) as down:
        assert [item["id"] for item in await down.items()] == [1, 11, 21]


async def test_plan_puts_ranges_due_for_retry_first_like_the_leases(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """The next ranges a job gets start with its due retries (oldest first): so does plan."""
    files = await make_files(rows=200)
    await _lease_n(inventory, "pr", files, 1, max_count=10)  # 1..10
    for expected_start in (11, 11, 11, 21):  # 11..20 dies after three attempts
        with pytest.raises(RuntimeError):
            async with inventory.lease("pr", files, max_count=10) as failing:
                assert failing.meta_id_start == expected_start
                raise RuntimeError("flaky")
    backlog = await inventory.backlog("pr")
    assert (backlog.retry_due, backlog.dead) == (1, 1)

    before = await _snapshot(db_url)
    plan = await inventory.plan("pr", files, max_count=20, n=3)
    assert await _snapshot(db_url) == before
    assert [(p.meta_id_start, p.meta_id_end, p.attempt) for p in plan] == [
        (21, 30, 2),  # the retry keeps its range, whatever the limits now
        (31, 50, 1),
        (51, 70, 1),
    ]
    leased = await _lease_n(inventory, "pr", files, 3, max_count=20)
    assert [(b.meta_id_start, b.meta_id_end, b.attempt) for b in leased] == [
        (p.meta_id_start, p.meta_id_end, p.attempt) for p in plan
    ]
    assert _planned(plan) == _ranges(leased)


async def test_plan_lists_an_expired_lease_as_the_retry_the_next_lease_is(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    async with pbi.Inventory(db_url, owner="vanished") as holder:
        held = await holder.acquire("px", files, max_count=10)
        assert held is not None
        # The holder vanished: its lease ran out (set in the past with plain SQL).
        await fetch_all(
            db_url,
            "UPDATE inventory SET expires_at = :t WHERE id = :id",
            t=datetime(2000, 1, 1),
            id=held.id,
        )
        before = await _snapshot(db_url)
        plan = await inventory.plan("px", files, max_count=10, n=2)
        assert await _snapshot(db_url) == before
        assert [(p.meta_id_start, p.meta_id_end, p.attempt) for p in plan] == [
            (1, 10, 2),
            (11, 20, 1),
        ]
        leased = await _lease_n(inventory, "px", files, 2, max_count=10)
        assert [(b.meta_id_start, b.meta_id_end, b.attempt) for b in leased] == [
            (1, 10, 2),
            (11, 20, 1),
        ]
        with pytest.raises(pbi.LeaseLost):
            await held.success()
