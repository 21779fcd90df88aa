"""``settle_many``: many batches ended at once, each fenced by its own token.

The queue path is ``acquire_many`` + ``settle_many``: every batch ends as asked (succeeded
with its result, failed with a retry or dead, released), a lost lease is reported, not
raised, and changes nothing, and bad input is refused before anything is written.
"""

from __future__ import annotations

import asyncio

import pytest

import pybatchintory as pbi
from pybatchintory.models import Settlement, Status
from pybatchintory.sync import SyncInventory

from tests.contract._ledger import attempt_row, attempts_of, expire_lease
from tests.contract.conftest import MakeFiles
from tests.helpers import create_meta_table


class Broken(Exception):
    """The failure recorded for a batch."""


async def test_each_batch_ends_as_asked_in_one_call(db_url: str, make_files: MakeFiles) -> None:
    files = await make_files(rows=60)
    async with pbi.Inventory(db_url, retry_delay=30, max_attempts=3) as inv:
        a, b, c, d = await inv.acquire_many("mixed", files, 4, max_count=10)
        a.result = {"rows": 10}
        lost = await inv.settle_many([a, b], failed={c: Broken("bad row")}, released=[d])
        assert lost == []
        assert [x.status for x in (a, b, c, d)] == [
            Status.SUCCEEDED,
            Status.SUCCEEDED,
            Status.FAILED,
            Status.RELEASED,
        ]
        rows = {r["id"]: r for r in await attempts_of(db_url, "mixed")}
        ok, plain, failed, released = (rows[x.id] for x in (a, b, c, d))
        assert (ok["status"], ok["job_result"], ok["retry_after"]) == (
            "succeeded",
            {"rows": 10},
            None,
        )
        assert (plain["status"], plain["job_result"], plain["failures"]) == ("succeeded", None, 0)
        assert failed["status"] == "failed" and failed["failures"] == 1 and not failed["dead"]
        assert failed["error_type"].endswith("Broken") and failed["error_message"] == "bad row"
        assert failed["fingerprint"] and "Broken" in failed["logging"]
        # The backoff of a first failure: retry_delay seconds (±25 % jitter) after it ended.
        delay = (failed["retry_after"] - failed["processing_end"]).total_seconds()
        assert 22 <= delay <= 38
        assert released["status"] == "released" and released["failures"] == 0
        assert released["retry_after"] is not None and not released["dead"]
        # Due at once: the clock of the settle (read twice in one statement on PostgreSQL).
        gap = (released["retry_after"] - released["processing_end"]).total_seconds()
        assert abs(gap) < 1
        for row in (ok, plain, failed, released):
            assert row["processing_end"] is not None
        # The released range is handed out again at once; the failed one waits.
        again = await inv.acquire("mixed", files, max_count=10)
        assert again is not None
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (
            d.meta_id_start,
            d.meta_id_end,
            2,
        )
        await again.release()


async def test_the_last_allowed_failure_makes_the_range_dead(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url, max_attempts=1) as inv:
        a, b = await inv.acquire_many("dead", files, 2, max_count=10)
        assert await inv.settle_many(failed=[(a, Broken("one")), (b, Broken("two"))]) == []
    for batch in (a, b):
        row = await attempt_row(db_url, batch.id)
        assert (row["status"], row["failures"], row["dead"], row["retry_after"]) == (
            "failed",
            1,
            True,
            None,
        )


async def test_lost_leases_are_reported_and_change_nothing(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=50)
    async with (
        pbi.Inventory(db_url, owner="first") as first,
        pbi.Inventory(db_url, owner="second") as second,
    ):
        batches = await first.acquire_many("fence", files, 5, max_count=10)
        taken, expired = batches[0], batches[3]
        await expire_lease(db_url, taken.id)
        await expire_lease(db_url, expired.id)
        # The second worker expires both and takes the first range over as attempt 2.
        new = await second.acquire("fence", files, max_count=10)
        assert new is not None and new.meta_id_start == taken.meta_id_start
        before = {b.id: await attempt_row(db_url, b.id) for b in (taken, expired)}

        lost = await first.settle_many(batches[:3], failed={batches[3]: Broken("x")})
        assert lost == [taken, expired]
        assert taken.lost and expired.lost and taken.status == Status.RUNNING
        for batch in (taken, expired):
            assert await attempt_row(db_url, batch.id) == before[batch.id]
        for batch in batches[1:3]:
            assert (await attempt_row(db_url, batch.id))["status"] == "succeeded"
        # A batch known lost is reported again without a write; its settle raises.
        assert await first.settle_many(released=[taken, batches[4]]) == [taken]
        assert (await attempt_row(db_url, batches[4].id))["status"] == "released"
        with pytest.raises(pbi.LeaseLost):
            await taken.success()
        await new.success()


