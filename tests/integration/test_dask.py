"""The Dask integration on a real ``LocalCluster`` with process workers.

Every worker loop leases, processes and settles on its own worker process; the tests read
the ledger with plain SQL: exact cover by succeeded attempts, failures recorded, and the
range of a worker killed with SIGKILL mid-batch expired and retried as attempt 2.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pybatchintory as pbi

from tests.conftest import DatabaseFactory
from tests.helpers import create_meta_table, fetch_all
from tests.integration._cluster_jobs import (
    SUCCEEDED_SQL,
    assert_exact_cover,
    count_rows,
    fail_once_on,
    hang_once_on,
)

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(180)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")


def _cluster(workers: int, threads: int) -> Any:
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=":0",
        worker_dashboard_address=":0",
        silence_logs=50,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes, one thread each, for the whole module."""
    with _cluster(2, 1) as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


def _sql(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    return asyncio.run(fetch_all(url, sql, **params))


def _attempts(url: str, job: str) -> list[dict[str, Any]]:
    return _sql(
        url,
        "SELECT meta_id_start, meta_id_end, attempt, status, owner, error_type "
        "FROM inventory WHERE job = :job ORDER BY meta_id_start, attempt",
        job=job,
    )


def _run(client: Any, url: str, job: str, func: Any, **options: Any) -> Any:
    from pybatchintory.integrations.dask import run_on_dask

    return run_on_dask(client, job, FILES, func, url=url, poll_interval=0.2, **options)


@pytest.mark.postgres
def test_workers_lease_on_their_own_and_cover_every_id_once(
    client: Any, any_db_url_factory: DatabaseFactory
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=3000))
    slow = functools.partial(count_rows, pause=0.05)
    run = _run(client, url, "dask_cover", slow, max_count=100)
    assert run.succeeded == 30 and run.rows == 3000 and run.failed == 0
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="dask_cover"), 1, 3000)
    owners = {row["owner"] for row in _attempts(url, "dask_cover")}
    worker_pids = set(client.run(os.getpid).values())
    assert {int(owner.split(":")[1]) for owner in owners} == worker_pids, owners


@pytest.mark.postgres
def test_a_worker_killed_mid_batch_leaves_a_lease_that_expires_and_is_retried(
    client: Any, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("postgres")
    asyncio.run(create_meta_table(url, rows=2000))
    marker = tmp_path / "inside"
    func = functools.partial(hang_once_on, str(marker), 1050)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["run"] = _run(client, url, "dask_kill", func, max_count=100, lease_ttl=2.0)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "no worker reached the range of id 1050"
        time.sleep(0.05)
    victim = int(marker.read_text())
    assert victim in client.run(os.getpid).values(), "the marker names no worker process"
    os.kill(victim, signal.SIGKILL)
    driver.join(timeout=120)
    assert not driver.is_alive(), "the job did not finish after the kill"
    assert "error" not in outcome, outcome.get("error")

    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="dask_kill"), 1, 2000)
    victim_range = [
        row
        for row in _attempts(url, "dask_kill")
        if row["meta_id_start"] <= 1050 <= row["meta_id_end"]
    ]
    assert [(r["attempt"], r["status"]) for r in victim_range] == [(1, "expired"), (2, "succeeded")]
    assert int(victim_range[0]["owner"].split(":")[1]) == victim
    assert int(victim_range[1]["owner"].split(":")[1]) != victim
    per_id = _sql(
        url,
        "SELECT count(*) AS n FROM files f JOIN inventory i ON i.job = 'dask_kill' "
        "AND i.status = 'succeeded' AND f.id BETWEEN i.meta_id_start AND i.meta_id_end "
        "GROUP BY f.id HAVING count(*) <> 1",
    )
    assert per_id == [], "an id was covered by more or fewer than one succeeded attempt"


@pytest.mark.sqlite
def test_one_process_worker_on_sqlite_records_a_failure_and_retries_it(
    any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    url = any_db_url_factory("sqlite")
    asyncio.run(create_meta_table(url, rows=1000))
    func = functools.partial(fail_once_on, str(tmp_path), 420)
    with _cluster(1, 2) as cluster, distributed.Client(cluster) as sqlite_client:
        run = _run(sqlite_client, url, "dask_sqlite", func, max_count=50)
    assert run.failed == 1 and run.succeeded == 20 and run.rows == 1000
    assert_exact_cover(_sql(url, SUCCEEDED_SQL, job="dask_sqlite"), 1, 1000)
    failed = _sql(
        url,
        "SELECT meta_id_start, attempt, error_type, error_message FROM inventory "
        "WHERE job = 'dask_sqlite' AND status = 'failed'",
    )
    assert [(r["meta_id_start"], r["attempt"], r["error_type"]) for r in failed] == [
        (401, 1, "RuntimeError")
    ]
    assert "transient failure on id 420" in failed[0]["error_message"]
    retried = _sql(
        url,
        "SELECT attempt FROM inventory WHERE job = 'dask_sqlite' AND status = 'succeeded' "
        "AND meta_id_start = 401",
    )
    assert [r["attempt"] for r in retried] == [2]


def test_bad_arguments_raise_before_anything_is_submitted(client: Any) -> None:
    from pybatchintory.integrations.dask import run_on_dask

    with pytest.raises(pbi.InvalidArgument, match="tasks"):
        run_on_dask(client, "x", FILES, count_rows, url="sqlite+aiosqlite://", tasks=0)
    with pytest.raises(pbi.InvalidArgument, match="owner"):
        run_on_dask(client, "x", FILES, count_rows, url="sqlite+aiosqlite://", owner="me")
    with pytest.raises(pbi.InvalidArgument, match="max_count"):
        run_on_dask(client, "x", FILES, count_rows, url="sqlite+aiosqlite://", max_count=0)
    with pytest.raises(pbi.InvalidArgument, match="id_start 9 is after id_end 3"):
        run_on_dask(client, "x", FILES, count_rows, url="sqlite+aiosqlite://", id_start=9, id_end=3)
    with pytest.raises(pbi.InvalidArgument, match="callable"):
        run_on_dask(client, "x", FILES, "not a function", url="sqlite+aiosqlite://")  # type: ignore[arg-type]
