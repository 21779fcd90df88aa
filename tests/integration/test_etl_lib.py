"""``pybatchintory.integrations.etl_lib`` with neo4j-etl-lib's own ``SQLBatchSink``, on SQLite.

The sink commits once, when its chain is exhausted: the leased batches must stay
``running`` while rows flow, and be settled by how the task ended.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

pytest.importorskip("etl_lib", reason="the etl-lib extra is not installed")

from etl_lib.core.BatchProcessor import BatchProcessor, BatchResults
from etl_lib.core.ClosedLoopBatchProcessor import ClosedLoopBatchProcessor
from etl_lib.core.Task import TaskReturn
from etl_lib.data_sink.SQLBatchSink import SQLBatchSink

import pybatchintory as pbi
from pybatchintory.integrations.etl_lib import LeaseBatchSource, LeasedTask
from pybatchintory.sync import SyncInventory

from examples.etl_lib_copy import INSERT, SQLOnlyContext, copy_files
from tests.helpers import create_meta_table

pytestmark = pytest.mark.sqlite

ROWS = 2000


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    inventory, target = tmp_path / "inventory.db", tmp_path / "target.db"
    with closing(sqlite3.connect(target)) as conn, conn:
        conn.execute("CREATE TABLE file_copies (id INTEGER PRIMARY KEY, size_in_bytes INTEGER)")
    yield inventory, target


def _ledger(inventory: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(inventory)) as conn, conn:
        return conn.execute(
            "SELECT meta_id_start, meta_id_end, status, attempt, error_type FROM inventory "
            "WHERE job = 'copy_files' ORDER BY id"
        ).fetchall()


def _copied(target: Path) -> list[int]:
    with closing(sqlite3.connect(target)) as conn, conn:
        return [row[0] for row in conn.execute("SELECT id FROM file_copies ORDER BY id")]


class _Probe(BatchProcessor):  # type: ignore[misc]
    """Passes batches on, and reads the ledger (plain SQL) while they flow."""

    def __init__(self, context: Any, task: Any, predecessor: Any, inventory: Path) -> None:
        super().__init__(context, task, predecessor)
        self.inventory = inventory
        self.seen: list[set[str]] = []

    def get_batch(self, max_batch_size: int) -> Iterator[BatchResults]:
        for batch in self.predecessor.get_batch(max_batch_size):
            with closing(sqlite3.connect(self.inventory)) as conn, conn:
                statuses = conn.execute(
                    "SELECT DISTINCT status FROM inventory WHERE job = 'copy_files'"
                ).fetchall()
            self.seen.append({row[0] for row in statuses})
            yield batch


class _ProbedCopy(LeasedTask):
    def run_leased(self, source: LeaseBatchSource, **kwargs: Any) -> TaskReturn:
        self.probe = _Probe(self.context, self, source, kwargs["inventory"])
        sink = SQLBatchSink(self.context, self, self.probe, INSERT)
        result = next(ClosedLoopBatchProcessor(self.context, self, sink).get_batch(300))
        return TaskReturn(success=True, summary=result.statistics)


async def test_batches_stay_running_until_the_task_ends(paths: tuple[Path, Path]) -> None:
    inventory, target = paths
    url = f"sqlite+aiosqlite:///{inventory}"
    await create_meta_table(url, rows=ROWS)

    def run() -> tuple[Any, _ProbedCopy]:
        context = SQLOnlyContext(f"sqlite:///{target}")
        try:
            with SyncInventory(url) as inv:
                task = _ProbedCopy(
                    context, inv, "copy_files", pbi.MetaTable("files"), max_count=500
                )
                return task.execute(inventory=inventory), task
        finally:
            context.sql.engine.dispose()

    result, task = await anyio.to_thread.run_sync(run)
    assert result.success, result.error
    assert result.summary["sql_rows_written"] == ROWS
    # While rows flowed to the sink nothing was settled: every attempt read as running.
    assert task.probe.seen and all(seen == {"running"} for seen in task.probe.seen)
    assert task.settled == {"succeeded": 4, "failed": 0, "released": 0, "lost": 0}
    assert [row[2] for row in _ledger(inventory)] == ["succeeded"] * 4
    assert _copied(target) == list(range(1, ROWS + 1))


async def test_a_failed_write_records_every_batch_of_the_task(paths: tuple[Path, Path]) -> None:
    inventory, target = paths
    url = f"sqlite+aiosqlite:///{inventory}"
    await create_meta_table(url, rows=ROWS)
    with (
        closing(sqlite3.connect(target)) as conn,
        conn,
    ):  # id 1500 exists: the sink's insert will fail
        conn.execute("INSERT INTO file_copies VALUES (1500, 0)")

    result, settled = await anyio.to_thread.run_sync(
        lambda: copy_files(url, f"sqlite:///{target}", max_count=500)
    )
    assert not result.success
    assert "UNIQUE constraint failed" in result.error
    # The sink rolled back: nothing of this task was written, and every batch it leased
    # (three: the third one's rows hit id 1500) is recorded failed with the sink's exception.
    assert _copied(target) == [1500]
    assert settled["failed"] == 3
    assert {(row[2], row[3], row[4]) for row in _ledger(inventory)} == {
        ("failed", 1, "sqlalchemy.exc.IntegrityError")
    }

    with closing(sqlite3.connect(target)) as conn, conn:
        conn.execute("DELETE FROM file_copies")
    result, settled = await anyio.to_thread.run_sync(
        lambda: copy_files(url, f"sqlite:///{target}", max_count=500)
    )
    assert result.success, result.error
    assert settled["succeeded"] == 4
    assert _copied(target) == list(range(1, ROWS + 1))
    succeeded = [row for row in _ledger(inventory) if row[2] == "succeeded"]
    assert [row[3] for row in succeeded] == [2, 2, 2, 1]  # three retries, then a new range
