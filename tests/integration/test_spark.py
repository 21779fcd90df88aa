"""The Spark integration on a real local SparkSession (``local[4,2]``: four cores, a task
may fail twice), one session for the module: the JVM start is the expensive part.

Driver-side: one DataFrame and one parquet write per leased range, settled after the write
committed. Executor-side: lease loops inside ``mapPartitions`` against PostgreSQL. The ledger
is read with plain SQL: exact cover, failures recorded with the exception, ranges retried by
Spark's task retry or by the next run, never lost or done twice.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pybatchintory as pbi
from pybatchintory.sync import SyncBatch

from tests.conftest import REQUIRED, DatabaseFactory
from tests.helpers import create_meta_table, fetch_all
from tests.integration._cluster_jobs import (
    SUCCEEDED_SQL,
    assert_exact_cover,
    count_rows,
    fail_always_on,
    fail_once_on,
    raising_at,
)

pyspark = pytest.importorskip("pyspark")

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from pybatchintory.integrations.spark import (  # noqa: E402
    range_path,
    run_on_driver,
    run_on_executors,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.timeout(240)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        message = "Spark needs a Java runtime (17 for Spark 4): no java on PATH, no JAVA_HOME"
        if "spark" in REQUIRED:
            pytest.fail(f"{message} (required by PYBATCHINTORY_TEST_REQUIRE)")
        pytest.skip(message)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[4,2]")
        .appName("pybatchintory-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("FATAL")
    yield session
    session.stop()


def _sql(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    return asyncio.run(fetch_all(url, sql, **params))


def _attempts_of(url: str, job: str, meta_id: int) -> list[dict[str, Any]]:
    return _sql(
        url,
        "SELECT attempt, status, error_type, error_message FROM inventory "
        "WHERE job = :job AND :meta_id BETWEEN meta_id_start AND meta_id_end ORDER BY attempt",
        job=job,
        meta_id=meta_id,
    )


def _writer(base: Path, check: Any = None) -> Any:
    def write(frame: DataFrame, batch: SyncBatch) -> dict[str, int]:
        if check is not None:
            frame = frame.withColumn("id", F.udf(check, "long", useArrow=False)("id"))
        frame.write.mode("overwrite").parquet(range_path(str(base), batch))
        return {"written": int(batch.count)}

    return write


def _written_ids(spark: SparkSession, base: Path) -> list[int]:
    return sorted(int(row["id"]) for row in spark.read.parquet(str(base)).select("id").collect())


# -- driver-side leasing ---------------------------------------------------------------


@pytest.mark.sqlite
def test_driver_writes_each_range_once_and_settles_after_the_write(
    spark: SparkSession, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("sqlite")
    asyncio.run(create_meta_table(url, rows=1200))
    out = tmp_path / "out"
    done = run_on_driver(spark, "spark_driver", FILES, _writer(out), url=url, max_count=400)
    assert [(b.meta_id_start, b.meta_id_end, b.rows) for b in done] == [
        (1, 400, 400),
        (401, 800, 400),
        (801, 1200, 400),
    ]
    assert _written_ids(spark, out) == list(range(1, 1201))
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_driver"), 1, 1200)
    results = _sql(url, "SELECT job_result FROM inventory WHERE job = 'spark_driver'")
    assert all('"written": 400' in str(r["job_result"]) for r in results)


@pytest.mark.postgres
def test_driver_a_task_failing_once_is_absorbed_by_spark_s_task_retry(
    spark: SparkSession, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=600))
    out = tmp_path / "out"
    check = raising_at(250, flag_dir=str(tmp_path))
    run_on_driver(spark, "spark_retry", FILES, _writer(out, check), url=url, max_count=300)
    assert (tmp_path / "udf-250").exists(), "the task never failed"
    statuses = _sql(url, "SELECT status, attempt FROM inventory WHERE job = 'spark_retry'")
    assert {(r["status"], r["attempt"]) for r in statuses} == {("succeeded", 1)}
    assert _written_ids(spark, out) == list(range(1, 601))


@pytest.mark.postgres
def test_driver_a_failed_write_records_spark_s_exception_and_the_next_run_retries(
    spark: SparkSession, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=600))
    out = tmp_path / "out"
    with pytest.raises(Exception, match="corrupt") as raised:
        run_on_driver(
            spark, "spark_fail", FILES, _writer(out, raising_at(450)), url=url, max_count=300
        )
    failed = _attempts_of(url, "spark_fail", 450)
    assert [(r["attempt"], r["status"]) for r in failed] == [(1, "failed")]
    spark_error = type(raised.value)
    assert spark_error.__module__.startswith("pyspark"), spark_error  # Spark's, not ours
    assert failed[0]["error_type"] == f"{spark_error.__module__}.{spark_error.__qualname__}"
    assert "corrupt" in failed[0]["error_message"]

    done = run_on_driver(spark, "spark_fail", FILES, _writer(out), url=url, max_count=300)
    assert [(b.meta_id_start, b.attempt) for b in done] == [(301, 2)]
    assert [(r["attempt"], r["status"]) for r in _attempts_of(url, "spark_fail", 450)] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_fail"), 1, 600)
    assert _written_ids(spark, out) == list(range(1, 601))


# -- executor-side leasing -------------------------------------------------------------


@pytest.mark.postgres
def test_executors_lease_in_their_own_processes_and_cover_every_id_once(
    spark: SparkSession, any_db_url_factory: DatabaseFactory
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=4000))
    reports = run_on_executors(
        spark,
        "spark_exec",
        FILES,
        functools.partial(count_rows, pause=0.05),
        url=url,
        partitions=4,
        max_count=100,
        poll_interval=0.2,
    )
    assert len(reports) == 4
    assert sum(r.succeeded for r in reports) == 40 and sum(r.rows for r in reports) == 4000
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_exec"), 1, 4000)
    owners = _sql(url, "SELECT DISTINCT owner FROM inventory WHERE job = 'spark_exec'")
    pids = {int(r["owner"].split(":")[1]) for r in owners}
    assert os.getpid() not in pids, "leased on the driver"
    assert len(pids) > 1, "every task ran in one Python worker"


@pytest.mark.postgres
def test_executors_a_failed_task_is_recorded_and_retried_by_spark(
    spark: SparkSession, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=1000))
    func = functools.partial(fail_once_on, str(tmp_path), 420)
    # One task: only Spark's retry of that task can lease the failed range again.
    reports = run_on_executors(
        spark, "spark_task_retry", FILES, func, url=url, partitions=1, max_count=100
    )
    # The first task attempt settled 1..400 and failed on 401..500; the retried task
    # leased 401..500 again (attempt 2) and went on to the end.
    assert [r.succeeded for r in reports] == [6]
    assert [
        (r["attempt"], r["status"], r["error_type"])
        for r in _attempts_of(url, "spark_task_retry", 420)
    ] == [(1, "failed", "RuntimeError"), (2, "succeeded", None)]
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_task_retry"), 1, 1000)


@pytest.mark.postgres
def test_executors_a_range_that_fails_every_task_retry_is_done_by_the_next_run(
    spark: SparkSession, any_db_url_factory: DatabaseFactory
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=1000))
    broken = functools.partial(fail_always_on, 420)
    with pytest.raises(Exception, match="corrupt"):
        run_on_executors(
            spark,
            "spark_next_run",
            FILES,
            broken,
            url=url,
            partitions=2,
            max_count=100,
            lease_ttl=3.0,
            max_attempts=10,
            poll_interval=0.2,
        )
    failures = [r for r in _attempts_of(url, "spark_next_run", 420) if r["status"] == "failed"]
    assert len(failures) >= 2, "Spark retried the task, the range failed again"
    assert {r["error_type"] for r in failures} == {"RuntimeError"}

    reports = run_on_executors(
        spark,
        "spark_next_run",
        FILES,
        count_rows,
        url=url,
        partitions=2,
        max_count=100,
        lease_ttl=3.0,
        max_attempts=10,
        poll_interval=0.2,
    )
    assert reports
    attempts = _attempts_of(url, "spark_next_run", 420)
    assert attempts[-1]["status"] == "succeeded"
    assert all(r["status"] != "succeeded" for r in attempts[:-1])
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_next_run"), 1, 1000)
    running = _sql(
        url,
        "SELECT count(*) AS n FROM inventory WHERE job = 'spark_next_run' AND status = 'running'",
    )
    assert running[0]["n"] == 0


@pytest.mark.sqlite
def test_executors_refuse_an_sqlite_inventory_with_the_reason(
    spark: SparkSession, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}"
    with pytest.raises(pbi.InvalidArgument, match="cannot share an embedded SQLite file"):
        run_on_executors(spark, "x", FILES, count_rows, url=url)
    postgres = "postgresql+asyncpg://postgres@127.0.0.1:5432/never_used"
    with pytest.raises(pbi.InvalidArgument, match="max_weight"):
        run_on_executors(spark, "x", FILES, count_rows, url=postgres, max_weight=-1)
    with pytest.raises(pbi.InvalidArgument, match="partitions"):
        run_on_executors(spark, "x", FILES, count_rows, url=postgres, partitions=0)
    assert not (tmp_path / "inventory.db").exists(), "something was written"


# -- the example -----------------------------------------------------------------------


@pytest.mark.postgres
def test_the_spark_example_both_ways(
    spark: SparkSession,
    any_db_url_factory: DatabaseFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from examples import spark_driver

    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=3000))
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", url)
    monkeypatch.setenv("PYBATCHINTORY_META_TABLE", "files")
    monkeypatch.setenv("PYBATCHINTORY_META_WEIGHT", "size_in_bytes")
    out = tmp_path / "out"
    done = spark_driver.write_ranges(spark, "spark_example", str(out), max_weight=1_000_000)
    assert sum(b.rows for b in done) == 3000
    assert _written_ids(spark, out) == list(range(1, 3001))
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="spark_example"), 1, 3000)

    reports = spark_driver.count_in_executors(spark, url, "spark_example_exec")
    assert sum(r.rows for r in reports) == 3000
    total = _sql(
        url,
        "SELECT sum(CAST(job_result->>'bytes' AS BIGINT)) AS b FROM inventory "
        "WHERE job = 'spark_example_exec' AND status = 'succeeded'",
    )[0]["b"]
    assert total == _sql(url, "SELECT sum(size_in_bytes) AS b FROM files")[0]["b"]
