"""neo4j-etl-lib task fed by leases: copy the ``files`` table into another SQL database.

The chain is ``LeaseBatchSource -> SQLBatchSink -> ClosedLoopBatchProcessor``. The sink
writes everything in one transaction that commits when the chain is exhausted, so the
leased batches are settled only then (``LeasedTask``): a failed write records every batch
of the task as failed (nothing was committed), and they are retried by the next run.

Needs ``pip install pybatchintory[etl-lib]``. The context here is a small SQL-only one: a
real ``ETLContext`` also connects to Neo4j.
"""

from __future__ import annotations

import logging
from typing import Any

from etl_lib.core.ClosedLoopBatchProcessor import ClosedLoopBatchProcessor
from etl_lib.core.ETLContext import SQLContext
from etl_lib.core.InstrumentationWriter import NoopInstrumentationWriter
from etl_lib.core.ProgressReporter import ProgressReporter
from etl_lib.core.Task import TaskReturn
from etl_lib.data_sink.SQLBatchSink import SQLBatchSink

import pybatchintory as pbi
from pybatchintory.integrations.etl_lib import LeaseBatchSource, LeasedTask
from pybatchintory.sync import SyncInventory

INSERT = "INSERT INTO file_copies (id, size_in_bytes) VALUES (:id, :size_in_bytes)"


class SQLOnlyContext:
    """What the SQL building blocks of neo4j-etl-lib need from an ``ETLContext``."""

    def __init__(self, sql_url: str) -> None:
        self.logger = logging.getLogger("etl_lib_copy")
        self.sql = SQLContext(sql_url)
        self.instrumentation_writer = NoopInstrumentationWriter()
        self.reporter = ProgressReporter(self)

    def env(self, key: str) -> Any:
        """No environment here."""
        return None


class CopyFiles(LeasedTask):
    """Copy the rows of the leased batches into ``file_copies``."""

    def run_leased(self, source: LeaseBatchSource, **kwargs: Any) -> TaskReturn:
        """Drive the chain to its end: the sink commits once, when it is exhausted."""
        sink = SQLBatchSink(self.context, self, source, INSERT)
        end = ClosedLoopBatchProcessor(self.context, self, sink)
        result = next(end.get_batch(kwargs.get("chunk", 200)))
        return TaskReturn(success=True, summary=result.statistics)


def copy_files(
    inventory_url: str, target_url: str, *, max_count: int = 500, max_batches: int | None = None
) -> tuple[TaskReturn, dict[str, int]]:
    """Run one ``CopyFiles`` task; its ``TaskReturn`` and how its batches were settled."""
    context = SQLOnlyContext(target_url)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    try:
        with SyncInventory(inventory_url) as inv:
            task = CopyFiles(
                context, inv, "copy_files", files, max_count=max_count, max_batches=max_batches
            )
            result = task.execute()
    finally:
        context.sql.engine.dispose()
    return result, task.settled


if __name__ == "__main__":
    import sys

    print(copy_files(sys.argv[1], sys.argv[2]))
