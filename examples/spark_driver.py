"""A Spark-style driver on the sync facade.

The driver leases batches with the seed's spelling and hands each batch's rows to the
cluster. ``submit`` stands for the cluster: with Spark it would be
``spark.createDataFrame(rows).write...`` run from the driver; here any callable that takes
the rows and returns a result will do (the test passes a thread pool).

Run with ``PYBATCHINTORY_INVENTORY_URL`` and ``PYBATCHINTORY_META_TABLE=files`` set:
``python -m examples.spark_driver``
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pybatchintory.sync import acquire_batches

Rows = Sequence[Mapping[str, Any]]


def write_partition(rows: Rows) -> dict[str, int]:
    """What one Spark job would do with a batch: here, sum the sizes."""
    return {"rows": len(rows), "bytes": sum(int(r["size_in_bytes"]) for r in rows)}


def run_driver(
    job: str,
    *,
    weight: int,
    iterations: int | None = None,
    submit: Callable[[Callable[[Rows], dict[str, int]], Rows], dict[str, int]] | None = None,
) -> list[dict[str, int]]:
    """Lease batches of ``job`` one after another and run each on the cluster."""
    run = submit or (lambda func, rows: func(rows))
    results = []
    for batch in acquire_batches(job=job, weight=weight, iterations=iterations):
        try:
            result = run(write_partition, batch.items)
            batch.success(result)
        except Exception as exc:
            batch.error(exc)
            raise
        results.append(result)
    return results


def main() -> None:
    """Run the driver with a thread pool standing in for the cluster."""
    with ThreadPoolExecutor(max_workers=4) as cluster:
        results = run_driver(
            "spark_example",
            weight=50_000,
            submit=lambda func, rows: cluster.submit(func, rows).result(),
        )
    print(f"processed {sum(r['rows'] for r in results)} rows in {len(results)} batches")


if __name__ == "__main__":
    main()
