"""How ``async with`` ends an attempt, read back from the ledger with plain SQL.

The exit policy: docs/architecture.md, "The life of a lease".
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempt_row, attempts_of, wait_until
from tests.contract.conftest import MakeFiles


class ExtractFailed(Exception):
    """A failure of the user's own code."""


async def test_a_clean_exit_succeeds_and_stores_the_result(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    async with inventory.lease("exit", files, max_count=10) as batch:
        rows = await batch.items()
        batch.result = {"written": len(rows), "tables": ["a", "b"], "ok": True}
    assert batch.status == pbi.Status.SUCCEEDED
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "succeeded"
    assert row["job_result"] == {"written": 10, "tables": ["a", "b"], "ok": True}
    assert row["processing_end"] is not None and row["processing_end"] >= row["processing_start"]
    assert row["error_type"] is None and row["logging"] is None and row["fingerprint"] is None


async def test_an_exception_fails_the_attempt_with_its_details_and_is_reraised(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url, owner="worker-7", code_version="abc123") as inv:
        with pytest.raises(ExtractFailed, match="bad row 4711"):
            async with inv.lease("exit", files, max_count=10) as batch:
                batch.result = {"never": "stored"}
                raise ExtractFailed("bad row 4711")
    assert batch.status == pbi.Status.FAILED
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert row["error_type"].endswith("ExtractFailed")
    assert row["error_message"] == "bad row 4711"
    assert "Traceback" in row["logging"] and "bad row 4711" in row["logging"]
    assert "test_an_exception_fails_the_attempt" in row["logging"]
    assert len(row["fingerprint"]) == 32 and int(row["fingerprint"], 16) >= 0
    assert (row["owner"], row["code_version"]) == ("worker-7", "abc123")
    assert row["job_result"] is None
    assert row["failures"] == 1 and row["processing_end"] is not None


async def test_the_same_failure_twice_has_one_fingerprint(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)

    async def fail(job: str, message: str) -> None:
        async with inventory.lease(job, files, max_count=5):
            raise ExtractFailed(message)

    for message in ("row 1", "row 2"):
        with pytest.raises(ExtractFailed):
            await fail("exit", message)
    with pytest.raises(KeyError):
        async with inventory.lease("exit", files, max_count=5):
            raise KeyError("another place")
    first, second, third = await attempts_of(db_url, "exit")
    assert first["fingerprint"] == second["fingerprint"]
    assert first["error_message"] != second["error_message"]
    assert third["fingerprint"] != first["fingerprint"]


async def test_an_exception_group_fails_naming_every_leaf(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    with pytest.raises(ExceptionGroup) as raised:
        async with inventory.lease("exit", files, max_count=10) as batch:
            async with anyio.create_task_group() as tg:

                async def broken(message: str) -> None:
                    raise ExtractFailed(message)

                tg.start_soon(broken, "first shard")
                tg.start_soon(broken, "second shard")
                await anyio.sleep(5)
    assert len(raised.value.exceptions) == 2
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert "ExceptionGroup" in row["error_type"]
    for leaf in ("first shard", "second shard"):
        assert leaf in row["error_message"]
        assert leaf in row["logging"]
    assert row["error_message"].count("ExtractFailed") == 2


async def test_a_nested_exception_group_names_every_leaf(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    group = ExceptionGroup(
        "outer", [ValueError("leaf one"), ExceptionGroup("inner", [KeyError("leaf two")])]
    )
    with pytest.raises(ExceptionGroup):
        async with inventory.lease("exit", files, max_count=10) as batch:
            raise group
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert "leaf one" in row["error_message"] and "leaf two" in row["error_message"]
    assert "ValueError" in row["error_message"] and "KeyError" in row["error_message"]


async def test_a_cancel_scope_deadline_releases_the_attempt(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    with anyio.move_on_after(30) as scope:
        async with inventory.lease("exit", files, max_count=10) as batch:
            # The deadline starts once the body runs, however long the acquire took.
            scope.deadline = anyio.current_time() + 0.2
            await anyio.sleep(30)
    assert scope.cancelled_caught
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "released"
    assert row["failures"] == 0 and row["error_type"] is None and not row["dead"]
    # A released range is due again at once, without using up an attempt.
    again = await inventory.acquire("exit", files, max_count=10)
    assert again is not None
    assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 10, 2)
    await again.success()


async def test_cancelling_the_surrounding_scope_releases_the_attempt(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    entered = anyio.Event()
    held: list[pbi.Batch] = []

    async def worker() -> None:
        async with inventory.lease("exit", files, max_count=10) as batch:
            held.append(batch)
            entered.set()
            await anyio.sleep(30)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await entered.wait()
            tg.cancel_scope.cancel()
    (batch,) = held
    assert batch.status == pbi.Status.RELEASED
    assert (await attempt_row(db_url, batch.id))["status"] == "released"


async def test_a_double_task_cancel_still_records_the_release(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    entered = asyncio.Event()
    held: list[pbi.Batch] = []

    async def worker() -> None:
        async with inventory.lease("exit", files, max_count=10) as batch:
            held.append(batch)
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(worker())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    # Cancel again while the exit policy's settle is in flight.
    for _ in range(5):
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (batch,) = held

    async def released() -> bool:
        return bool((await attempt_row(db_url, batch.id))["status"] == "released")

    await wait_until(released)
    assert (await attempt_row(db_url, batch.id))["failures"] == 0


async def test_two_cancels_at_once_still_record_the_release(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    entered = asyncio.Event()
    held: list[pbi.Batch] = []

    async def worker() -> None:
        async with inventory.lease("exit", files, max_count=10) as batch:
            held.append(batch)
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(worker())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (batch,) = held

    async def released() -> bool:
        return bool((await attempt_row(db_url, batch.id))["status"] == "released")

    await wait_until(released)


async def test_timeout_fails_the_attempt_with_a_timeout_error(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    with anyio.fail_after(10):
        with pytest.raises(TimeoutError):
            async with inventory.lease("exit", files, max_count=10, timeout=0.3) as batch:
                await anyio.sleep(30)
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert row["error_type"] == "TimeoutError"
    assert row["failures"] == 1
    # A failure is retried first: the same range comes back as attempt 2.
    async with inventory.lease("exit", files, max_count=10, timeout=5) as retry:
        assert (retry.meta_id_start, retry.meta_id_end, retry.attempt) == (1, 10, 2)
    assert (await attempt_row(db_url, retry.id))["status"] == "succeeded"


async def test_a_body_that_finishes_in_time_succeeds_despite_a_timeout(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    async with inventory.lease("exit", files, max_count=10, timeout=30) as batch:
        await anyio.sleep(0.05)
    assert (await attempt_row(db_url, batch.id))["status"] == "succeeded"


async def test_aclose_drains_a_settle_in_flight(db_url: str, make_files: MakeFiles) -> None:
    files = await make_files(rows=20)
    inv = await pbi.Inventory(db_url).open()
    batch = await inv.acquire("exit", files, max_count=10)
    assert batch is not None
    settling = asyncio.create_task(batch.success({"drained": True}))
    await asyncio.sleep(0)  # the settle has started its write
    settling.cancel()  # the caller gives up; the write must still land
    await inv.aclose()
    await asyncio.gather(settling, return_exceptions=True)
    row = await attempt_row(db_url, batch.id)
    assert (row["status"], row["job_result"]) == ("succeeded", {"drained": True})


async def test_aclose_releases_a_lease_nobody_settled(db_url: str, make_files: MakeFiles) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url) as inv:
        batch = await inv.acquire("exit", files, max_count=10)
        assert batch is not None
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "released" and row["failures"] == 0


async def test_a_release_does_not_count_toward_max_attempts(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    async with pbi.Inventory(db_url, max_attempts=1) as inv:
        for expected_attempt in (1, 2, 3):
            with anyio.CancelScope() as scope:
                async with inv.lease("exit", files, max_count=10) as batch:
                    assert (batch.meta_id_start, batch.attempt) == (1, expected_attempt)
                    scope.cancel()
                    await anyio.sleep(30)
            assert scope.cancelled_caught
        handle = await inv.acquire("exit", files, max_count=10)
        assert handle is not None
        assert (handle.meta_id_start, handle.attempt) == (1, 4)
        await handle.release()
        # One failure exhausts max_attempts=1: the range is dead, new ranges go on.
        with pytest.raises(ExtractFailed):
            async with inv.lease("exit", files, max_count=10) as last:
                assert last.attempt == 5
                raise ExtractFailed("now it counts")
        nxt = await inv.acquire("exit", files, max_count=10)
        assert nxt is not None and (nxt.meta_id_start, nxt.attempt) == (11, 1)
        await nxt.success()
    rows = await attempts_of(db_url, "exit")
    assert [(r["meta_id_start"], r["status"]) for r in rows] == [
        (1, "released"),
        (1, "released"),
        (1, "released"),
        (1, "released"),
        (1, "failed"),
        (11, "succeeded"),
    ]
    assert rows[4]["dead"] and rows[4]["failures"] == 1
    assert all(r["failures"] == 0 for r in rows[:4])


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_release_and_are_reraised(
    inventory: pbi.Inventory,
    make_files: MakeFiles,
    db_url: str,
    exc_type: type[BaseException],
) -> None:
    files = await make_files(rows=20)
    with pytest.raises(exc_type):
        async with inventory.lease("exit", files, max_count=10) as batch:
            raise exc_type()
    row = await attempt_row(db_url, batch.id)
    assert (row["status"], row["failures"], row["error_type"]) == ("released", 0, None)


async def test_a_result_that_is_not_json_fails_the_attempt(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    with pytest.raises(pbi.InvalidArgument, match="JSON"):
        async with inventory.lease("exit", files, max_count=10) as batch:
            batch.result = {"when": object()}
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert row["error_type"] == "pybatchintory.errors.InvalidArgument"
    assert row["job_result"] is None


async def test_process_settles_by_the_function_s_outcome(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)

    def count_csv(items: list[dict[str, object]], kind: str) -> dict[str, int]:
        return {"rows": len(items), kind: sum(1 for row in items if row["kind"] == kind)}

    async def broken(items: list[dict[str, object]]) -> None:
        raise ExtractFailed(f"{len(items)} rows")

    first = await inventory.acquire("exit", files, max_count=10)
    assert first is not None
    assert await first.process(count_csv, ("csv",)) == {"rows": 10, "csv": 5}
    second = await inventory.acquire("exit", files, max_count=10)
    assert second is not None
    with pytest.raises(ExtractFailed, match="10 rows"):
        await second.process(broken)
    rows = await attempts_of(db_url, "exit")
    assert [(r["status"], r["job_result"]) for r in rows] == [
        ("succeeded", {"rows": 10, "csv": 5}),
        ("failed", None),
    ]
    assert rows[1]["error_message"] == "10 rows"


async def test_a_timeout_given_to_acquire_bounds_process(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)

    async def slow(items: list[dict[str, object]]) -> int:
        await anyio.sleep(30)
        return len(items)

    batch = await inventory.acquire("exit", files, max_count=10, timeout=0.3)
    assert batch is not None
    with anyio.fail_after(10):
        with pytest.raises(TimeoutError):
            await batch.process(slow)
    row = await attempt_row(db_url, batch.id)
    assert (row["status"], row["error_type"]) == ("failed", "TimeoutError")
    # The same bound through `async with batch`.
    again = await inventory.acquire("exit", files, max_count=10, timeout=0.3)
    assert again is not None and again.attempt == 2
    with anyio.fail_after(10):
        with pytest.raises(TimeoutError):
            async with again:
                await anyio.sleep(30)
    assert (await attempt_row(db_url, again.id))["error_type"] == "TimeoutError"


async def test_cancelling_while_a_lease_is_being_acquired_leaves_no_lease_behind(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=500)
    async with pbi.Inventory(db_url) as inv:
        await inv.set_cursor("entering", 0, source=files)

        # Cancel after 0 to ~50 ms: before, inside and after the acquire's transaction and
        # its commit, and in the body. Whenever it lands, no lease may be left running.
        async def worker(started: asyncio.Event) -> None:
            started.set()
            async with inv.lease("entering", files, max_count=1):
                await asyncio.sleep(30)

        for step in range(100):
            started = asyncio.Event()
            task = asyncio.create_task(worker(started))
            await started.wait()
            await asyncio.sleep(step * 0.0005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # And one that surely reached its body.
        with anyio.CancelScope() as scope:
            async with inv.lease("entering", files, max_count=1):
                scope.cancel()
                await asyncio.sleep(30)
    rows = await attempts_of(db_url, "entering")
    assert {r["status"] for r in rows} == {"released"}
    assert all(r["failures"] == 0 for r in rows)
