"""A Dask-style driver: several batches in flight at once, settled as they finish.

``acquire_many`` leases a wave of disjoint ranges in one transaction; each is processed by
a worker (with Dask: ``client.submit(process, rows)``; here a thread pool) and settled from
the driver thread as its future completes. The facade is thread-safe, so settling from the
pool's threads would work too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from pybatchintory import MetaTable
from pybatchintory.sync import SyncBatch, SyncInventory


def process(rows: Sequence[Mapping[str, Any]]) -> int:
    """What one Dask task would do with a batch: here, count csv files."""
    return sum(1 for r in rows if r["kind"] == "csv")


def run_driver(url: str, job: str, *, wave: int = 4, max_count: int = 500) -> int:
    """Process every batch of ``job`` in waves of ``wave`` leases; return csv files seen."""
    files = MetaTable("files", weight="size_in_bytes")
    total = 0
    with SyncInventory(url) as inv, ThreadPoolExecutor(max_workers=wave) as cluster:
        while True:
            batches = inv.acquire_many(job, files, wave, max_count=max_count)
            if not batches:
                return total
            futures: dict[Future[int], SyncBatch] = {
                cluster.submit(process, batch.items): batch for batch in batches
            }
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    found = future.result()
                except Exception as exc:
                    batch.error(exc)
                    raise
                batch.success({"csv": found})
                total += found
