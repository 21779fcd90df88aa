"""A Dask job whose workers lease their own batches.

The driver submits one lease loop per worker thread to a ``distributed.Client``; each loop
opens its own inventory on its worker, leases a range, counts the csv files in it there,
settles it there, and goes on until the job is drained. Rows never pass through the driver.
Without a ``client`` the example starts a ``LocalCluster`` of process workers.

Run: ``python -m examples.dask_driver postgresql+asyncpg://postgres@127.0.0.1:5432/test``
(a database with a ``files(id, size_in_bytes, kind)`` table).
"""

from __future__ import annotations

import sys
from typing import Any

from pybatchintory import MetaTable
from pybatchintory.integrations.dask import run_on_dask
from pybatchintory.sync import SyncBatch, SyncInventory


def count_csv(batch: SyncBatch) -> dict[str, int]:
    """Runs on a Dask worker: read the range's rows and count the csv files."""
    return {"csv": sum(1 for row in batch.items if row["kind"] == "csv")}


def run_driver(
    url: str, job: str, *, client: Any = None, workers: int = 2, max_count: int = 500
) -> int:
    """Process every batch of ``job`` on the cluster; return the csv files counted."""
    from distributed import Client, LocalCluster

    files = MetaTable("files", weight="size_in_bytes")
    if client is None:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=50,
            ) as cluster,
            Client(cluster) as local_client,
        ):
            run_on_dask(local_client, job, files, count_csv, url=url, max_count=max_count)
    else:
        run_on_dask(client, job, files, count_csv, url=url, max_count=max_count)
    # The counts were stored by the workers as each attempt's result: read them back.
    with SyncInventory(url) as inv:
        return sum(attempt.result["csv"] for attempt in inv.batches(job, status="succeeded"))


def main() -> None:
    """Run the example against the URL given on the command line."""
    print(f"csv files: {run_driver(sys.argv[1], 'dask_example')}")


if __name__ == "__main__":
    main()
