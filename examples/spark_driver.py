"""Spark, both ways: lease on the driver and write each range out, or lease in executors.

``write_ranges`` (driver-side leasing, the seed's settings): the driver leases a range, builds
a DataFrame of exactly its metadata rows (read by pybatchintory on the driver, shipped with
``spark.createDataFrame``: Spark does not read the database), writes it as parquet to a
directory of its own, and records success only after the write committed.

``count_in_executors`` (executor-side leasing): four Spark tasks each lease, process and
settle ranges inside ``mapPartitions``; the inventory must be a server database.

Run with ``PYBATCHINTORY_INVENTORY_URL`` and ``PYBATCHINTORY_META_TABLE=files`` set:
``python -m examples.spark_driver /tmp/spark-out``
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pybatchintory import MetaTable, Settings
from pybatchintory.integrations.spark import (
    DriverBatch,
    LoopReport,
    range_path,
    run_on_driver,
    run_on_executors,
)
from pybatchintory.sync import SyncBatch


def session(master: str = "local[4,2]") -> Any:
    """A local SparkSession whose Python workers use this interpreter."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("pybatchintory-example")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )


def write_ranges(spark: Any, job: str, out: str, *, max_weight: int) -> list[DriverBatch]:
    """Driver-side: one parquet directory per leased range, settled after the write."""
    settings = Settings()
    files = MetaTable(settings.meta_table or "files", weight=settings.meta_weight)

    def write(frame: Any, batch: SyncBatch) -> dict[str, int]:
        frame.write.mode("overwrite").parquet(range_path(out, batch))
        return {"rows": int(batch.count)}

    return run_on_driver(spark, job, files, write, max_weight=max_weight)


def count_bytes(batch: SyncBatch) -> dict[str, int]:
    """Runs in a Spark executor: sum the sizes of the range's files."""
    return {"bytes": sum(int(row["size_in_bytes"]) for row in batch.items)}


def count_in_executors(spark: Any, url: str, job: str) -> list[LoopReport]:
    """Executor-side: four tasks lease and settle on their own (a server inventory)."""
    files = MetaTable("files", weight="size_in_bytes")
    return run_on_executors(spark, job, files, count_bytes, url=url, partitions=4, max_count=500)


def main() -> None:
    """Write every range of ``spark_example`` to the directory given on the command line."""
    spark = session()
    try:
        done = write_ranges(spark, "spark_example", sys.argv[1], max_weight=50_000)
    finally:
        spark.stop()
    print(f"wrote {sum(b.rows for b in done)} rows in {len(done)} ranges")


if __name__ == "__main__":
    main()