async def test_more_settles_than_one_statement_holds(db_url: str, make_files: MakeFiles) -> None:
    files = await make_files(rows=130)
    async with pbi.Inventory(db_url) as inv:
        batches = await inv.acquire_many("queue", files, 130, max_count=1)
        assert len(batches) == 130
        for i, batch in enumerate(batches):
            batch.result = i
        failed = {b: Broken(str(b.id)) for b in batches[::7]}
        released = batches[1::7]
        succeeded = [b for b in batches if b not in failed and b not in released]
        assert await inv.settle_many(succeeded, failed=failed, released=released) == []
    rows = {r["id"]: r for r in await attempts_of(db_url, "queue")}
    assert len(rows) == 130
    for i, batch in enumerate(batches):
        row = rows[batch.id]
        if batch in failed:
            assert (row["status"], row["error_message"]) == ("failed", str(batch.id))
        elif batch in released:
            assert (row["status"], row["job_result"]) == ("released", None)
        else:
            assert (row["status"], row["job_result"]) == ("succeeded", i)


async def test_bad_input_is_refused_before_anything_is_written(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40)
    async with pbi.Inventory(db_url) as inv, pbi.Inventory(db_url, owner="other") as other:
        a, b, c = await inv.acquire_many("bad", files, 3, max_count=10)
        foreign = await other.acquire("bad", files, max_count=10)
        assert foreign is not None
        await c.success()
        before = await attempts_of(db_url, "bad")
        with pytest.raises(pbi.InvalidArgument, match="twice"):
            await inv.settle_many([a], released=[a])
        with pytest.raises(pbi.InvalidArgument, match="this inventory's batches"):
            await inv.settle_many([a, foreign])
        with pytest.raises(pbi.InvalidArgument, match="exceptions"):
            await inv.settle_many(failed={a: "not an exception"})  # type: ignore[arg-type]
        b.result = {"not json": object()}
        with pytest.raises(pbi.InvalidArgument, match="JSON"):
            await inv.settle_many([a, b])
        with pytest.raises(pbi.AlreadySettled):
            await inv.settle_many([a, c])
        assert await attempts_of(db_url, "bad") == before
        assert a.status == Status.RUNNING and b.status == Status.RUNNING
        assert await inv.settle_many() == []
        b.result = None
        assert await inv.settle_many([a, b, foreign][:2]) == []
        await foreign.release()


async def test_a_repeated_store_settle_many_counts_as_settled(
    db_url: str, make_files: MakeFiles
) -> None:
    """A retry after a dropped connection finds its own settles committed: none lost."""
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url) as inv:
        batches = await inv.acquire_many("again", files, 3, max_count=10)
        settlements = [Settlement(b.id, b.token, Status.SUCCEEDED) for b in batches[:2]]
        settlements.append(Settlement(batches[2].id, batches[2].token, Status.RELEASED))
        assert await inv.store.settle_many(settlements) == {}
        assert await inv.store.settle_many(settlements) == {}
        wrong = Settlement(batches[0].id, batches[0].token, Status.FAILED, counts_as_failure=True)
        stranger = Settlement(batches[1].id, "not-the-token", Status.SUCCEEDED)
        assert await inv.store.settle_many([wrong, stranger]) == {
            batches[0].id: "the ledger has it as succeeded",
            batches[1].id: "another lease holds it; the ledger has it as succeeded",
        }
        for batch in batches:
            batch._settle_failed(lost=True)  # settled behind the handles' back


async def test_a_native_cancel_never_cuts_the_write_in_half(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40)
    async with pbi.Inventory(db_url) as inv:
        batches = await inv.acquire_many("cancel", files, 4, max_count=10)
        task = asyncio.get_running_loop().create_task(inv.settle_many(batches))
        await asyncio.sleep(0)  # the write has started in its own task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # aclose() drained the write: all of it landed, nothing was released instead.
    rows = await attempts_of(db_url, "cancel")
    assert [r["status"] for r in rows] == ["succeeded"] * 4


def test_the_sync_facade_settles_many(db_url: str) -> None:
    asyncio.run(create_meta_table(db_url, rows=30))
    files = pbi.MetaTable("files", weight="size_in_bytes")
    with SyncInventory(db_url) as inv:
        a, b, c = inv.acquire_many("sync", files, 3, max_count=10)
        a.result = {"ok": 1}
        assert inv.settle_many([a], failed={b: Broken("sync")}, released=[c]) == []
        assert [x.status for x in (a, b, c)] == [Status.SUCCEEDED, Status.FAILED, Status.RELEASED]
        with pytest.raises(pbi.InvalidArgument, match="this inventory's batches"):
            inv.settle_many([a._batch])  # type: ignore[list-item]
    rows = asyncio.run(attempts_of(db_url, "sync"))
    assert [r["status"] for r in rows] == ["succeeded", "failed", "released"]
