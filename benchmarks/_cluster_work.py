"""The per-batch work of ``benchmarks.cluster``, importable by Dask workers and Spark executors."""

from __future__ import annotations

import time
from typing import Any

from pybatchintory.sync import SyncBatch


def read_rows(batch: SyncBatch, pause: float = 0.0) -> dict[str, int]:
    """Read the range's rows where the batch runs (a worker or an executor) and sum sizes.

    ``pause`` seconds of sleep stand for I/O-bound work on the batch's assets.
    """
    if pause:
        time.sleep(pause)
    return {"bytes": sum(int(row["size_in_bytes"]) for row in batch.items)}


def write_parquet(base: str) -> Any:
    """A driver-side ``write``: the range's rows as one parquet directory of its own."""
    from pybatchintory.integrations.spark import range_path

    def write(frame: Any, batch: SyncBatch) -> dict[str, int]:
        frame.write.mode("overwrite").parquet(range_path(base, batch))
        return {"rows": int(batch.count)}

    return write
