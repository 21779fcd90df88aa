"""Observability: backlog, batches, status, history, error groups and retry (docs/operations.md).

Every expectation is computed independently of the library: from the metadata table with
plain SQL, or from what the test itself leased and settled.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anyio
import pytest

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles
from tests.helpers import create_meta_table, fetch_all, insert_rows


class ParseError(Exception):
    """A failure raised at one site."""


class UploadError(Exception):
    """A failure raised at another site."""


def _parse(batch: pbi.Batch) -> None:
    raise ParseError(f"cannot parse range {batch.meta_id_start}")


def _upload(batch: pbi.Batch) -> None:
    raise UploadError(f"cannot upload range {batch.meta_id_start}")


async def _table_after(url: str, after: int) -> tuple[int, int]:
    (row,) = await fetch_all(
        url,
        "SELECT COUNT(*) AS n, COALESCE(SUM(size_in_bytes), 0) AS w FROM files WHERE id > :a",
        a=after,
    )
    return int(row["n"]), int(row["w"])


Site = Callable[[pbi.Batch], None]


async def _fail_once(inv: pbi.Inventory, job: str, files: pbi.MetaTable, site: Site) -> int:
    """Lease one range of ``job`` and fail it at ``site``; return the attempt id."""
    with pytest.raises((ParseError, UploadError)):
        async with inv.lease(job, files, max_count=10) as batch:
            attempt_id = batch.id
            site(batch)
    return attempt_id


async def _fail_until_dead(
    inv: pbi.Inventory, job: str, files: pbi.MetaTable, site: Site
) -> tuple[int, int]:
    """Fail one range ``max_attempts`` (3) times at ``site``; return its (start, end).

    Every failure goes through ``_fail_once``: the same stack, so the same fingerprint.
    """
    ids = [await _fail_once(inv, job, files, site) for _ in range(3)]
    attempts = [a for a in await inv.batches(job, status="failed") if a.id in ids]
    (only,) = {(a.meta_id_start, a.meta_id_end) for a in attempts}  # retried first, each time
    return only


# -- backlog --------------------------------------------------------------------------------


async def test_backlog_counts_and_weighs_the_rows_after_the_cursor(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=300)
    held = await inventory.acquire("bk", files, max_count=40)
    assert held is not None

    backlog = await inventory.backlog("bk")
    assert (backlog.count, backlog.weight) == await _table_after(db_url, 40)
    assert (backlog.retry_due, backlog.dead, backlog.running) == (0, 0, 1)
    assert backlog.eta is None  # no success yet: nothing to estimate from

    await held.success()
    for _ in range(3):
        async with inventory.lease("bk", files, max_count=40):
            await anyio.sleep(0.02)  # a measurable processing time on every clock
    backlog = await inventory.backlog("bk")
    assert (backlog.count, backlog.weight) == await _table_after(db_url, 160)
    assert (backlog.retry_due, backlog.dead, backlog.running) == (0, 0, 0)
    assert backlog.eta is not None
    assert backlog.eta > timedelta(0)


async def test_backlog_follows_rows_inserted_after_the_cursor(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=50)
    async with inventory.lease("grow", files):
        pass
    assert (await inventory.backlog("grow")).count == 0

    await insert_rows(
        db_url, "files", [{"id": i, "size_in_bytes": i, "kind": "csv"} for i in range(51, 61)]
    )
    backlog = await inventory.backlog("grow")
    assert (backlog.count, backlog.weight) == (10, sum(range(51, 61)))


async def test_backlog_of_a_window_counts_only_the_window(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=500)
    async with inventory.lease("win", files, id_start=101, id_end=300, max_count=50):
        pass
    (row,) = await fetch_all(
        db_url,
        "SELECT COUNT(*) AS n, SUM(size_in_bytes) AS w FROM files WHERE id > 150 AND id <= 300",
    )
    backlog = await inventory.backlog("win")
    assert (backlog.count, backlog.weight) == (int(row["n"]), int(row["w"]))


async def test_backlog_counts_ranges_waiting_for_retry_and_dead_ones(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    dead_start, dead_end = await _fail_until_dead(inventory, "rt", files, _parse)
    assert (dead_start, dead_end) == (1, 10)
    await _fail_once(inventory, "rt", files, _upload)  # range 11..20, due again at once

    backlog = await inventory.backlog("rt")
    after_cursor = await _table_after(db_url, 20)
    (retry,) = await fetch_all(
        db_url, "SELECT SUM(size_in_bytes) AS w FROM files WHERE id BETWEEN 11 AND 20"
    )
    assert backlog.count == after_cursor[0] + 10
    assert backlog.weight == after_cursor[1] + int(retry["w"])
    assert (backlog.retry_due, backlog.dead, backlog.running) == (1, 1, 0)


async def test_backlog_of_an_unknown_job_is_a_clear_error(inventory: pbi.Inventory) -> None:
    with pytest.raises(pbi.UnknownJob, match="nobody"):
        await inventory.backlog("nobody")


# -- batches and status ---------------------------------------------------------------------


async def test_batches_lists_attempts_newest_first_and_filters_by_status(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    async with inventory.lease("b", files, max_count=10) as ok:
        ok.result = {"n": 1}
    failed_id = await _fail_once(inventory, "b", files, _parse)
    retried = await inventory.acquire("b", files, max_count=10)
    assert retried is not None and retried.attempt == 2
    released = await inventory.acquire("b", files, max_count=10)
    assert released is not None
    await released.release()

    every = await inventory.batches("b")
    assert [a.id for a in every] == sorted([ok.id, failed_id, retried.id, released.id])[::-1]
    by_id = {a.id: a for a in every}
    assert by_id[ok.id].status is pbi.Status.SUCCEEDED
    assert by_id[ok.id].result == {"n": 1}
    assert by_id[failed_id].status is pbi.Status.FAILED
    assert by_id[failed_id].error_type.endswith("ParseError")  # type: ignore[union-attr]
    assert by_id[retried.id].status is pbi.Status.RUNNING
    assert by_id[released.id].status is pbi.Status.RELEASED
    assert (by_id[failed_id].meta_id_start, by_id[failed_id].meta_id_end) == (11, 20)
    assert (by_id[retried.id].meta_id_start, by_id[retried.id].meta_id_end) == (11, 20)

    assert [a.id for a in await inventory.batches("b", status="failed")] == [failed_id]
    assert [a.id for a in await inventory.batches("b", status=pbi.Status.RUNNING)] == [retried.id]
    both = await inventory.batches("b", status=[pbi.Status.SUCCEEDED, "released"])
    assert [a.id for a in both] == [released.id, ok.id]
    assert [a.id for a in await inventory.batches("b", limit=2)] == [released.id, retried.id]
    assert await inventory.batches("someone else") == []
    await retried.success()


async def test_status_has_one_line_per_job(inventory: pbi.Inventory, make_files: MakeFiles) -> None:
    files = await make_files(rows=200)
    async with inventory.lease("alpha", files, max_count=30):
        pass
    await _fail_until_dead(inventory, "beta", files, _parse)
    await _fail_once(inventory, "beta", files, _upload)
    held = await inventory.acquire("gamma", files, id_start=50, id_end=150, max_count=20)
    assert held is not None

    lines = {line.job: line for line in await inventory.status()}
    assert sorted(lines) == ["alpha", "beta", "gamma"]
    alpha, beta, gamma = lines["alpha"], lines["beta"], lines["gamma"]
    assert (alpha.meta_table, alpha.cursor) == ("files", 30)
    assert (alpha.id_start, alpha.id_end) == (None, None)
    assert dict(alpha.counts) == {"running": 0, "retry": 0, "dead": 0}
    assert alpha.last_success is not None
    (alpha_attempt,) = await inventory.batches("alpha")
    assert alpha.last_success == alpha_attempt.processing_end
    assert beta.cursor == 20
    assert dict(beta.counts) == {"running": 0, "retry": 1, "dead": 1}
    assert beta.last_success is None
    assert (gamma.cursor, gamma.id_start, gamma.id_end) == (69, 50, 150)
    assert dict(gamma.counts) == {"running": 1, "retry": 0, "dead": 0}
    await held.success()


async def test_status_of_an_empty_inventory_is_empty(inventory: pbi.Inventory) -> None:
    assert await inventory.status() == []


# -- history ----------------------------------------------------------------------------------


async def test_history_returns_every_attempt_of_every_job_covering_an_id(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    async with inventory.lease("h1", files, max_count=10):
        pass  # h1: 1..10
    first_failure = await _fail_once(inventory, "h1", files, _parse)  # h1: 11..20
    async with inventory.lease("h1", files, max_count=10) as second:
        assert (second.meta_id_start, second.attempt) == (11, 2)
    async with inventory.lease("h2", files, max_count=25) as wide:
        pass  # h2: 1..25
    async with inventory.lease("h2", files, max_count=25) as next_wide:
        pass  # h2: 26..50

    found = await inventory.history(files, 15)
    assert sorted(a.id for a in found) == sorted([first_failure, second.id, wide.id])
    by_id = {a.id: a for a in found}
    assert by_id[first_failure].status is pbi.Status.FAILED
    assert by_id[first_failure].attempt == 1
    assert by_id[second.id].status is pbi.Status.SUCCEEDED
    assert by_id[wide.id].job == "h2"
    for attempt in found:
        assert attempt.meta_id_start <= 15 <= attempt.meta_id_end
        assert attempt.processing_start is not None
        assert attempt.processing_end is not None
        assert attempt.owner == inventory.owner

    assert [a.id for a in await inventory.history("files", 26)] == [next_wide.id]
    assert [a.job for a in await inventory.history(files, 1)] == ["h1", "h2"]
    assert await inventory.history(files, 51) == []
    assert await inventory.history(files, 0) == []
    assert await inventory.history("other_table", 15) == []


async def test_history_sees_a_running_attempt(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    held = await inventory.acquire("live", files, max_count=10)
    assert held is not None
    (attempt,) = await inventory.history(files, 10)
    assert (attempt.id, attempt.status, attempt.processing_end) == (
        held.id,
        pbi.Status.RUNNING,
        None,
    )
    await held.success()
    (attempt,) = await inventory.history(files, 10)
    assert attempt.status is pbi.Status.SUCCEEDED


async def test_history_rejects_a_non_integer_id(inventory: pbi.Inventory) -> None:
    with pytest.raises(pbi.InvalidArgument, match="meta_id"):
        await inventory.history("files", "15")  # type: ignore[arg-type]


# -- errors and retry -----------------------------------------------------------------------


async def test_errors_group_failures_by_raise_site(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    assert await _fail_until_dead(inventory, "e", files, _parse) == (1, 10)
    assert await _fail_until_dead(inventory, "e", files, _upload) == (11, 20)
    await _fail_once(inventory, "e", files, _upload)  # 21..30, due for retry
    async with inventory.lease("e", files, max_count=10):
        pass  # the retry of 21..30 succeeds

    failed = await inventory.batches("e", status="failed")
    groups = {g.error_type.rsplit(".", 1)[-1]: g for g in await inventory.errors("e")}
    assert sorted(groups) == ["ParseError", "UploadError"]
    parse, upload = groups["ParseError"], groups["UploadError"]
    assert parse.fingerprint != upload.fingerprint
    assert (parse.count, upload.count) == (3, 4)
    assert [g.error_type.rsplit(".", 1)[-1] for g in await inventory.errors("e")] == [
        "UploadError",
        "ParseError",
    ]  # most frequent first
    for group in (parse, upload):
        mine = [a for a in failed if a.fingerprint == group.fingerprint]
        assert sorted(group.attempt_ids) == sorted(a.id for a in mine)
        assert group.first_seen == min(a.processing_end for a in mine)  # type: ignore[type-var]
        assert group.last_seen == max(a.processing_end for a in mine)  # type: ignore[type-var]
        assert group.first_seen < group.last_seen
    assert "cannot parse range 1" in parse.error_message
    assert "cannot upload range" in upload.error_message


async def test_errors_of_a_job_without_failures_are_empty(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)
    async with inventory.lease("clean", files):
        pass
    assert await inventory.errors("clean") == []
    with pytest.raises(pbi.UnknownJob):
        await inventory.errors("nobody")


async def test_retry_by_fingerprint_revives_only_that_group(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    await _fail_until_dead(inventory, "rf", files, _parse)  # 1..10
    await _fail_until_dead(inventory, "rf", files, _upload)  # 11..20
    await _fail_until_dead(inventory, "rf", files, _parse)  # 21..30
    groups = {g.error_type.rsplit(".", 1)[-1]: g for g in await inventory.errors("rf")}
    assert (await inventory.backlog("rf")).dead == 3

    assert await inventory.retry("rf", fingerprint=groups["ParseError"].fingerprint) == 2
    dead = await fetch_all(
        db_url,
        "SELECT meta_id_start FROM inventory WHERE job = 'rf' AND dead = :t",
        t=True,
    )
    assert [int(r["meta_id_start"]) for r in dead] == [11]
    backlog = await inventory.backlog("rf")
    assert (backlog.retry_due, backlog.dead) == (2, 1)

    revived = [await inventory.acquire("rf", files, max_count=10) for _ in range(3)]
    got = [(b.meta_id_start, b.attempt) for b in revived if b is not None]
    assert got == [(1, 4), (21, 4), (31, 1)]  # oldest first, then new work; 11..20 stays dead
    for batch in revived:
        assert batch is not None
        await batch.success()


async def test_retry_by_batch_ids_revives_only_those(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    for _ in range(3):
        await _fail_until_dead(inventory, "rb", files, _parse)  # 1..10, 11..20, 21..30
    dead = [a for a in await inventory.batches("rb", status="failed") if a.dead]
    assert sorted(a.meta_id_start for a in dead) == [1, 11, 21]
    chosen = [a.id for a in dead if a.meta_id_start in (11, 21)]

    assert await inventory.retry("rb", batch_ids=chosen) == 2
    assert await inventory.retry("rb", batch_ids=chosen) == 0  # already revived
    backlog = await inventory.backlog("rb")
    assert (backlog.retry_due, backlog.dead) == (2, 1)
    first = await inventory.acquire("rb", files, max_count=10)
    second = await inventory.acquire("rb", files, max_count=10)
    third = await inventory.acquire("rb", files, max_count=10)
    assert first is not None and second is not None and third is not None
    assert [(b.meta_id_start, b.attempt) for b in (first, second, third)] == [
        (11, 4),
        (21, 4),
        (31, 1),
    ]
    for batch in (first, second, third):
        await batch.success()


async def test_retry_without_a_filter_revives_every_dead_range(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=40)
    await _fail_until_dead(inventory, "ra", files, _parse)
    await _fail_until_dead(inventory, "ra", files, _upload)
    assert await inventory.retry("ra") == 2
    assert (await inventory.backlog("ra")).dead == 0
    assert await inventory.retry("ra") == 0
    with pytest.raises(pbi.UnknownJob):
        await inventory.retry("nobody")


async def test_backlog_of_a_filtered_job_from_another_inventory(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """An operator's fresh ``Inventory`` (the CLI) knows the job's filter from the ledger."""
    files = await make_files(rows=200, kinds=("csv", "json", "parquet"), where={"kind": "csv"})
    async with inventory.lease("csv_only", files, max_count=20) as batch:
        assert all(row["kind"] == "csv" for row in await batch.items())
    (row,) = await fetch_all(
        db_url,
        "SELECT COUNT(*) AS n, SUM(size_in_bytes) AS w FROM files WHERE kind = 'csv' AND id > :end",
        end=batch.meta_id_end,
    )
    expected = (int(row["n"]), int(row["w"]))
    mine = await inventory.backlog("csv_only")
    assert (mine.count, mine.weight) == expected
    async with pbi.Inventory(db_url) as operator:
        backlog = await operator.backlog("csv_only")
        assert (backlog.count, backlog.weight) == expected


async def test_retry_by_the_id_of_any_attempt_of_a_dead_range(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    """An id from ``history`` or ``batches`` names its range, whichever attempt it is."""
    files = await make_files(rows=100)
    await _fail_until_dead(inventory, "any", files, _parse)  # 1..10
    await _fail_until_dead(inventory, "any", files, _parse)  # 11..20
    await _fail_until_dead(inventory, "other", files, _parse)  # another job's 1..10
    (first_try,) = [a for a in await inventory.history(files, 5) if a.job == "any"][:1]
    assert (first_try.attempt, first_try.dead) == (1, False)
    foreign = [a.id for a in await inventory.batches("other")]

    assert await inventory.retry("any", batch_ids=[first_try.id, *foreign]) == 1
    assert (await inventory.backlog("any")).dead == 1
    assert (await inventory.backlog("other")).dead == 1
    revived = await inventory.acquire("any", files, max_count=10)
    assert revived is not None and (revived.meta_id_start, revived.attempt) == (1, 4)
    await revived.success()


async def test_batches_with_an_unknown_status_is_a_clear_error(
    inventory: pbi.Inventory,
) -> None:
    with pytest.raises(pbi.InvalidArgument, match=r"'finished'.*succeeded"):
        await inventory.batches("x", status="finished")
    with pytest.raises(pbi.InvalidArgument, match="'done'"):
        await inventory.batches("x", status=["running", "done"])


async def test_status_lists_a_job_that_has_no_attempt_yet(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=20)
    await inventory.set_cursor("idle", 7, source=files)
    (line,) = await inventory.status()
    assert (line.job, line.meta_table, line.cursor, line.last_success) == (
        "idle",
        "files",
        7,
        None,
    )
    assert dict(line.counts) == {"running": 0, "retry": 0, "dead": 0}
    backlog = await inventory.backlog("idle")
    assert (backlog.count, backlog.eta) == (13, None)


async def test_backlog_of_a_job_reading_another_database_needs_its_source(
    inventory: pbi.Inventory, db_url: str, meta_db_url: str
) -> None:
    await create_meta_table(meta_db_url, "files", rows=60)
    remote = pbi.MetaTable("files", weight="size_in_bytes", url=meta_db_url)
    async with inventory.lease("remote", remote, max_count=25):
        pass
    async with pbi.Inventory(db_url) as operator:
        with pytest.raises(pbi.InvalidArgument, match="source="):
            await operator.backlog("remote")
        backlog = await operator.backlog("remote", source=remote)
    (row,) = await fetch_all(
        meta_db_url, "SELECT COUNT(*) AS n, SUM(size_in_bytes) AS w FROM files WHERE id > 25"
    )
    assert (backlog.count, backlog.weight) == (int(row["n"]), int(row["w"]))
