"""Leases: heartbeats renew them, every settle is fenced, a lost lease stops the body.

Expiry is forced with plain SQL (the lease's expiry moved into the past) rather than by
waiting, so nothing here depends on how fast a loaded machine runs; only the heartbeat
test waits, with a short TTL and a generous margin.
"""

from __future__ import annotations

import anyio
import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempt_row, attempts_of, expire_lease, wait_until
from tests.contract.conftest import MakeFiles

# Heartbeats every TTL/3. 1.5 s left a 1 s margin, which a loaded 2-core machine running the
# suite in parallel (xdist) sometimes missed: a held lease ran out for want of CPU, not of a bug.
_TTL = 3.0


async def test_heartbeats_keep_a_long_body_and_every_other_held_lease_alive(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40)
    async with pbi.Inventory(db_url, lease_ttl=_TTL) as inv:
        # Handles of two jobs, held by no body: the same heartbeat renews them.
        handles = await inv.acquire_many("handles", files, 2, max_count=10)
        other_job = await inv.acquire("other", files, max_count=5)
        assert other_job is not None and len(handles) == 2
        async with inv.lease("beat", files, max_count=10) as batch:
            held = [batch, *handles, other_job]
            first = {b.id: await attempt_row(db_url, b.id) for b in held}

            async def all_renewed() -> bool:
                for b in held:
                    row = await attempt_row(db_url, b.id)
                    if row["expires_at"] <= first[b.id]["expires_at"]:
                        return False
                return True

            await wait_until(all_renewed, deadline=8)
            await anyio.sleep(3 * _TTL)  # well past every original expiry
            for b in held:
                now = await attempt_row(db_url, b.id)
                assert now["status"] == "running"
                assert now["expires_at"] > first[b.id]["expires_at"]
                assert now["heartbeat_at"] > first[b.id]["heartbeat_at"]
                assert not b.lost
        assert batch.status == pbi.Status.SUCCEEDED
        for handle in (*handles, other_job):
            await handle.success()
    rows = [await attempt_row(db_url, b.id) for b in held]
    assert [(r["status"], r["attempt"], r["failures"]) for r in rows] == [("succeeded", 1, 0)] * 4


