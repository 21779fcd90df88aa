"""``make bench-cluster``: what leasing on a cluster costs, with 1, 2 and 4 workers.

Three patterns on one PostgreSQL inventory, each with a 1000-row count cap:

- ``dask``: ``run_on_dask`` on a ``LocalCluster`` of N process workers (one thread each);
  every worker leases, reads its range's rows and settles on its own.
- ``spark executors``: ``run_on_executors`` with N tasks on ``local[N]``; each task leases,
  reads and settles inside ``mapPartitions``.
- ``spark driver``: ``run_on_driver`` on ``local[N]``; the driver leases one range at a time,
  builds a DataFrame of its rows and writes it as parquet, then settles.

The worker patterns run twice: with no work beyond reading the rows (``work_ms`` 0: the
cost of the pattern itself) and with 200 ms of sleep per batch standing for I/O-bound work
on the assets. Each measured job is preceded by an untimed warm-up job (worker start,
imports, connections) on the same cluster. ``leases_per_s`` and ``rows_per_s`` are
succeeded batches and their rows over the measured job's wall time; ``start_s`` is the
cluster or session start (the first SparkSession also starts the JVM; later ones reuse it).
Output: a markdown table on stdout and in ``results/cluster.md``, the numbers in
``results/cluster.json``.

Usage: ``python -m benchmarks.cluster [--workers 1,2,4] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pybatchintory as pbi

from benchmarks._cluster_work import read_rows, write_parquet
from benchmarks._db import create_files, fresh_database

RESULTS = Path(__file__).parent / "results"
FILES = pbi.MetaTable("files", weight="size_in_bytes")
COUNT = 1000
WORK_MS = (0, 200)


class Plan:
    """How many batches each measurement takes; every job starts at id 1 of its own name."""

    def __init__(self, quick: bool) -> None:
        self.overhead = 100 if quick else 600  # batches with work_ms 0
        self.working = 20 if quick else 60  # batches with work_ms 200
        self.driver = 8 if quick else 30  # driver-side parquet writes

    def batches(self, work_ms: int) -> int:
        return self.overhead if work_ms == 0 else self.working

    @property
    def rows(self) -> int:
        return max(self.overhead, self.working, self.driver) * COUNT


def _row(
    pattern: str, workers: int, work_ms: int, start: float, batches: int, rows: int, took: float
) -> dict[str, Any]:
    return {
        "pattern": pattern,
        "workers": workers,
        "work_ms": work_ms,
        "start_s": round(start, 2),
        "batches": batches,
        "rows": rows,
        "seconds": round(took, 2),
        "leases_per_s": round(batches / took, 1),
        "rows_per_s": round(rows / took),
    }


def _limits(batches: int) -> dict[str, int]:
    return {"max_count": COUNT, "id_end": batches * COUNT}


def _timed(run: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = run(*args, **kwargs)
    return result, time.perf_counter() - began


def bench_dask(url: str, workers: int, plan: Plan) -> list[dict[str, Any]]:
    from distributed import Client, LocalCluster

    from pybatchintory.integrations.dask import run_on_dask

    rows = []
    began = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        start = time.perf_counter() - began
        run_on_dask(client, f"warm_dask_{workers}", FILES, read_rows, url=url, **_limits(workers))
        for work_ms in WORK_MS:
            func = functools.partial(read_rows, pause=work_ms / 1000)
            job = f"dask_{workers}_{work_ms}"
            limits = _limits(plan.batches(work_ms))
            run, took = _timed(run_on_dask, client, job, FILES, func, url=url, **limits)
            rows.append(_row("dask", workers, work_ms, start, run.succeeded, run.rows, took))
    return rows


def _session(workers: int) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master(f"local[{workers}]")
        .appName("pybatchintory-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("FATAL")
    return session


def bench_spark(url: str, workers: int, plan: Plan, out: str) -> list[dict[str, Any]]:
    from pybatchintory.integrations.spark import run_on_driver, run_on_executors

    began = time.perf_counter()
    spark = _session(workers)
    spark.sparkContext.parallelize(range(workers), workers).count()
    start = time.perf_counter() - began
    rows: list[dict[str, Any]] = []
    try:
        run_on_executors(
            spark, f"warm_exec_{workers}", FILES, read_rows, url=url, partitions=workers,
            **_limits(workers),
        )  # fmt: skip
        for work_ms in WORK_MS:
            func = functools.partial(read_rows, pause=work_ms / 1000)
            job = f"exec_{workers}_{work_ms}"
            limits = _limits(plan.batches(work_ms))
            reports, took = _timed(
                run_on_executors, spark, job, FILES, func, url=url, partitions=workers, **limits
            )
            succeeded = sum(r.succeeded for r in reports)
            done_rows = sum(r.rows for r in reports)
            rows.append(
                _row("spark executors", workers, work_ms, start, succeeded, done_rows, took)
            )

        write = write_parquet(f"{out}/driver_{workers}")
        run_on_driver(spark, f"warm_driver_{workers}", FILES, write, url=url, **_limits(2))
        done, took = _timed(
            run_on_driver, spark, f"driver_{workers}", FILES, write, url=url,
            **_limits(plan.driver),
        )  # fmt: skip
        rows.append(
            _row("spark driver", workers, 0, start, len(done), sum(b.rows for b in done), took)
        )
    finally:
        spark.stop()
    return rows


KEYS = ("pattern", "work_ms", "workers", "leases_per_s", "rows_per_s", "batches", "seconds",
        "start_s")  # fmt: skip


def _cell(key: str, value: Any) -> str:
    if key in {"rows_per_s", "batches"}:
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table, grouped by pattern and work."""
    lines = ["| " + " | ".join(KEYS) + " |", "|" + "---|" * len(KEYS)]
    ordered = sorted(rows, key=lambda r: (r["pattern"], r["work_ms"], r["workers"]))
    lines += ["| " + " | ".join(_cell(k, r[k]) for k in KEYS) + " |" for r in ordered]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Leasing on Dask and Spark: leases/s, rows/s.")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="fewer batches per measurement")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    plan = Plan(args.quick)
    began = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pbi-bench-cluster-") as workdir:
        db = asyncio.run(fresh_database("postgres", workdir))
        try:
            asyncio.run(create_files(db.url, "postgres", plan.rows))
            for workers in counts:
                for part in (bench_dask(db.url, workers, plan),
                             bench_spark(db.url, workers, plan, workdir)):  # fmt: skip
                    results.extend(part)
                    print(table(part), flush=True)
        finally:
            asyncio.run(db.drop())
    took = time.perf_counter() - began
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    header = f"{stamp}, {machine}, PostgreSQL inventory, count cap {COUNT}, {took:.0f} s"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.md").write_text(f"{header}\n\n{table(results)}\n")
    (RESULTS / "cluster.json").write_text(
        json.dumps(
            {"when": stamp, "machine": machine, "seconds": round(took), "results": results},
            indent=2,
        )
        + "\n"
    )
    print(f"\n{header}\n\n{table(results)}")


if __name__ == "__main__":
    main()
