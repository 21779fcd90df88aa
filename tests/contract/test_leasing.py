"""What ranges a job is handed: incremental order, caps, windows, ids, settle time.

Every range is checked against the metadata table and the ledger with plain SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import pybatchintory as pbi

from tests.contract._leasing import drain, new_rows
from tests.contract._ledger import attempts_of, job_row, table_totals
from tests.contract.conftest import MakeFiles
from tests.helpers import fetch_all, insert_rows

# -- incremental -----------------------------------------------------------------------


async def test_successive_leases_are_contiguous_and_chronological(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    batches = await drain(inventory, "daily", files, max_count=30)
    assert [(b.meta_id_start, b.meta_id_end, b.count) for b in batches] == [
        (1, 30, 30),
        (31, 60, 30),
        (61, 90, 30),
        (91, 100, 10),
    ]
    rows = await attempts_of(db_url, "daily")
    assert [(r["meta_id_start"], r["meta_id_end"]) for r in rows] == [
        (b.meta_id_start, b.meta_id_end) for b in batches
    ]
    assert all(r["status"] == "succeeded" and r["attempt"] == 1 for r in rows)
    starts = [r["processing_start"] for r in rows]
    assert starts == sorted(starts)
    job = await job_row(db_url, "daily")
    assert job is not None and job["cursor"] == 100


async def test_rows_inserted_later_go_to_later_leases(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=50)
    async with inventory.lease("daily", files) as first:
        assert (first.meta_id_start, first.meta_id_end, first.count) == (1, 50, 50)
    with pytest.raises(pbi.NoBatchAvailable, match="daily"):
        async with inventory.lease("daily", files):
            pytest.fail("nothing is left, the body must not run")
    await insert_rows(db_url, "files", new_rows(51, 75))
    async with inventory.lease("daily", files) as second:
        assert (second.meta_id_start, second.meta_id_end, second.count) == (51, 75, 25)
        assert [row["id"] for row in await second.items()] == list(range(51, 76))
    assert await inventory.acquire("daily", files) is None
    assert len(await attempts_of(db_url, "daily")) == 2


async def test_an_empty_table_has_nothing_to_hand_out(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=0)
    with pytest.raises(pbi.NoBatchAvailable):
        async with inventory.lease("daily", files, max_count=10):
            pytest.fail("the body must not run")
    assert await attempts_of(db_url, "daily") == []


async def test_wait_picks_up_rows_inserted_while_waiting(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    await drain(inventory, "daily", files)
    got: list[tuple[int, int, int]] = []

    async def consumer() -> None:
        async with inventory.lease("daily", files, wait=True, poll_interval=0.05) as batch:
            got.append((batch.meta_id_start, batch.meta_id_end, batch.count))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await anyio.sleep(0.3)
            assert got == []  # still waiting: nothing new yet
            await insert_rows(db_url, "files", new_rows(11, 14))
    assert got == [(11, 14, 4)]


# -- caps ------------------------------------------------------------------------------


async def test_max_count_caps_every_batch(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=25)
    batches = await drain(inventory, "daily", files, max_count=7)
    assert [b.count for b in batches] == [7, 7, 7, 4]
    for batch in batches:
        assert (batch.count, batch.weight) == await table_totals(
            db_url, batch.meta_id_start, batch.meta_id_end
        )


async def test_max_weight_cuts_greedily(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    weights = [30, 50, 20, 40, 40, 10, 90, 5, 5, 60, 70, 25]
    files = await make_files(rows=len(weights), weights=weights)
    batches = await drain(inventory, "daily", files, max_weight=100)
    # Greedy: 30+50+20 | 40+40+10 | 90+5+5 | 60 | 70+25.
    assert [(b.meta_id_start, b.meta_id_end) for b in batches] == [
        (1, 3),
        (4, 6),
        (7, 9),
        (10, 10),
        (11, 12),
    ]
    for batch in batches:
        count, weight = await table_totals(db_url, batch.meta_id_start, batch.meta_id_end)
        assert (batch.count, batch.weight) == (count, weight)
        assert weight <= 100 and not batch.oversized
        following = await fetch_all(
            db_url,
            "SELECT size_in_bytes FROM files WHERE id > :end ORDER BY id LIMIT 1",
            end=batch.meta_id_end,
        )
        if following:  # the next row in the table would have broken the cap
            assert weight + following[0]["size_in_bytes"] > 100
    ledger = await attempts_of(db_url, "daily")
    assert [(r["count"], r["weight"]) for r in ledger] == [(b.count, b.weight) for b in batches]


async def test_with_both_caps_the_first_hit_ends_the_batch(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    # Light rows first (the count cap is hit), then heavy rows (the weight cap is hit).
    weights = [1] * 10 + [40] * 10
    files = await make_files(rows=len(weights), weights=weights)
    batches = await drain(inventory, "daily", files, max_count=4, max_weight=100)
    assert [(b.meta_id_start, b.meta_id_end, b.count, b.weight) for b in batches] == [
        (1, 4, 4, 4),
        (5, 8, 4, 4),
        (9, 12, 4, 82),
        (13, 14, 2, 80),
        (15, 16, 2, 80),
        (17, 18, 2, 80),
        (19, 20, 2, 80),
    ]
    for batch in batches:
        assert (batch.count, batch.weight) == await table_totals(
            db_url, batch.meta_id_start, batch.meta_id_end
        )


async def test_a_row_heavier_than_max_weight_goes_out_alone_flagged(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=5, weights=[10, 20, 500, 30, 40])
    batches = await drain(inventory, "daily", files, max_weight=100)
    assert [(b.meta_id_start, b.meta_id_end, b.count, b.weight, b.oversized) for b in batches] == [
        (1, 2, 2, 30, False),
        (3, 3, 1, 500, True),
        (4, 5, 2, 70, False),
    ]
    ledger = await attempts_of(db_url, "daily")
    assert [r["oversized"] for r in ledger] == [False, True, False]
    assert [r["weight"] for r in ledger] == [30, 500, 70]


async def test_without_caps_a_batch_takes_everything_available(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=1200)
    async with inventory.lease("daily", files) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (1, 1200)
        assert (batch.count, batch.weight) == await table_totals(db_url, 1, 1200)
        assert len(await batch.items()) == 1200


async def test_limits_may_change_from_call_to_call(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    sizes = []
    options: list[dict[str, Any]] = [{"max_count": 10}, {"max_count": 25}, {"max_weight": 2000}, {}]
    for limits in options:
        async with inventory.lease("daily", files, **limits) as batch:
            sizes.append((batch.meta_id_start, batch.meta_id_end))
            assert (batch.count, batch.weight) == await table_totals(
                db_url, batch.meta_id_start, batch.meta_id_end
            )
    assert sizes[:2] == [(1, 10), (11, 35)]
    assert sizes[2][0] == 36 and sizes[3] == (sizes[2][1] + 1, 100)
    ledger = await attempts_of(db_url, "daily")
    assert [r["config"]["max_count"] for r in ledger] == [10, 25, None, None]
    assert [r["config"]["max_weight"] for r in ledger] == [None, None, 2000, None]


# -- backfill windows --------------------------------------------------------------------


async def test_a_backfill_stays_in_its_window_and_ends(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    window: dict[str, Any] = {"id_start": 10, "id_end": 50}
    batches = await drain(inventory, "backfill", files, max_count=15, **window)
    assert [(b.meta_id_start, b.meta_id_end) for b in batches] == [(10, 24), (25, 39), (40, 50)]
    assert sum(b.count for b in batches) == 41
    with pytest.raises(pbi.NoBatchAvailable):
        async with inventory.lease("backfill", files, max_count=15, **window):
            pytest.fail("the window is done")
    job = await job_row(db_url, "backfill")
    assert job is not None
    assert (job["id_start"], job["id_end"], job["cursor"]) == (10, 50, 50)


async def test_a_backfill_resumes_in_a_new_inventory(db_url: str, make_files: MakeFiles) -> None:
    files = await make_files(rows=100)
    window: dict[str, Any] = {"id_start": 20, "id_end": 59, "max_count": 10}
    async with pbi.Inventory(db_url) as first:
        async with first.lease("backfill", files, **window) as batch:
            assert (batch.meta_id_start, batch.meta_id_end) == (20, 29)
        async with first.lease("backfill", files, **window) as batch:
            assert (batch.meta_id_start, batch.meta_id_end) == (30, 39)
    async with pbi.Inventory(db_url) as second:
        rest = await drain(second, "backfill", files, **window)
    assert [(b.meta_id_start, b.meta_id_end) for b in rest] == [(40, 49), (50, 59)]
    ledger = await attempts_of(db_url, "backfill")
    assert [(r["meta_id_start"], r["meta_id_end"], r["status"]) for r in ledger] == [
        (20, 29, "succeeded"),
        (30, 39, "succeeded"),
        (40, 49, "succeeded"),
        (50, 59, "succeeded"),
    ]
    assert len({r["owner"] for r in ledger}) == 2


async def test_a_backfill_and_an_incremental_job_do_not_interfere(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=60)
    window: dict[str, Any] = {"id_start": 1, "id_end": 30, "max_count": 20}
    seen: dict[str, list[tuple[int, int]]] = {"daily": [], "backfill": []}
    for _ in range(2):
        async with inventory.lease("daily", files, max_count=25) as batch:
            seen["daily"].append((batch.meta_id_start, batch.meta_id_end))
        async with inventory.lease("backfill", files, **window) as batch:
            seen["backfill"].append((batch.meta_id_start, batch.meta_id_end))
    assert seen == {"daily": [(1, 25), (26, 50)], "backfill": [(1, 20), (21, 30)]}
    with pytest.raises(pbi.NoBatchAvailable):
        async with inventory.lease("backfill", files, **window):
            pytest.fail("the backfill is done")
    async with inventory.lease("daily", files, max_count=25) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (51, 60)
    daily, backfill = await job_row(db_url, "daily"), await job_row(db_url, "backfill")
    assert daily is not None and backfill is not None
    assert (daily["cursor"], backfill["cursor"]) == (60, 30)


# -- cuts under changing limits, odd ids, settle time ---------------------------------------


def _greedy(
    weights: list[int], start: int, max_count: int | None, max_weight: int | None
) -> tuple[int, int, bool]:
    """The expected cut from index ``start``: (rows, weight, oversized), computed naively."""
    count = weight = 0
    for w in weights[start:]:
        if max_count is not None and count == max_count:
            break
        if max_weight is not None and weight + w > max_weight:
            if count == 0:
                return 1, w, True
            break
        count, weight = count + 1, weight + w
    return count, weight, False


async def test_every_cut_is_the_greedy_cut_whatever_the_limits_of_each_call(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    # Light and heavy stretches, zero weights, and rows heavier than some caps.
    weights = [
        0 if i % 17 == 0 else (i * 7919) % 97 + (900 if 150 <= i < 170 else 1) for i in range(600)
    ]
    files = await make_files(rows=len(weights), weights=weights)
    calls: list[dict[str, Any]] = [
        {"max_weight": 500},
        {"max_count": 40},
        {"max_weight": 800, "max_count": 25},
        {"max_weight": 300},
        {"max_weight": 5000, "max_count": 90},
        {"max_weight": 950},
    ]
    position = 0
    turn = 0
    while position < len(weights):
        limits = calls[turn % len(calls)]
        turn += 1
        count, weight, oversized = _greedy(
            weights, position, limits.get("max_count"), limits.get("max_weight")
        )
        async with inventory.lease("greedy", files, **limits) as batch:
            assert (batch.meta_id_start, batch.meta_id_end) == (position + 1, position + count)
            assert (batch.count, batch.weight, batch.oversized) == (count, weight, oversized)
        position += count
    assert turn > 20
    assert await inventory.acquire("greedy", files, max_weight=500) is None


async def test_settle_holds_back_rows_younger_than_the_settle_time(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20, settle=timedelta(hours=1))  # rows are a day old
    await insert_rows(db_url, "files", new_rows(21, 25))  # just imported
    async with inventory.lease("settled", files) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (1, 20)
    assert await inventory.acquire("settled", files) is None
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).replace(tzinfo=None)
    await fetch_all(
        db_url,
        f"UPDATE files SET imported = '{two_hours_ago.isoformat(sep=' ')}' WHERE id <= 22",
    )
    async with inventory.lease("settled", files) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (21, 22)


async def test_waiting_for_a_batch_can_be_cancelled_without_a_trace(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=5)
    await drain(inventory, "daily", files)
    with anyio.move_on_after(0.5) as scope:
        async with inventory.lease("daily", files, wait=True, poll_interval=0.05):
            pytest.fail("nothing was there to hand out")
    assert scope.cancelled_caught
    assert len(await attempts_of(db_url, "daily")) == 1


@pytest.mark.parametrize("start_id", [-50, 2**40])
async def test_ids_far_from_one_are_handed_out_as_they_are(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str, start_id: int
) -> None:
    files = await make_files(rows=30, start_id=start_id)
    batches = await drain(inventory, "far", files, max_count=12)
    assert [(b.meta_id_start, b.meta_id_end) for b in batches] == [
        (start_id, start_id + 11),
        (start_id + 12, start_id + 23),
        (start_id + 24, start_id + 29),
    ]
    rows = await attempts_of(db_url, "far")
    assert [(r["meta_id_start"], r["meta_id_end"]) for r in rows] == [
        (b.meta_id_start, b.meta_id_end) for b in batches
    ]
    job = await job_row(db_url, "far")
    assert job is not None and job["cursor"] == start_id + 29


async def test_ranges_span_gaps_in_the_ids(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=0)
    imported = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    await insert_rows(
        db_url,
        "files",
        [
            {"id": i, "size_in_bytes": 10, "kind": "csv", "imported": imported}
            for i in range(100, 1100, 100)
        ],
    )
    batches = await drain(inventory, "gaps", files, max_count=3)
    assert [(b.meta_id_start, b.meta_id_end, b.count) for b in batches] == [
        (100, 300, 3),
        (301, 600, 3),
        (601, 900, 3),
        (901, 1000, 1),
    ]
    await insert_rows(
        db_url, "files", [{"id": 950, "size_in_bytes": 10, "kind": "csv", "imported": imported}]
    )
    # A row committed late inside a range already handed out is not handed out again; the
    # ledger keeps the range as it was, and audit() reports the difference.
    assert await inventory.acquire("gaps", files, max_count=3) is None
    (finding,) = await inventory.audit("gaps")
    assert (finding.attempt.meta_id_start, finding.attempt.count, finding.count) == (901, 1, 2)


async def test_a_window_with_only_a_start_is_incremental_from_there(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=40)
    batches = await drain(inventory, "from_30", files, id_start=30, max_count=8)
    assert [(b.meta_id_start, b.meta_id_end) for b in batches] == [(30, 37), (38, 40)]
    await insert_rows(db_url, "files", new_rows(41, 45))
    async with inventory.lease("from_30", files, id_start=30, max_count=8) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (41, 45)
    job = await job_row(db_url, "from_30")
    assert job is not None and (job["id_start"], job["id_end"], job["cursor"]) == (30, None, 45)
