"""Out-of-order commits: ``settle=`` keeps young rows back, ``audit`` finds changed ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles, statements
from tests.helpers import default_size, fetch_all, insert_rows


def _naive_utc(delta: timedelta = timedelta(0)) -> datetime:
    return (datetime.now(UTC) + delta).replace(tzinfo=None)


def _rows(ids: range, imported: datetime | None) -> list[dict[str, Any]]:
    return [
        {"id": i, "size_in_bytes": default_size(i), "kind": "csv", "imported": imported}
        for i in ids
    ]


async def _range_now(url: str, start: int, end: int, where: str = "") -> tuple[int, int]:
    (row,) = await fetch_all(
        url,
        "SELECT COUNT(*) AS n, COALESCE(SUM(size_in_bytes), 0) AS w FROM files "
        f"WHERE id BETWEEN :s AND :e {where}",
        s=start,
        e=end,
    )
    return int(row["n"]), int(row["w"])


# -- settle -----------------------------------------------------------------------------------


async def test_settle_keeps_young_rows_back_until_they_are_old_enough(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    settle = timedelta(seconds=3)  # a margin for a loaded machine between insert and lease
    files = await make_files(rows=100, settle=settle)
    inserted = _naive_utc()
    await insert_rows(db_url, "files", _rows(range(101, 111), inserted))

    async with inventory.lease("settled", files) as batch:
        assert (batch.meta_id_start, batch.meta_id_end, batch.count) == (1, 100, 100)
    assert (await inventory.plan("settled", files)) == []

    got: pbi.Batch | None = None
    with anyio.fail_after(15):
        while got is None:
            got = await inventory.acquire("settled", files)
            if got is None:
                await anyio.sleep(0.2)
    # Never before the rows were `settle` old (by the test's clock, which the library uses).
    assert _naive_utc() >= inserted + settle
    assert (got.meta_id_start, got.meta_id_end, got.count) == (101, 110, 10)
    await got.success()


async def test_settle_holds_back_old_rows_behind_a_young_one(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """Ids committed out of order: an old row after a young one waits for the young one."""
    files = await make_files(rows=100, settle=timedelta(minutes=10))
    await insert_rows(db_url, "files", _rows(range(101, 106), _naive_utc()))
    await insert_rows(db_url, "files", _rows(range(106, 111), _naive_utc(-timedelta(hours=1))))

    async with inventory.lease("ooo", files, max_count=60) as first:
        pass
    async with inventory.lease("ooo", files, max_count=60) as second:
        pass
    assert [(b.meta_id_start, b.meta_id_end) for b in (first, second)] == [(1, 60), (61, 100)]
    assert await inventory.acquire("ooo", files) is None
    assert await inventory.plan("ooo", files) == []

    await fetch_all(
        db_url,
        "UPDATE files SET imported = :t WHERE id BETWEEN 101 AND 105",
        t=_naive_utc(-timedelta(hours=1)),
    )
    async with inventory.lease("ooo", files, max_count=60) as late:
        assert (late.meta_id_start, late.meta_id_end, late.count) == (101, 110, 10)
        assert [r["id"] for r in await late.items()] == list(range(101, 111))


async def test_without_settle_young_rows_go_out_at_once(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    await insert_rows(db_url, "files", _rows(range(11, 16), _naive_utc()))
    async with inventory.lease("eager", files) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (1, 15)


def test_settle_needs_a_timestamp_column() -> None:
    with pytest.raises(pbi.InvalidArgument, match="timestamp"):
        pbi.MetaTable("files", settle=timedelta(seconds=1))


# -- audit ------------------------------------------------------------------------------------


async def test_audit_finds_ranges_whose_rows_changed_and_only_those(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=400)
    await fetch_all(db_url, "DELETE FROM files WHERE id IN (50, 51)")  # committed late
    for _ in range(4):
        async with inventory.lease("au", files, max_count=100):
            pass  # 1..102, 103..202, 203..302, 303..400
    ranges = sorted((a.meta_id_start, a.meta_id_end) for a in await inventory.batches("au"))
    assert ranges == [(1, 102), (103, 202), (203, 302), (303, 400)]
    assert await inventory.audit("au") == []

    await insert_rows(db_url, "files", _rows(range(50, 52), _naive_utc()))  # late rows
    await fetch_all(db_url, "DELETE FROM files WHERE id = 150")  # a deleted row
    await fetch_all(db_url, "UPDATE files SET size_in_bytes = size_in_bytes + 1 WHERE id = 250")

    findings = await inventory.audit("au")
    assert [(f.attempt.meta_id_start, f.attempt.meta_id_end) for f in findings] == [
        (1, 102),
        (103, 202),
        (203, 302),
    ]
    for finding in findings:
        a = finding.attempt
        assert a.job == "au" and a.status is pbi.Status.SUCCEEDED
        assert (finding.count, finding.weight) == await _range_now(
            db_url, a.meta_id_start, a.meta_id_end
        )
    late, deleted, heavier = findings
    assert (late.attempt.count, late.count) == (100, 102)
    assert (deleted.attempt.count, deleted.count) == (100, 99)
    assert heavier.count == heavier.attempt.count == 100
    assert heavier.weight == heavier.attempt.weight + 1
    assert "au" in repr(late) and "[1, 102]" in repr(late)


async def test_audit_ignores_running_and_failed_ranges(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=300)
    async with inventory.lease("au2", files, max_count=100):
        pass
    with pytest.raises(RuntimeError):
        async with inventory.lease("au2", files, max_count=100):
            raise RuntimeError("boom")
    held = await inventory.acquire("au2", files, max_count=100)  # the retry of 101..200
    assert held is not None
    await fetch_all(db_url, "DELETE FROM files WHERE id IN (10, 110)")
    (finding,) = await inventory.audit("au2")
    assert (finding.attempt.meta_id_start, finding.count) == (1, 99)
    await held.success()
    assert [f.attempt.meta_id_start for f in await inventory.audit("au2")] == [1, 101]


async def test_audit_of_a_filtered_job_from_another_inventory(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """Only rows that pass the job's filter count; the CLI's fresh Inventory knows it."""
    files = await make_files(rows=200, where={"kind": "csv"})
    await fetch_all(db_url, "DELETE FROM files WHERE id IN (41, 42, 141)")
    for _ in range(2):
        async with inventory.lease("auf", files, max_count=50):
            pass  # csv rows are the odd ids
    json_row = {"id": 42, "size_in_bytes": 5, "kind": "json", "imported": _naive_utc()}
    await insert_rows(db_url, "files", [json_row])  # filtered out: changes nothing
    assert await inventory.audit("auf") == []
    await insert_rows(db_url, "files", _rows(range(141, 142), _naive_utc()))  # csv, late

    async with pbi.Inventory(db_url) as operator:
        (finding,) = await operator.audit("auf")
    start, end = finding.attempt.meta_id_start, finding.attempt.meta_id_end
    assert start <= 141 <= end
    assert (finding.count, finding.weight) == await _range_now(
        db_url, start, end, "AND kind = 'csv'"
    )
    assert finding.count == finding.attempt.count + 1


async def test_audit_recounts_with_one_grouped_query_per_chunk(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=300)
    ranges = 60
    for _ in range(ranges):
        async with inventory.lease("chunky", files, max_count=5):
            pass
    await fetch_all(db_url, "DELETE FROM files WHERE id IN (3, 298)")

    with statements(inventory) as seen:
        findings = await inventory.audit("chunky")
    assert [f.attempt.meta_id_start for f in findings] == [1, 296]
    on_files = [s for s in seen if "files" in s and "inventory" not in s]
    assert len(on_files) == 1, on_files  # one recount for all 60 ranges, not one per range
    assert len(seen) < 10, seen
