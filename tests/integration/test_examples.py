"""The examples in examples/ run as documented.

The Dask example runs on a real ``LocalCluster`` here; the Spark example runs in
``test_spark.py``, on that module's SparkSession (one JVM start for all Spark tests).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import anyio.to_thread
import pytest

import pybatchintory.sync

from examples import dask_driver, recursion, seed_script
from tests.helpers import create_meta_table, fetch_all

ROWS = 6000


@pytest.fixture
def sync_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", db_url)
    monkeypatch.setenv("PYBATCHINTORY_META_TABLE", "files")
    monkeypatch.setenv("PYBATCHINTORY_META_WEIGHT", "size_in_bytes")
    yield db_url
    pybatchintory.sync.shutdown()


async def _succeeded_ranges(url: str, job: str) -> list[tuple[int, int, int]]:
    rows = await fetch_all(
        url,
        "SELECT meta_id_start, meta_id_end, count FROM inventory "
        "WHERE job = :job AND status = 'succeeded' ORDER BY meta_id_start",
        job=job,
    )
    return [(int(r["meta_id_start"]), int(r["meta_id_end"]), int(r["count"])) for r in rows]


def _assert_exact_cover(ranges: list[tuple[int, int, int]], first: int, last: int) -> None:
    assert ranges, "nothing was processed"
    assert ranges[0][0] == first
    assert ranges[-1][1] == last
    for (_, end, _), (start, _, _) in itertools.pairwise(ranges):
        assert start == end + 1, "ranges overlap or leave a gap"


async def test_seed_spelling_and_process(sync_env: str) -> None:
    await create_meta_table(sync_env, rows=500)

    def seed_usage() -> tuple[int, list[int]]:
        from pybatchintory.sync import acquire_batch, acquire_batches

        batch = acquire_batch(job="incremental_job", weight=10)
        assert batch is not None
        first = len(batch.items)
        batch.success()
        counts = [
            b.process(lambda items, factor: len(items) * factor, (2,), {})
            for b in acquire_batches(job="incremental_job", count=100, iterations=3)
        ]
        failing = acquire_batch(job="incremental_job", count=10)
        assert failing is not None
        try:
            raise RuntimeError("cluster lost")
        except RuntimeError as exc:
            failing.error(exc)
        return first, counts

    first, counts = await anyio.to_thread.run_sync(seed_usage)
    assert first >= 1
    assert counts == [200, 200, 200]
    rows = await fetch_all(
        sync_env,
        "SELECT status, job_result, error_type FROM inventory WHERE job = 'incremental_job' "
        "ORDER BY id",
    )
    assert [r["status"] for r in rows] == ["succeeded"] * 4 + ["failed"]
    assert rows[-1]["error_type"] == "RuntimeError"


async def test_seed_script_with_top_level_sync_calls(sync_env: str) -> None:
    await create_meta_table(sync_env, rows=300)
    done = await anyio.to_thread.run_sync(seed_script.main)
    rows = await fetch_all(
        sync_env,
        "SELECT status, job_result, weight FROM inventory WHERE job = 'incremental_job' "
        "ORDER BY id",
    )
    assert len(rows) == done >= 2
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(int(r["weight"]) <= 10_000 for r in rows)
    results = [r["job_result"] for r in rows[1:]]
    results = [json.loads(r) if isinstance(r, str) else r for r in results]
    assert [r["label"] for r in results] == ["kib"] * (done - 1)
    _assert_exact_cover(await _succeeded_ranges(sync_env, "incremental_job"), 1, 300)


@pytest.mark.dask
@pytest.mark.slow
async def test_dask_driver_on_a_local_cluster(db_url: str) -> None:
    pytest.importorskip("distributed")
    await create_meta_table(db_url, rows=ROWS)
    csv = await anyio.to_thread.run_sync(
        lambda: dask_driver.run_driver(db_url, "dask_example", workers=2, max_count=500)
    )
    pybatchintory.sync.shutdown()
    assert csv == ROWS // 2
    _assert_exact_cover(await _succeeded_ranges(db_url, "dask_example"), 1, ROWS)


async def test_recursion_chain_of_three_jobs(db_url: str) -> None:
    await create_meta_table(db_url, rows=ROWS)
    done = await recursion.run_chain(db_url)
    assert done["ingest"] == ROWS // 1000
    assert done["transform"] == 2  # six ingest batches, three per transform batch
    publish = await fetch_all(
        db_url,
        "SELECT job_result FROM inventory WHERE job = 'publish' AND status = 'succeeded'",
    )
    assert publish, "publish saw nothing"