async def test_a_settle_after_a_takeover_raises_lease_lost_and_changes_nothing(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with (
        pbi.Inventory(db_url, owner="first") as first,
        pbi.Inventory(db_url, owner="second") as second,
    ):
        old = await first.acquire("fence", files, max_count=10)
        assert old is not None
        await expire_lease(db_url, old.id)
        new = await second.acquire("fence", files, max_count=10)
        assert new is not None
        assert (new.meta_id_start, new.meta_id_end, new.attempt) == (1, 10, 2)
        expired = await attempt_row(db_url, old.id)
        assert (expired["status"], expired["failures"]) == ("expired", 1)
        before = await attempts_of(db_url, "fence")

        for settle in (old.success({"late": True}), old.error(ValueError("late")), old.release()):
            with pytest.raises(pbi.LeaseLost):
                await settle
            assert await attempts_of(db_url, "fence") == before

        await new.success({"by": "second"})
    rows = await attempts_of(db_url, "fence")
    assert [(r["owner"], r["attempt"], r["status"], r["job_result"]) for r in rows] == [
        ("first", 1, "expired", None),
        ("second", 2, "succeeded", {"by": "second"}),
    ]


async def test_a_settle_after_the_lease_ran_out_is_lost_even_without_a_takeover(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("fence", files, max_count=10)
    assert batch is not None
    await expire_lease(db_url, batch.id)
    before = await attempt_row(db_url, batch.id)
    with pytest.raises(pbi.LeaseLost):
        await batch.success()
    assert await attempt_row(db_url, batch.id) == before
    assert before["status"] == "running"  # nobody has expired it yet; the clock decides


async def test_an_async_with_whose_lease_was_taken_over_raises_lease_lost(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with (
        pbi.Inventory(db_url, owner="first") as first,
        pbi.Inventory(db_url, owner="second") as second,
    ):
        taken: pbi.Batch | None = None
        with pytest.raises(pbi.LeaseLost):
            async with first.lease("fence", files, max_count=10) as batch:
                await expire_lease(db_url, batch.id)
                taken = await second.acquire("fence", files, max_count=10)
                assert taken is not None and taken.attempt == 2
                # The body finishes without noticing; the exit's settle is fenced.
        assert taken is not None
        assert (await attempt_row(db_url, batch.id))["status"] == "expired"
        assert (await attempt_row(db_url, taken.id))["status"] == "running"
        await taken.success()


async def test_a_heartbeat_that_finds_the_lease_gone_cancels_the_body(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    reached_the_end = False
    async with pbi.Inventory(db_url, lease_ttl=_TTL, owner="frozen") as inv:
        with anyio.fail_after(10):
            with pytest.raises(pbi.LeaseLost):
                async with inv.lease("lost", files, max_count=10) as batch:
                    await expire_lease(db_url, batch.id)
                    await anyio.sleep(30)  # cancelled by the heartbeat, long before this ends
                    reached_the_end = True
        assert not reached_the_end
        assert batch.lost
        row = await attempt_row(db_url, batch.id)
        assert row["status"] == "running"  # nothing written by the loser
    async with pbi.Inventory(db_url, owner="rescuer") as rescuer:
        again = await rescuer.acquire("lost", files, max_count=10)
        assert again is not None
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 10, 2)
        await again.success()
    rows = await attempts_of(db_url, "lost")
    assert [(r["owner"], r["status"]) for r in rows] == [
        ("frozen", "expired"),
        ("rescuer", "succeeded"),
    ]


async def test_a_heartbeat_that_finds_the_lease_gone_cancels_a_body_in_a_task_group(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    outcome: list[BaseException] = []

    async def worker(inv: pbi.Inventory) -> None:
        try:
            async with inv.lease("lost", files, max_count=10) as batch:
                await expire_lease(db_url, batch.id)
                await anyio.sleep(30)
        except pbi.LeaseLost as exc:
            outcome.append(exc)

    async with pbi.Inventory(db_url, lease_ttl=_TTL) as inv:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker, inv)
    assert len(outcome) == 1 and isinstance(outcome[0], pbi.LeaseLost)


async def test_a_second_settle_raises_already_settled(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("twice", files, max_count=10)
    assert batch is not None
    await batch.success({"first": True})
    before = await attempt_row(db_url, batch.id)
    for settle in (
        batch.success({"second": True}),
        batch.error(ValueError("second")),
        batch.release(),
    ):
        with pytest.raises(pbi.AlreadySettled, match="already settled"):
            await settle
    assert await attempt_row(db_url, batch.id) == before
    assert before["job_result"] == {"first": True}


async def test_settling_inside_the_body_is_not_overridden_by_the_exit(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)
    async with inventory.lease("inside", files, max_count=10) as released:
        await released.release()
    with pytest.raises(ValueError, match="after the error"):
        async with inventory.lease("inside", files, max_count=10) as failed:
            await failed.error(KeyError("recorded"))
            raise ValueError("after the error")
    rows = await attempts_of(db_url, "inside")
    assert [(r["id"], r["status"]) for r in rows] == [
        (released.id, "released"),
        (failed.id, "failed"),
    ]
    assert rows[1]["error_type"] == "KeyError"


async def test_a_handle_whose_lease_the_heartbeat_found_gone_cannot_settle(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url, lease_ttl=_TTL) as inv:
        batch = await inv.acquire("lost", files, max_count=10)
        keep = await inv.acquire("lost", files, max_count=10)
        assert batch is not None and keep is not None
        await expire_lease(db_url, batch.id)

        async def noticed() -> bool:
            return batch.lost

        await wait_until(noticed, deadline=8)
        assert not keep.lost  # only the lease that is gone is reported
        before = await attempt_row(db_url, batch.id)
        with pytest.raises(pbi.LeaseLost, match="lost"):
            await batch.success({"too": "late"})
        assert await attempt_row(db_url, batch.id) == before
        await keep.success()
    assert (await attempt_row(db_url, keep.id))["status"] == "succeeded"


async def test_a_lost_lease_cancels_a_task_group_inside_the_body(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    finished: list[str] = []

    async def shard(name: str) -> None:
        await anyio.sleep(30)
        finished.append(name)

    async with pbi.Inventory(db_url, lease_ttl=_TTL) as inv:
        with anyio.fail_after(10):
            with pytest.raises(pbi.LeaseLost):
                async with inv.lease("lost", files, max_count=10) as batch:
                    await expire_lease(db_url, batch.id)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(shard, "a")
                        tg.start_soon(shard, "b")
    assert finished == []
    assert (await attempt_row(db_url, batch.id))["status"] == "running"


async def test_a_lost_lease_with_a_timeout_raises_lease_lost_not_timeout(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url, lease_ttl=_TTL) as inv:
        with anyio.fail_after(10):
            with pytest.raises(pbi.LeaseLost):
                async with inv.lease("lost", files, max_count=10, timeout=60) as batch:
                    await expire_lease(db_url, batch.id)
                    await anyio.sleep(30)
    assert (await attempt_row(db_url, batch.id))["status"] == "running"


async def test_a_handle_acquired_in_one_task_is_settled_from_another(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)
    handed: list[pbi.Batch] = []

    async def claim() -> None:
        handed.extend(await inventory.acquire_many("handles", files, 3, max_count=10))

    async def settle(batch: pbi.Batch, how: str) -> None:
        if how == "success":
            await batch.success({"by": "callback"})
        elif how == "error":
            await batch.error(RuntimeError("callback failed"))
        else:
            await batch.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim)
    async with anyio.create_task_group() as tg:
        for batch, how in zip(handed, ("success", "error", "release"), strict=True):
            tg.start_soon(settle, batch, how)
    rows = await attempts_of(db_url, "handles")
    assert [(r["status"], r["job_result"], r["error_message"]) for r in rows] == [
        ("succeeded", {"by": "callback"}, None),
        ("failed", None, "callback failed"),
        ("released", None, None),
    ]


async def test_a_rejected_settle_writes_nothing_and_leaves_the_handle_usable(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("handles", files, max_count=10)
    assert batch is not None
    before = await attempt_row(db_url, batch.id)
    with pytest.raises(pbi.InvalidArgument, match="JSON"):
        await batch.success({"not json": {1, 2}})
    with pytest.raises(pbi.InvalidArgument, match="exception or a message"):
        await batch.error(42)  # type: ignore[arg-type]
    assert await attempt_row(db_url, batch.id) == before
    assert batch.status == pbi.Status.RUNNING
    result = {"text": "grüße", "numbers": [0, 2.5, -1], "none": None, "flag": False}
    await batch.success(result)
    assert (await attempt_row(db_url, batch.id))["job_result"] == result
    with pytest.raises(pbi.AlreadySettled):
        await batch.success(result)
    async with inventory.lease("handles", files, max_count=10) as scalar:
        scalar.result = 0
    assert (await attempt_row(db_url, scalar.id))["job_result"] == 0
    with pytest.raises(pbi.AlreadySettled):
        await scalar.release()
