"""Retries: failed and expired ranges come back first, until ``max_attempts``; then dead."""

from __future__ import annotations

from typing import Any

import pytest

import pybatchintory as pbi

from tests.contract._ledger import PAST, attempt_row, attempts_of, expire_lease
from tests.contract.conftest import MakeFiles
from tests.helpers import fetch_all


class LoadFailed(Exception):
    """The user's load step failed."""


async def _fail(inv: pbi.Inventory, job: str, files: pbi.MetaTable, **limits: Any) -> pbi.Batch:
    with pytest.raises(LoadFailed):
        async with inv.lease(job, files, **limits) as batch:
            raise LoadFailed(f"attempt {batch.attempt} of [{batch.meta_id_start}, ...]")
    return batch


async def test_a_failed_range_comes_back_first_as_attempt_two(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=50)
    async with inventory.lease("retry", files, max_count=10) as ok:
        assert (ok.meta_id_start, ok.meta_id_end) == (1, 10)
    failed = await _fail(inventory, "retry", files, max_count=10)
    assert (failed.meta_id_start, failed.meta_id_end, failed.attempt) == (11, 20, 1)
    async with inventory.lease("retry", files, max_count=10) as again:
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (11, 20, 2)
        assert (again.count, again.weight) == (failed.count, failed.weight)
    async with inventory.lease("retry", files, max_count=10) as new:
        assert (new.meta_id_start, new.meta_id_end, new.attempt) == (21, 30, 1)
    rows = await attempts_of(db_url, "retry")
    assert [(r["meta_id_start"], r["attempt"], r["status"]) for r in rows] == [
        (1, 1, "succeeded"),
        (11, 1, "failed"),
        (11, 2, "succeeded"),
        (21, 1, "succeeded"),
    ]
    # History is never overwritten: the failed attempt keeps its own row and error.
    assert rows[1]["error_type"].endswith("LoadFailed") and rows[1]["retry_after"] is None


async def test_the_retry_limit_is_a_retry_limit_even_with_changed_limits(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=50)
    await _fail(inventory, "retry", files, max_count=10)
    # A retry is the same range, whatever limits this call passes.
    async with inventory.lease("retry", files, max_count=3) as again:
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 10, 2)


async def test_a_range_failing_max_attempts_times_is_dead_and_new_ranges_go_on(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=50)
    for attempt in (1, 2, 3):  # the fixture's max_attempts is 3
        failed = await _fail(inventory, "retry", files, max_count=10)
        assert (failed.meta_id_start, failed.attempt) == (1, attempt)
    rows = await attempts_of(db_url, "retry")
    assert [(r["attempt"], r["failures"], r["dead"]) for r in rows] == [
        (1, 1, False),
        (2, 2, False),
        (3, 3, True),
    ]
    seen = []
    async for batch in inventory.leases("retry", files, max_count=10):
        async with batch:
            seen.append((batch.meta_id_start, batch.meta_id_end, batch.attempt))
    assert seen == [(11, 20, 1), (21, 30, 1), (31, 40, 1), (41, 50, 1)]
    assert await inventory.acquire("retry", files, max_count=10) is None
    backlog = await inventory.backlog("retry")
    assert backlog.dead == 1
    (dead,) = await fetch_all(
        db_url, "SELECT COUNT(*) AS n FROM inventory WHERE job = 'retry' AND meta_id_start = 1"
    )
    assert dead["n"] == 3  # no fourth attempt was handed out


async def test_retry_revives_a_dead_range(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)
    for _ in range(3):
        await _fail(inventory, "retry", files, max_count=10)
    async with inventory.lease("retry", files, max_count=10) as new:
        assert new.meta_id_start == 11
    assert await inventory.retry("retry") == 1
    async with inventory.lease("retry", files, max_count=10) as revived:
        assert (revived.meta_id_start, revived.meta_id_end, revived.attempt) == (1, 10, 4)
    async with inventory.lease("retry", files, max_count=10) as after:
        assert (after.meta_id_start, after.attempt) == (21, 1)
    assert await inventory.retry("retry") == 0  # nothing is dead any more
    rows = await attempts_of(db_url, "retry")
    assert [(r["meta_id_start"], r["attempt"], r["status"]) for r in rows] == [
        (1, 1, "failed"),
        (1, 2, "failed"),
        (1, 3, "failed"),
        (11, 1, "succeeded"),
        (1, 4, "succeeded"),
        (21, 1, "succeeded"),
    ]
    assert not any(r["dead"] for r in rows)


async def test_a_revived_range_gets_a_fresh_attempt_budget(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, max_attempts=2) as inv:
        for _ in range(2):
            await _fail(inv, "retry", files, max_count=10)
        assert await inv.retry("retry") == 1
        for attempt in (3, 4):
            failed = await _fail(inv, "retry", files, max_count=10)
            assert (failed.meta_id_start, failed.attempt) == (1, attempt)
        nxt = await inv.acquire("retry", files, max_count=10)
        assert nxt is not None and (nxt.meta_id_start, nxt.attempt) == (11, 1)
        await nxt.success()
    rows = await attempts_of(db_url, "retry")
    # The revived attempt is no longer dead; the second exhaustion is.
    assert [r["dead"] for r in rows] == [False, False, False, True, False]
    assert [r["status"] for r in rows[:4]] == ["failed"] * 4


