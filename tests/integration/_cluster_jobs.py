"""Batch functions shipped to Dask workers and Spark executors by the cluster tests.

They live in an importable module (not in a test file) so that worker processes unpickle
them by reference. Coordination with the test process goes through files: a marker file
says "I am inside this batch, pid N"; a flag file says "this range already failed once".
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pybatchintory.sync import SyncBatch

__all__ = (
    "SUCCEEDED_SQL",
    "assert_exact_cover",
    "count_rows",
    "fail_always_on",
    "fail_once_on",
    "hang_once_on",
    "raising_at",
)

SUCCEEDED_SQL = (
    "SELECT meta_id_start, meta_id_end, count FROM inventory "
    "WHERE job = :job AND status = 'succeeded' ORDER BY meta_id_start"
)


def _covers(batch: SyncBatch, meta_id: int) -> bool:
    return int(batch.meta_id_start) <= meta_id <= int(batch.meta_id_end)


def count_rows(batch: SyncBatch, pause: float = 0.0) -> dict[str, int]:
    """Read the batch's rows on the worker; the result is what was seen.

    ``pause`` seconds of sleep per batch keep a job running long enough for every worker
    to start leasing (a fast worker could otherwise drain a small job alone).
    """
    time.sleep(pause)
    rows = batch.items
    ids = [int(row["id"]) for row in rows]
    assert ids == list(range(int(batch.meta_id_start), int(batch.meta_id_end) + 1))
    return {"rows": len(rows), "pid": os.getpid()}


def hang_once_on(marker: str, meta_id: int, batch: SyncBatch) -> dict[str, int]:
    """On the first attempt of the range holding ``meta_id``: announce the pid, then hang."""
    if _covers(batch, meta_id) and int(batch.attempt) == 1:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)  # until the test kills this process
    return count_rows(batch)


def fail_once_on(flag_dir: str, meta_id: int, batch: SyncBatch) -> dict[str, int]:
    """Raise the first time the range holding ``meta_id`` is processed, in any process."""
    if _covers(batch, meta_id):
        flag = Path(flag_dir) / f"failed-{meta_id}"
        try:
            flag.touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            raise RuntimeError(f"transient failure on id {meta_id}")
    return count_rows(batch)


def fail_always_on(meta_id: int, batch: SyncBatch) -> dict[str, int]:
    """Raise every time the range holding ``meta_id`` is processed."""
    if _covers(batch, meta_id):
        raise RuntimeError(f"id {meta_id} is corrupt")
    return count_rows(batch)


def assert_exact_cover(rows: list[dict[str, Any]], first: int, last: int) -> None:
    """Succeeded ranges (ordered by start) cover ``first..last`` without gap or overlap."""
    ranges = [(int(r["meta_id_start"]), int(r["meta_id_end"])) for r in rows]
    assert ranges, "nothing succeeded"
    assert ranges[0][0] == first, ranges[:3]
    assert ranges[-1][1] == last, ranges[-3:]
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1, f"overlap or gap between {end} and {start}"


def raising_at(meta_id: int, flag_dir: str | None = None) -> Callable[[int], int]:
    """A Spark UDF body that raises on ``meta_id``: always, or once per ``flag_dir``."""

    def check(value: int) -> int:
        if value == meta_id:
            if flag_dir is None:
                raise RuntimeError(f"id {meta_id} is corrupt")
            try:
                (Path(flag_dir) / f"udf-{meta_id}").touch(exist_ok=False)
            except FileExistsError:
                return value
            raise RuntimeError(f"transient failure on id {meta_id}")
        return value

    return check
