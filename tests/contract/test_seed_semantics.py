"""The seed's 0.0.8 semantics users relied on, and what the ledger says about stuck work.

- ``success(logging=...)`` stores free text in the ``logging`` column; ``error()`` takes a
  message string as well as an exception; a failed attempt can carry a result.
- A job's window is its identity, but callers need not repeat it.
- ``backlog`` counts the rows of dead ranges; ``eta`` is also given in seconds.
- A refused settle's warning names the status the ledger has.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio.to_thread
import pytest

import pybatchintory as pbi
import pybatchintory.sync

from tests.contract._ledger import attempt_row, expire_lease
from tests.contract.conftest import MakeFiles


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def test_success_stores_logging_text(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("logged", files, max_count=5)
    assert batch is not None
    await batch.success({"rows": 5}, logging="wrote 5 rows to s3://bucket/day=1")
    row = await attempt_row(db_url, batch.id)
    assert (row["status"], row["logging"]) == ("succeeded", "wrote 5 rows to s3://bucket/day=1")
    assert _json(row["job_result"]) == {"rows": 5}
    (attempt,) = await inventory.batches("logged")
    assert attempt.logging == "wrote 5 rows to s3://bucket/day=1"


async def test_error_takes_a_message_a_result_and_logging(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    first = await inventory.acquire("failing", files, max_count=5)
    assert first is not None
    await first.error("cluster lost", result={"partial": 3}, logging="retry later")
    row = await attempt_row(db_url, first.id)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "failed",
        "Error",
        "cluster lost",
    )
    assert _json(row["job_result"]) == {"partial": 3}
    assert row["logging"] == "retry later"

    second = await inventory.acquire("failing", files, max_count=5)
    assert second is not None and (second.meta_id_start, second.attempt) == (1, 2)
    try:
        raise ValueError("bad row 3")
    except ValueError as exc:
        await second.error(exc, result=[1, 2], logging="context first")
    row = await attempt_row(db_url, second.id)
    assert (row["error_type"], row["error_message"]) == ("ValueError", "bad row 3")
    assert _json(row["job_result"]) == [1, 2]
    assert row["logging"].startswith("context first\nTraceback")
    groups = await inventory.errors("failing")
    assert sorted(g.error_type for g in groups) == ["Error", "ValueError"]


async def test_bad_settle_arguments_write_nothing(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("strict", files, max_count=5)
    assert batch is not None
    with pytest.raises(pbi.InvalidArgument, match="exception or a message"):
        await batch.error(42)  # type: ignore[arg-type]
    with pytest.raises(pbi.InvalidArgument, match="JSON"):
        await batch.error("x", result={1, 2})
    with pytest.raises(pbi.InvalidArgument, match="logging must be a string"):
        await batch.success(logging=b"bytes")  # type: ignore[arg-type]
    assert (await attempt_row(db_url, batch.id))["status"] == "running"
    await batch.release()


async def test_the_sync_api_has_the_seeds_succeeded_and_failed(
    make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=30)

    def seed() -> list[int]:
        with pybatchintory.sync.SyncInventory(db_url) as inv:
            ok = inv.acquire("seed_calls", files, max_count=10)
            bad = inv.acquire("seed_calls", files, max_count=10)
            bare = inv.acquire("seed_calls", files, max_count=10)
            assert ok is not None and bad is not None and bare is not None
            ok.succeeded(result={"n": 10}, logging="fine")
            bad.failed(RuntimeError("boom"))
            bare.failed(logging="gave up")
            return [ok.id, bad.id, bare.id]

    ok_id, bad_id, bare_id = await anyio.to_thread.run_sync(seed)
    ok = await attempt_row(db_url, ok_id)
    assert (ok["status"], ok["logging"], _json(ok["job_result"])) == (
        "succeeded",
        "fine",
        {"n": 10},
    )
    bad = await attempt_row(db_url, bad_id)
    assert (bad["status"], bad["error_type"], bad["error_message"]) == (
        "failed",
        "RuntimeError",
        "boom",
    )
    bare = await attempt_row(db_url, bare_id)
    assert (bare["status"], bare["error_message"], bare["logging"]) == (
        "failed",
        "failed",
        "gave up",
    )


async def test_a_recorded_window_is_reused_when_the_call_omits_it(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    first = await inventory.acquire("backfill_x", files, id_start=10, id_end=50, max_count=20)
    assert first is not None and (first.meta_id_start, first.meta_id_end) == (10, 29)
    await first.success()
    again = await inventory.acquire("backfill_x", files, max_count=20)
    assert again is not None and (again.meta_id_start, again.meta_id_end) == (30, 49)
    await again.success()
    async with pbi.Inventory(db_url) as fresh:  # a new process knows only the record
        plan = await fresh.plan("backfill_x", files, max_count=20)
        assert [(p.meta_id_start, p.meta_id_end) for p in plan] == [(50, 50)]
        last = await fresh.acquire("backfill_x", files, max_count=20)
        assert last is not None and (last.meta_id_start, last.meta_id_end) == (50, 50)
        await last.success()
        assert await fresh.acquire("backfill_x", files, max_count=20) is None
        with pytest.raises(pbi.JobConflict, match="id_end: recorded 50, given 60"):
            await fresh.acquire("backfill_x", files, id_start=10, id_end=60, max_count=20)
        with pytest.raises(pbi.JobConflict):
            await fresh.acquire("backfill_x", files, id_end=50, max_count=20)


async def test_backlog_counts_the_rows_of_dead_ranges(make_files: MakeFiles, db_url: str) -> None:
    files = await make_files(rows=100)
    async with pbi.Inventory(db_url, max_attempts=1) as inv:
        with pytest.raises(RuntimeError):
            async with inv.lease("stuck", files, max_count=30) as dead:
                raise RuntimeError("poison")
        for _ in range(2):
            async with inv.lease("stuck", files, max_count=30):
                pass
        backlog = await inv.backlog("stuck")
        assert (backlog.count, backlog.dead, backlog.dead_count) == (10, 1, 30)
        assert backlog.dead_weight == dead.weight
        assert backlog.eta is not None and backlog.eta_seconds == backlog.eta.total_seconds()
        assert await inv.retry("stuck") == 1
        revived = await inv.backlog("stuck")
        assert (revived.count, revived.dead, revived.dead_count, revived.dead_weight) == (
            40,
            0,
            0,
            0,
        )


async def test_a_refused_settle_names_the_ledgers_status(
    inventory: pbi.Inventory,
    make_files: MakeFiles,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = await make_files(rows=20)
    batch = await inventory.acquire("taken", files, max_count=5)
    assert batch is not None
    await expire_lease(db_url, batch.id)
    async with pbi.Inventory(db_url) as other:  # expires the lease, takes the range again
        retry = await other.acquire("taken", files, max_count=5)
        assert retry is not None and retry.attempt == 2
        await retry.success()
    with caplog.at_level(logging.WARNING, logger="pybatchintory"):
        with pytest.raises(pbi.LeaseLost, match="the ledger has it as expired"):
            await batch.success()
    messages = [r.getMessage() for r in caplog.records]
    assert any("lease lost" in m and "the ledger has it as expired" in m for m in messages)
    assert not any("succeeded>" in m for m in messages)
    assert "lease lost" in repr(batch)
