"""neo4j-etl-lib glue: a ``BatchProcessor`` source over leases, settled when the task ends.

Needs the ``etl-lib`` extra (``pip install pybatchintory[etl-lib]``).

neo4j-etl-lib is synchronous and built on generator chains: a sink pulls batches from its
predecessor, and a source's generator being resumed does not mean its rows were written
(``SQLBatchSink`` commits once, at the end; ``ParallelBatchProcessor`` prefetches in a
thread). So ``LeaseBatchSource`` holds every batch it leased until the task is over, and
``LeasedTask`` settles them then: ``succeeded`` when the task succeeded, ``failed`` with
the task's exception (or its error message) otherwise, ``released`` on
``KeyboardInterrupt``/``SystemExit``::

    class CopyFiles(LeasedTask):
        def run_leased(self, source: LeaseBatchSource, **kwargs: Any) -> TaskReturn:
            sink = SQLBatchSink(self.context, self, source, "INSERT INTO copy ...")
            end = ClosedLoopBatchProcessor(self.context, self, sink)
            result = next(end.get_batch(500))
            return TaskReturn(True, result.statistics)

    with SyncInventory(url) as inv:
        CopyFiles(context, inv, "copy", files, max_count=10_000).execute()

The inventory is a ``pybatchintory.sync.SyncInventory``: thread-safe, and it heartbeats the
held leases in its own thread while the task runs.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from typing import Any

from pybatchintory.errors import InvalidArgument, LeaseLost, MissingDriver, StoreError
from pybatchintory.protocols import MetadataSource
from pybatchintory.sync import SyncBatch, SyncInventory

try:
    from etl_lib.core.BatchProcessor import BatchProcessor, BatchResults
    from etl_lib.core.Task import Task
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDriver(
        "pybatchintory.integrations.etl_lib needs neo4j-etl-lib. "
        "Install it with: pip install pybatchintory[etl-lib]"
    ) from exc

__all__ = ("LeaseBatchSource", "LeasedTask", "TaskFailed")

_RELEASE_ON = (KeyboardInterrupt, SystemExit, GeneratorExit)


class TaskFailed(Exception):
    """Recorded when a task returned ``TaskReturn(success=False)`` without raising."""


class LeaseBatchSource(BatchProcessor):  # type: ignore[misc]
    """The first processor of a chain: the rows of leased batches, ``max_batch_size`` a time.

    It leases one batch of ``job`` after another (until none is left or ``max_batches``)
    and yields its rows in chunks; every leased batch stays held (heartbeated) until
    ``settle()``, which ``LeasedTask`` calls when the task ends.

    Args:
        context: The ``ETLContext``.
        task: The owning task (for reporting).
        inventory: The ``SyncInventory`` to lease from.
        job: The job's name.
        source: Its metadata source.
        max_count: Row cap per leased batch.
        max_weight: Weight cap per leased batch.
        id_start: First id of the job's window.
        id_end: Last id of the job's window.
        max_batches: Lease at most this many batches per run.
    """

    def __init__(
        self,
        context: Any,
        task: Any,
        inventory: SyncInventory,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        max_batches: int | None = None,
    ) -> None:
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise InvalidArgument(f"max_batches must be a positive integer, got {max_batches!r}")
        super().__init__(context, task, None)
        self.inventory = inventory
        self.job = job
        self.source = source
        self.max_batches = max_batches
        self._limits: dict[str, Any] = {
            "max_count": max_count,
            "max_weight": max_weight,
            "id_start": id_start,
            "id_end": id_end,
        }
        self._held: list[SyncBatch] = []
        self._lock = threading.Lock()  # a ParallelBatchProcessor pulls from another thread

    @property
    def held(self) -> list[SyncBatch]:
        """The batches leased and not settled yet."""
        with self._lock:
            return list(self._held)

    def get_batch(self, max_batch_size: int) -> Iterator[BatchResults]:
        """Yield the rows of each leased batch in chunks of at most ``max_batch_size``."""
        if max_batch_size < 1:
            raise InvalidArgument(f"max_batch_size must be >= 1, got {max_batch_size}")
        leased = 0
        while self.max_batches is None or leased < self.max_batches:
            batch = self.inventory.acquire(self.job, self.source, **self._limits)
            if batch is None:
                return
            leased += 1
            with self._lock:
                self._held.append(batch)
            rows = [dict(row) for row in batch.items]
            self._instrument("inventory_lease", {"attempt": batch.id, "rows": len(rows)})
            for offset in range(0, len(rows), max_batch_size):
                chunk = rows[offset : offset + max_batch_size]
                yield BatchResults(
                    chunk=chunk,
                    statistics={"inventory_rows_read": len(chunk)},
                    batch_size=len(chunk),
                )

    def settle(self, error: BaseException | None) -> dict[str, int]:
        """Settle every held batch: success, failure with ``error``, or release.

        Returns:
            How many batches ended ``succeeded``, ``failed``, ``released``, and ``lost``
            (their lease was gone: nothing recorded, the range comes back on its own).
        """
        with self._lock:
            held, self._held = self._held, []
        counts = {"succeeded": 0, "failed": 0, "released": 0, "lost": 0}
        for batch in held:
            try:
                if error is None:
                    batch.success({"task": "succeeded"})
                    counts["succeeded"] += 1
                elif isinstance(error, _RELEASE_ON):
                    batch.release()
                    counts["released"] += 1
                else:
                    batch.error(error)
                    counts["failed"] += 1
            except (LeaseLost, StoreError) as exc:
                self.logger.warning("batch %s of job %r not settled: %s", batch.id, self.job, exc)
                counts["lost"] += 1
        return counts


class LeasedTask(Task, abc.ABC):  # type: ignore[misc]
    """A neo4j-etl-lib ``Task`` whose chain starts at a ``LeaseBatchSource``.

    Implement ``run_leased(source, **kwargs)``: build the chain on ``source``, drive it,
    return a ``TaskReturn``. The leased batches are settled when it returns or raises.

    Args:
        context: The ``ETLContext``.
        inventory: The ``SyncInventory`` to lease from.
        job: The job's name.
        source: Its metadata source.
        **options: ``LeaseBatchSource`` options (``max_count``, ``max_batches``, ...).
    """

    def __init__(
        self,
        context: Any,
        inventory: SyncInventory,
        job: str,
        source: MetadataSource | str,
        **options: Any,
    ) -> None:
        super().__init__(context)
        self.job = job
        self.leases = LeaseBatchSource(context, self, inventory, job, source, **options)
        self.settled: dict[str, int] = {}

    @abc.abstractmethod
    def run_leased(self, source: LeaseBatchSource, **kwargs: Any) -> Any:
        """Build and drive the chain that starts at ``source``; return a ``TaskReturn``."""

    def run_internal(self, **kwargs: Any) -> Any:
        """Run ``run_leased``, then settle the leased batches by how it ended."""
        try:
            result = self.run_leased(self.leases, **kwargs)
        except BaseException as exc:
            self.settled = self.leases.settle(exc)
            raise
        if getattr(result, "success", False):
            self.settled = self.leases.settle(None)
        else:
            message = getattr(result, "error", None) or f"task {self.task_name()} failed"
            self.settled = self.leases.settle(TaskFailed(message))
        return result

    def task_name(self) -> str:
        """The class name and the job."""
        return f"{type(self).__name__}[{self.job}]"
