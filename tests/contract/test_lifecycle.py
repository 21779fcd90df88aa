"""Settles from synchronous code, ``aclose()``, and dropped batches (issue 13, bugs 1, 3).

A synchronous callback on the loop (a done-callback, a pipeline's completion callback) can
only schedule a settle. ``aclose()`` must neither overtake one already scheduled nor drop
one claimed with a ``_nowait`` call. A batch nobody references any more is released, with
a ``ResourceWarning``. The ledger, read with plain SQL, says what happened.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempt_row, expire_lease, wait_until
from tests.contract.conftest import MakeFiles


async def test_a_settle_scheduled_before_aclose_is_not_overtaken(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    inv = await pbi.Inventory(db_url, lease_ttl=30).open()
    succeeded, failed, released = await inv.acquire_many("close", files, 3, max_count=10)
    loop = asyncio.get_running_loop()
    # What a synchronous callback can do: schedule, without a first step yet.
    tasks = [
        loop.create_task(succeeded.success({"rows": 10})),
        loop.create_task(failed.error(ValueError("row 7 is bad"))),
        loop.create_task(released.release()),
    ]
    await inv.aclose()
    assert all(task.done() and task.exception() is None for task in tasks)
    ok = await attempt_row(db_url, succeeded.id)
    assert ok["status"] == "succeeded" and ok["job_result"] == {"rows": 10}
    bad = await attempt_row(db_url, failed.id)
    assert bad["status"] == "failed" and bad["error_message"] == "row 7 is bad"
    assert (await attempt_row(db_url, released.id))["status"] == "released"
    await asyncio.gather(*tasks)


async def test_nowait_settles_are_claimed_at_once_and_drained_by_aclose(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    inv = await pbi.Inventory(db_url, lease_ttl=30).open()
    succeeded, failed, released = await inv.acquire_many("nowait", files, 3, max_count=10)
    writes = [
        succeeded.success_nowait({"rows": 10}),
        failed.error_nowait(ValueError("row 7 is bad")),
        released.release_nowait(),
    ]
    # Claimed before the write ran: nothing else can settle them now.
    assert [b.status for b in (succeeded, failed, released)] == [
        pbi.Status.SUCCEEDED,
        pbi.Status.FAILED,
        pbi.Status.RELEASED,
    ]
    assert not any(write.done() for write in writes)
    with pytest.raises(pbi.AlreadySettled):
        await succeeded.release()
    with pytest.raises(pbi.AlreadySettled):
        failed.success_nowait()
    await inv.aclose()
    assert all(write.done() and write.exception() is None for write in writes)
    ok = await attempt_row(db_url, succeeded.id)
    assert ok["status"] == "succeeded" and ok["job_result"] == {"rows": 10}
    bad = await attempt_row(db_url, failed.id)
    assert bad["status"] == "failed" and bad["failures"] == 1
    assert bad["error_type"].endswith("ValueError") and bad["error_message"] == "row 7 is bad"
    assert (await attempt_row(db_url, released.id))["status"] == "released"


async def test_a_nowait_settle_can_be_awaited_and_uses_the_batch_result(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    batch = await inventory.acquire("nowait", files)
    assert batch is not None
    batch.result = {"from": "body"}
    await batch.success_nowait()
    assert (await attempt_row(db_url, batch.id))["job_result"] == {"from": "body"}


async def test_a_refused_nowait_settle_claims_nothing(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    batch = await inventory.acquire("nowait", files)
    assert batch is not None
    with pytest.raises(pbi.InvalidArgument):
        batch.success_nowait({"not json": object()})
    with pytest.raises(pbi.InvalidArgument):
        batch.error_nowait(42)  # type: ignore[arg-type]
    # Off the loop's thread there is no loop to run the write: refused, nothing claimed.
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(batch.release_nowait)
    assert batch.status == pbi.Status.RUNNING
    await batch.release_nowait()
    assert (await attempt_row(db_url, batch.id))["status"] == "released"


async def test_a_nowait_settle_that_finds_its_lease_gone_is_logged(
    inventory: pbi.Inventory,
    make_files: MakeFiles,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = await make_files(rows=10)
    batch = await inventory.acquire("nowait", files)
    assert batch is not None
    await expire_lease(db_url, batch.id)
    with caplog.at_level(logging.WARNING, logger="pybatchintory"):
        write = batch.success_nowait()
        with pytest.raises(pbi.LeaseLost):
            await write
    assert batch.status == pbi.Status.RUNNING and batch.lost
    # The warning names the attempt and the status the ledger has, not the refused one.
    warnings = [r.getMessage() for r in caplog.records]
    (warning,) = [w for w in warnings if w.startswith(f"succeeded of attempt {batch.id} ")]
    assert "of job 'nowait'" in warning and "the ledger has it as running, expired" in warning
    assert not any("<Batch" in w for w in warnings)
    assert (await attempt_row(db_url, batch.id))["status"] == "running"


# -- a batch nobody references (bug 3) --------------------------------------------------


async def test_a_dropped_batch_is_released_with_a_resource_warning(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("dropped", files, max_count=10)
    assert batch is not None
    attempt_id = batch.id
    with pytest.warns(ResourceWarning, match="garbage-collected while its lease was held"):
        del batch
        gc.collect()

    async def released() -> bool:
        return bool((await attempt_row(db_url, attempt_id))["status"] == "released")

    await wait_until(released)
    # Released without fault: the range is handed out again, as attempt 1's successor.
    again = await inventory.acquire("dropped", files, max_count=10)
    assert again is not None and again.meta_id_start == 1
    await again.success()


async def test_a_task_that_dies_between_acquire_and_settle_releases_its_batch(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    acquired: list[int] = []

    async def worker() -> None:
        batch = await inventory.acquire("dropped", files, max_count=10)
        assert batch is not None
        acquired.append(batch.id)
        raise RuntimeError("crashed before `async with batch`")

    task = asyncio.get_running_loop().create_task(worker())
    await asyncio.wait([task])
    assert isinstance(task.exception(), RuntimeError)
    # The task's exception holds the worker's frame, and so the batch, until it goes.
    with pytest.warns(ResourceWarning, match=r"<Batch 'dropped' #\d+ \[1, 10\]"):
        del task
        gc.collect()

    async def released() -> bool:
        return bool((await attempt_row(db_url, acquired[0]))["status"] == "released")

    await wait_until(released)


async def test_a_settled_or_closed_batch_that_is_dropped_warns_nothing(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url) as inv:
        settled = await inv.acquire("dropped", files, max_count=10)
        assert settled is not None
        await settled.success()
        kept = await inv.acquire("dropped", files, max_count=10)
        assert kept is not None
    # aclose() released the one still held: dropping both now is no leak.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del settled, kept
        gc.collect()
