"""The pieces of a long-running service: ``consume``, ``group()``, ``lease(stop=)`` (issue 13).

Each is run for real against every store; the ledger, read with plain SQL, says how every
batch ended.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio
import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempts_of, expire_lease, wait_until
from tests.contract.conftest import MakeFiles


class Flaky(Exception):
    """A handler's failure."""


async def test_consume_runs_every_batch_records_failures_and_stops_on_the_event(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=60)
    seen: set[int] = set()
    failed_once: list[int] = []
    stop = asyncio.Event()

    async def handle(batch: pbi.Batch) -> dict[str, int]:
        rows = await batch.items()
        if batch.meta_id_start == 21 and not failed_once:
            failed_once.append(batch.id)
            raise Flaky("the first try of [21, 30] fails")
        seen.update(int(row["id"]) for row in rows)
        if len(seen) == 60:
            stop.set()
        return {"rows": len(rows)}

    async with pbi.Inventory(db_url, lease_ttl=30, max_attempts=3) as inv:
        with anyio.fail_after(30):
            report = await inv.consume(
                "service", files, handle, max_count=10, concurrency=2, poll_interval=0.05, stop=stop
            )
    assert (report.succeeded, report.failed, report.released, report.lost) == (6, 1, 0, 0)
    assert report.batches == 7
    rows = await attempts_of(db_url, "service")
    assert sorted(r["status"] for r in rows) == ["failed"] + ["succeeded"] * 6
    failure = next(r for r in rows if r["status"] == "failed")
    assert failure["id"] == failed_once[0] and failure["error_message"].startswith("the first")
    assert all(r["job_result"] == {"rows": 10} for r in rows if r["status"] == "succeeded")


async def test_stop_ends_an_idle_consumer_at_once(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=0)
    stop = asyncio.Event()

    async def handle(batch: pbi.Batch) -> None:
        raise AssertionError("there is nothing to hand out")

    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = time.monotonic()
    report = await inventory.consume("idle", files, handle, poll_interval=60, stop=stop)
    assert time.monotonic() - started < 5
    assert report.batches == 0


async def test_cancelling_consume_releases_the_batches_in_hand(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    started = asyncio.Event()

    async def handle(batch: pbi.Batch) -> None:
        started.set()
        await asyncio.Event().wait()  # a body that never ends by itself

    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        task = asyncio.get_running_loop().create_task(
            inv.consume("cancelled", files, handle, max_count=10, concurrency=2)
        )
        with anyio.fail_after(20):
            await started.wait()
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        statuses = [r["status"] for r in await attempts_of(db_url, "cancelled")]
    assert statuses and set(statuses) == {"released"}


async def test_consume_logs_a_lost_lease_and_goes_on(
    db_url: str, make_files: MakeFiles, caplog: pytest.LogCaptureFixture
) -> None:
    files = await make_files(rows=20)
    stop = asyncio.Event()
    handled: list[int] = []

    async def handle(batch: pbi.Batch) -> None:
        handled.append(batch.meta_id_start)
        if batch.meta_id_start == 1 and len(handled) == 1:
            await expire_lease(db_url, batch.id)  # as if this worker had frozen
        if batch.meta_id_start == 11:
            stop.set()

    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        with caplog.at_level(logging.WARNING, logger="pybatchintory"), anyio.fail_after(30):
            report = await inv.consume(
                "lost", files, handle, max_count=10, poll_interval=0.05, stop=stop
            )
    assert report.lost == 1 and report.succeeded >= 1
    assert any("lease" in r.getMessage() and "going on" in r.getMessage() for r in caplog.records)
    rows = await attempts_of(db_url, "lost")
    assert rows[0]["status"] == "expired"  # written by the acquire that retried it
    assert handled[:2] == [1, 1]


async def test_consume_checks_its_arguments_before_leasing(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)

    async def handle(batch: pbi.Batch) -> None:
        raise AssertionError("never called")

    for bad in ({"concurrency": 0}, {"poll_interval": 0}, {"stop": "soon"}, {"max_count": -1}):
        with pytest.raises(pbi.InvalidArgument):
            await inventory.consume("checked", files, handle, **bad)


async def test_lease_wait_ends_when_stop_is_set(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=0)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = time.monotonic()
    with pytest.raises(pbi.NoBatchAvailable, match="stopped"):
        async with inventory.lease("waiting", files, wait=True, poll_interval=60, stop=stop):
            raise AssertionError("nothing to hand out")
    assert time.monotonic() - started < 5


async def test_a_group_counts_settles_from_callbacks_and_releases_the_rest_on_exit(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40)
    loop = asyncio.get_running_loop()
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        async with inv.group() as group:
            batches = await group.acquire_many("grouped", files, 3, max_count=10)
            last = await group.acquire("grouped", files, max_count=10)
            assert last is not None and len(batches) == 3
            assert (group.outstanding, group.settling) == (4, 0)
            first, second, third = batches
            # Completion callbacks, as a pipeline would call them.
            loop.call_soon(first.success_nowait, {"done": 1})
            loop.call_soon(second.error_nowait, Flaky("stage 2"))
            await asyncio.sleep(0)
            assert group.outstanding == 2 and group.settling + group.settled == 2
            waiting = loop.create_task(group.wait_settled())
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await third.release()
            assert group.outstanding == 1
            # `last` is left unsettled: the group's exit releases it.
        with anyio.fail_after(5):
            await waiting  # every batch is settled now
        assert (group.outstanding, group.settling, group.settled) == (0, 0, 4)
        with pytest.raises(RuntimeError, match="exited"):
            await group.acquire("grouped", files)
    statuses = {r["id"]: r["status"] for r in await attempts_of(db_url, "grouped")}
    assert statuses == {
        first.id: "succeeded",
        second.id: "failed",
        third.id: "released",
        last.id: "released",
    }


async def test_a_group_waits_until_every_batch_is_settled(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)
    async with inventory.group() as group:
        batches = await group.acquire_many("waited", files, 3, max_count=10)
        loop = asyncio.get_running_loop()
        for delay, batch in zip((0.05, 0.1, 0.15), batches, strict=True):
            loop.call_later(delay, batch.success_nowait)
        with anyio.fail_after(10):
            await group.wait_settled()
        assert (group.outstanding, group.settling, group.settled) == (0, 0, 3)

    async def all_succeeded() -> bool:
        rows = await attempts_of(db_url, "waited")
        return [r["status"] for r in rows] == ["succeeded"] * 3

    await wait_until(all_succeeded, deadline=1)


async def test_consume_waits_for_a_database_that_is_not_up() -> None:
    stop = asyncio.Event()
    warnings: list[str] = []

    class StopOnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())
            if "acquire failed, retrying" in record.getMessage():
                stop.set()

    async def handle(batch: pbi.Batch) -> None:
        raise AssertionError("nothing can be leased")

    # Nothing listens on port 9 of the loopback interface.
    inv = pbi.Inventory("postgresql+asyncpg://postgres@127.0.0.1:9/absent")
    handler = StopOnRetry(logging.WARNING)
    logging.getLogger("pybatchintory").addHandler(handler)
    try:
        with anyio.fail_after(60):
            report = await inv.consume("down", "files", handle, poll_interval=0.2, stop=stop)
    finally:
        logging.getLogger("pybatchintory").removeHandler(handler)
        await inv.aclose()
    assert report.store_errors == 1 and report.batches == 0
    assert any("unreachable" in message for message in warnings)
