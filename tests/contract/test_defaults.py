"""The async top level ``pbi.lease``/``pbi.acquire``/``pbi.leases``, configured from
``PYBATCHINTORY_*`` settings; the seed's synchronous top-level calls refuse a running loop."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio.to_thread
import pytest

import pybatchintory as pbi
import pybatchintory.sync

from tests.helpers import create_meta_table, default_size, fetch_all

ROWS = 200


@pytest.fixture
async def seed_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """Settings for the default inventory; ``pbi.shutdown()`` after the test."""
    for name in ("META_URL", "META_ID", "META_TIMESTAMP", "TABLE_PREFIX", "CODE_VERSION"):
        monkeypatch.delenv(f"PYBATCHINTORY_{name}", raising=False)
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", db_url)
    monkeypatch.setenv("PYBATCHINTORY_META_TABLE", "files")
    monkeypatch.setenv("PYBATCHINTORY_META_WEIGHT", "size_in_bytes")
    monkeypatch.setenv("PYBATCHINTORY_OWNER", "seed-worker")
    await create_meta_table(db_url, rows=ROWS)
    try:
        yield db_url
    finally:
        await pbi.shutdown()


def _fits(start: int, cap: int) -> int:
    """The last id of a maximal range from ``start`` whose summed size stays within ``cap``."""
    total, end = 0, start - 1
    while end < ROWS and total + default_size(end + 1) <= cap:
        end += 1
        total += default_size(end)
    return end


async def test_lease_with_the_seed_weight_spelling(seed_env: str) -> None:
    async with pbi.lease("seed", weight=3_000) as batch:
        assert (batch.meta_table, batch.meta_id_start) == ("files", 1)
        assert batch.meta_id_end == _fits(1, 3_000)
        assert batch.weight == sum(default_size(i) for i in range(1, batch.meta_id_end + 1))
        batch.result = {"rows": len(await batch.items())}
    rows = await fetch_all(
        seed_env, "SELECT status, owner, job_result FROM inventory WHERE job = 'seed'"
    )
    assert [(r["status"], r["owner"]) for r in rows] == [("succeeded", "seed-worker")]
    async with pbi.lease("seed", weight=3_000) as second:
        assert second.meta_id_start == batch.meta_id_end + 1


async def test_lease_of_a_window_with_count(seed_env: str) -> None:
    async with pbi.lease("window", id_start=50, id_end=120, count=30) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (50, 79)
    async with pbi.lease("window", id_start=50, id_end=120, max_count=100) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (80, 120)
    with pytest.raises(pbi.NoBatchAvailable):
        async with pbi.lease("window", id_start=50, id_end=120):
            pass


async def test_acquire_hands_out_a_window_until_it_is_done(seed_env: str) -> None:
    ranges: list[tuple[int, int]] = []
    while (
        batch := await pbi.acquire("backfill", id_start=11, id_end=60, weight=5_000)
    ) is not None:
        assert batch.weight <= 5_000 or batch.oversized
        ranges.append((batch.meta_id_start, batch.meta_id_end))
        await batch.success()
    assert ranges[0][0] == 11 and ranges[-1][1] == 60
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1
    assert [r[1] for r in ranges] == [min(_fits(s, 5_000), 60) for s, _ in ranges]


async def test_leases_honours_iterations(seed_env: str) -> None:
    seen: list[pbi.Batch] = []
    async for batch in pbi.leases("many", weight=2_000, iterations=3):
        async with batch:
            seen.append(batch)
    assert len(seen) == 3
    assert [b.meta_id_start for b in seen] == [1, seen[0].meta_id_end + 1, seen[1].meta_id_end + 1]
    statuses = await fetch_all(seed_env, "SELECT status FROM inventory WHERE job = 'many'")
    assert [r["status"] for r in statuses] == ["succeeded"] * 3

    rest = [b async for b in pbi.leases("many", count=100)]
    for batch in rest:
        await batch.success()
    assert rest[0].meta_id_start == seen[-1].meta_id_end + 1
    assert rest[-1].meta_id_end == ROWS


async def test_the_default_inventory_takes_its_limits_from_the_settings(
    seed_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYBATCHINTORY_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PYBATCHINTORY_LEASE_TTL", "42")
    monkeypatch.setenv("PYBATCHINTORY_CODE_VERSION", "v1.2.3")
    with pytest.raises(ValueError, match="bad row"):
        async with pbi.lease("strict", count=10) as batch:
            raise ValueError("bad row")
    rows = await fetch_all(
        seed_env, "SELECT status, dead, code_version, owner FROM inventory WHERE job = 'strict'"
    )
    assert [(r["status"], bool(r["dead"]), r["code_version"]) for r in rows] == [
        ("failed", True, "v1.2.3")
    ]
    async with pbi.Inventory(seed_env) as operator:
        (attempt,) = await operator.batches("strict")
    assert attempt.id == batch.id
    assert attempt.expires_at is not None and attempt.processing_start is not None
    assert attempt.expires_at - attempt.processing_start == timedelta(seconds=42)
    async with pbi.lease("strict", count=10) as after:
        assert after.meta_id_start == 11  # the dead range waits for an operator


async def test_an_explicit_source_wins_over_the_settings(seed_env: str) -> None:
    await create_meta_table(seed_env, "other", rows=30, start_id=1000)
    other = pbi.MetaTable("other", weight="size_in_bytes")
    async with pbi.lease("explicit", other, weight=10**9) as batch:
        assert (batch.meta_table, batch.meta_id_start, batch.meta_id_end) == ("other", 1000, 1029)
    batch2 = await pbi.acquire("explicit2", "other", count=5)
    assert batch2 is not None and (batch2.meta_table, batch2.meta_id_end) == ("other", 1004)
    await batch2.success()


async def test_the_metadata_table_may_live_in_another_database(
    seed_env: str, meta_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_meta_table(meta_db_url, "files", rows=40, start_id=500)
    monkeypatch.setenv("PYBATCHINTORY_META_URL", meta_db_url)
    async with pbi.lease("remote", count=25) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (500, 524)
        assert [r["id"] for r in await batch.items()] == list(range(500, 525))
    rows = await fetch_all(seed_env, "SELECT meta_table FROM inventory WHERE job = 'remote'")
    assert [r["meta_table"] for r in rows] == ["files"]


async def test_shutdown_releases_what_was_not_settled(seed_env: str) -> None:
    batch = await pbi.acquire("open", count=10)
    assert batch is not None
    await pbi.shutdown()
    rows = await fetch_all(seed_env, "SELECT status FROM inventory WHERE job = 'open'")
    assert [r["status"] for r in rows] == ["released"]
    again = await pbi.acquire("open", count=10)  # a new default inventory
    assert again is not None and (again.meta_id_start, again.attempt) == (1, 2)
    await again.success()


async def test_both_spellings_of_one_cap_are_refused(seed_env: str) -> None:
    with pytest.raises(pbi.InvalidArgument, match="weight"):
        await pbi.acquire("x", weight=10, max_weight=10)
    with pytest.raises(pbi.InvalidArgument, match="count"):
        pbi.lease("x", count=10, max_count=10)


async def test_without_a_configured_table_a_source_is_required(
    seed_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYBATCHINTORY_META_TABLE")
    with pytest.raises(pbi.InvalidArgument, match="PYBATCHINTORY_META_TABLE"):
        await pbi.acquire("x", weight=10)
    with pytest.raises(pbi.InvalidArgument, match="PYBATCHINTORY_META_TABLE"):
        [b async for b in pbi.leases("x", weight=10)]


async def test_the_seeds_sync_calls_refuse_a_running_loop(seed_env: str) -> None:
    """Inside a coroutine the sync calls name the async spelling and write nothing."""
    assert pbi.acquire_batch is pbi.sync.acquire_batch
    assert pbi.acquire_batches is pbi.sync.acquire_batches
    with pytest.raises(pbi.EventLoopRunning, match=r"await pbi\.acquire\("):
        pbi.acquire_batch(job="in_loop", weight=10)
    with pytest.raises(pbi.EventLoopRunning, match=r"pbi\.leases\("):
        pbi.acquire_batches(job="in_loop", weight=10, iterations=2)
    async with pbi.Inventory(seed_env) as inv:
        assert await inv.status() == []


# -- settings reach every call ----------------------------------------------------------------


async def test_a_named_source_takes_its_columns_from_the_settings(
    seed_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_meta_table(seed_env, "other", rows=30, start_id=1000)
    async with pbi.lease("named", "other", weight=3_000) as batch:
        assert batch.meta_table == "other" and batch.meta_id_start == 1000
        assert 0 < batch.weight <= 3_000
    monkeypatch.setenv("PYBATCHINTORY_META_TIMESTAMP", "no_such_column")
    await pbi.shutdown()  # the next default inventory reads the changed settings
    with pytest.raises(pbi.UnknownColumn, match="no_such_column"):
        await pbi.acquire("named_ts", "other", count=5)


async def test_settings_place_a_meta_table_without_url_and_reach_the_reads(
    seed_env: str, meta_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_meta_table(meta_db_url, "remote_files", rows=40, start_id=500)
    monkeypatch.setenv("PYBATCHINTORY_META_URL", meta_db_url)
    remote = pbi.MetaTable("remote_files", weight="size_in_bytes")  # no url=
    async with pbi.lease("remote_table", remote, count=25) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (500, 524)
    async with pbi.lease("remote_named", "remote_files", count=10) as batch:
        assert (batch.meta_id_start, batch.meta_id_end) == (500, 509)

    async with pbi.Inventory.from_settings() as inv:
        backlog = await inv.backlog("remote_table")
        assert backlog.count == 15
        assert backlog.weight == sum(default_size(i) for i in range(525, 540))
        assert (await inv.backlog("remote_named")).count == 30

    def sync_backlog() -> int:
        sync = pybatchintory.sync.SyncInventory.from_settings()
        try:
            return sync.backlog("remote_table").count
        finally:
            sync.close()

    assert await anyio.to_thread.run_sync(sync_backlog) == 15

    # A plain Inventory has no settings: it says how to reach the other database.
    async with pbi.Inventory(seed_env) as plain:
        with pytest.raises(pbi.InvalidArgument, match="PYBATCHINTORY_META_URL"):
            await plain.backlog("remote_table")


async def test_a_name_that_no_table_resolves_is_refused_before_anything_is_written(
    seed_env: str,
) -> None:
    with pytest.raises(pbi.UnknownTable, match="'nowhere' does not exist in"):
        await pbi.acquire("lost", "nowhere", count=5)
    async with pbi.Inventory(seed_env) as inv:
        assert [s.job for s in await inv.status()] == []