async def test_retry_by_fingerprint_revives_only_that_error(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, max_attempts=1) as inv:
        await _fail(inv, "retry", files, max_count=10)
        with pytest.raises(KeyError):
            async with inv.lease("retry", files, max_count=10):
                raise KeyError("elsewhere")
        rows = await attempts_of(db_url, "retry")
        assert [r["dead"] for r in rows] == [True, True]
        assert rows[0]["fingerprint"] != rows[1]["fingerprint"]
        assert await inv.retry("retry", fingerprint=rows[1]["fingerprint"]) == 1
        again = await inv.acquire("retry", files, max_count=10)
        assert again is not None and (again.meta_id_start, again.attempt) == (11, 2)
        await again.success()
        nxt = await inv.acquire("retry", files, max_count=10)
        assert nxt is not None and (nxt.meta_id_start, nxt.attempt) == (21, 1)
        await nxt.success()


async def test_a_retry_delay_holds_the_failed_range_back(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, retry_delay=600) as inv:
        failed = await _fail(inv, "retry", files, max_count=10)
        row = await attempt_row(db_url, failed.id)
        # 600 s * 2**0 with at most 25 % jitter, from the database clock at the settle.
        delay = (row["retry_after"] - row["processing_end"]).total_seconds()
        assert 400 < delay < 800
        nxt = await inv.acquire("retry", files, max_count=10)
        assert nxt is not None and (nxt.meta_id_start, nxt.attempt) == (11, 1)
        await nxt.success()
        # Once its time has come, the failed range is first again.
        await fetch_all(
            db_url, f"UPDATE inventory SET retry_after = '{PAST}' WHERE id = :id", id=failed.id
        )
        again = await inv.acquire("retry", files, max_count=10)
        assert again is not None
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 10, 2)
        # A second failure waits twice as long: 600 s * 2**1, with jitter.
        await again.error(LoadFailed("again"))
        second = await attempt_row(db_url, again.id)
        delay = (second["retry_after"] - second["processing_end"]).total_seconds()
        assert 900 < delay < 1500
        assert second["failures"] == 2 and not second["dead"]
        # New ranges are not held up meanwhile.
        later = await inv.acquire("retry", files, max_count=10)
        assert later is not None and (later.meta_id_start, later.attempt) == (21, 1)
        await later.success()


async def test_expired_attempts_count_toward_max_attempts(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, max_attempts=2, owner="frozen") as frozen:
        first = await frozen.acquire("retry", files, max_count=10)
        assert first is not None
        await expire_lease(db_url, first.id)
        second = await frozen.acquire("retry", files, max_count=10)
        assert second is not None
        assert (second.meta_id_start, second.attempt) == (1, 2)
        await expire_lease(db_url, second.id)
        third = await frozen.acquire("retry", files, max_count=10)
        assert third is not None
        assert (third.meta_id_start, third.attempt) == (11, 1)  # the first range is dead
        await third.success()
        for lost in (first, second):
            with pytest.raises(pbi.LeaseLost):
                await lost.success()
    rows = await attempts_of(db_url, "retry")
    assert [(r["meta_id_start"], r["status"], r["failures"], r["dead"]) for r in rows] == [
        (1, "expired", 1, False),
        (1, "expired", 2, True),
        (11, "succeeded", 0, False),
    ]
    assert rows[0]["error_type"] == "LeaseExpired"


async def test_an_expired_attempt_and_a_failure_share_the_budget(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, max_attempts=2) as inv:
        first = await inv.acquire("retry", files, max_count=10)
        assert first is not None
        await expire_lease(db_url, first.id)
        failed = await _fail(inv, "retry", files, max_count=10)
        assert (failed.meta_id_start, failed.attempt) == (1, 2)
        nxt = await inv.acquire("retry", files, max_count=10)
        assert nxt is not None and (nxt.meta_id_start, nxt.attempt) == (11, 1)
        await nxt.success()
    rows = await attempts_of(db_url, "retry")
    assert [(r["status"], r["failures"], r["dead"]) for r in rows] == [
        ("expired", 1, False),
        ("failed", 2, True),
        ("succeeded", 0, False),
    ]


async def test_retries_come_back_oldest_first(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=40)
    batches = await inventory.acquire_many("retry", files, 3, max_count=10)
    for batch in reversed(batches):  # fail the newest first
        await batch.error(LoadFailed("later"))
    order = []
    for _ in range(3):
        async with inventory.lease("retry", files, max_count=10) as again:
            order.append((again.meta_id_start, again.attempt))
    assert order == [(1, 2), (11, 2), (21, 2)]
