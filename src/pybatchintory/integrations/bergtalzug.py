"""A feeder for bergtalzug's ``ETLPipeline``: one leased batch per ``WorkItem``.

Needs the ``bergtalzug`` extra (``pip install pybatchintory[bergtalzug]``). bergtalzug 0.2.0
declares Python >= 3.14 and imports ``concurrent.futures.InterpreterPoolExecutor`` when it
is imported; on Python 3.13 install it with ``pip install --ignore-requires-python
bergtalzug==0.2.0``: before importing it, this module makes that one missing name an alias
of ``ThreadPoolExecutor`` (so ``ExecutionType.INTERPRETER`` stages run in threads there).

::

    feeder = BatchFeeder(inv, "thumbnails", files, max_count=1000, max_outstanding=8)

    class Thumbnails(ETLPipeline):
        async def refill_queue(self, count: int) -> list[WorkItem]:
            return await feeder.refill_queue(count)

    pipeline = Thumbnails(config)
    ...register the stage handlers...
    await feeder.run(pipeline)

- ``refill_queue(count)`` leases at most ``min(count, max_outstanding - outstanding)``
  batches. It blocks, and never returns ``[]``, while leases or settles are in flight or
  retries are due; it returns ``[]`` (which ends the pipeline) only once the job is drained
  or ``stop()`` was called, never in ``follow`` mode.
- The pipeline's synchronous completion callback settles each item's batch through
  ``Batch.success_nowait`` / ``error_nowait``: a failed stage records the stage's exception.
- ``run(pipeline)`` attaches the callback and runs the pipeline; however it ends (cancelled,
  ``pipeline.stop()``, an error), it releases the batches no callback settled (bergtalzug
  does not call back for items it drops) and waits for the settles in flight.

``WorkItem.data`` is the ``Batch``; the stages may replace it (the feeder keeps the batch
by the item's ``job_id``, which is ``"<job>#<attempt id>"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
from typing import Any

from pybatchintory._planning import check_poll_interval
from pybatchintory.batch import Batch
from pybatchintory.errors import (
    AlreadySettled,
    InvalidArgument,
    LeaseLost,
    MissingDriver,
    UnknownJob,
)
from pybatchintory.inventory import Inventory
from pybatchintory.protocols import MetadataSource

__all__ = ("BatchFeeder", "StageFailed", "import_bergtalzug")

logger = logging.getLogger("pybatchintory.integrations.bergtalzug")


class StageFailed(Exception):
    """Recorded when bergtalzug reports a failed item without an exception."""


def import_bergtalzug() -> Any:
    """Import bergtalzug, on Python < 3.14 with ``InterpreterPoolExecutor`` aliased first.

    Raises:
        MissingDriver: bergtalzug is not installed.
    """
    if sys.version_info < (3, 14) and not hasattr(concurrent.futures, "InterpreterPoolExecutor"):
        # bergtalzug 0.2.0 imports the name at import time; only INTERPRETER stages use it.
        concurrent.futures.InterpreterPoolExecutor = concurrent.futures.ThreadPoolExecutor  # type: ignore[attr-defined]
    try:
        import bergtalzug
    except ImportError as exc:
        raise MissingDriver(
            "pybatchintory.integrations.bergtalzug needs bergtalzug. Install it with: "
            "pip install pybatchintory[bergtalzug] (on Python 3.13: pip install "
            "--ignore-requires-python bergtalzug==0.2.0)"
        ) from exc
    return bergtalzug


class BatchFeeder:
    """Leases batches of one job for a bergtalzug pipeline and settles them as items end.

    Args:
        inventory: An open ``Inventory`` (its event loop is the pipeline's).
        job: The job's name.
        source: Its metadata source.
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
        id_start: First id of the job's window.
        id_end: Last id of the job's window.
        max_outstanding: Batches leased and not yet settled, at most.
        follow: Keep waiting for new rows instead of ending when the job is drained.
        poll_interval: Seconds between looks at the ledger while waiting.

    Raises:
        InvalidArgument: ``max_outstanding`` or ``poll_interval`` is out of range.
    """

    def __init__(
        self,
        inventory: Inventory,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        max_outstanding: int = 8,
        follow: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int):
            raise InvalidArgument(f"max_outstanding must be an integer, got {max_outstanding!r}")
        if max_outstanding < 1:
            raise InvalidArgument(f"max_outstanding must be >= 1, got {max_outstanding}")
        check_poll_interval(poll_interval)
        self.inventory = inventory
        self.job = job
        self.source = source
        self._limits: dict[str, Any] = {
            "max_count": max_count,
            "max_weight": max_weight,
            "id_start": id_start,
            "id_end": id_end,
        }
        self.max_outstanding = max_outstanding
        self.follow = follow
        self.poll_interval = float(poll_interval)
        # The group keeps every leased batch until its settle is written, and releases on
        # release_unsettled() what nobody settled; _held maps an item to its batch until
        # the pipeline calls back.
        self._group = inventory.group()
        self._held: dict[str, Batch] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self.counts = {"leased": 0, "succeeded": 0, "failed": 0, "released": 0}

    # -- what the pipeline sees -----------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Batches handed to the pipeline whose item has not ended yet."""
        return len(self._held)

    @property
    def settling(self) -> int:
        """Settle writes scheduled by the completion callback and not finished yet."""
        return self._group.settling

    def stop(self) -> None:
        """Lease nothing more: the next ``refill_queue`` returns ``[]``.

        The pipeline then finishes the items it has, each settled by the callback.
        """
        self._stopping = True
        self._changed.set()

    async def refill_queue(self, count: int) -> list[Any]:
        """Up to ``min(count, max_outstanding - outstanding)`` new work items.

        Blocks while nothing can be leased but something may still come (leases or settles
        in flight here or elsewhere, retries due); ``[]`` only when the job is drained
        (never with ``follow``) or after ``stop()``.
        """
        bergtalzug = import_bergtalzug()
        while not self._stopping:
            room = min(count, self.max_outstanding - self.outstanding)
            batches: list[Batch] = []
            if room > 0:
                batches = await self._group.acquire_many(
                    self.job, self.source, room, **self._limits
                )
            if batches:
                items = []
                for batch in batches:
                    key = f"{batch.job}#{batch.id}"
                    self._held[key] = batch
                    items.append(bergtalzug.WorkItem(data=batch, job_id=key))
                self.counts["leased"] += len(batches)
                return items
            if room > 0 and not self.follow and await self._drained():
                return []
            await self._wait()
        return []

    async def _drained(self) -> bool:
        if self._held or self._group.settling:
            return False
        try:
            left = await self.inventory.backlog(self.job)
        except UnknownJob:
            return True
        return left.running == 0 and left.retry_due == 0

    async def _wait(self) -> None:
        """Until an item ends, ``stop()``, or ``poll_interval`` passes."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.poll_interval)

    def on_complete(self, result: Any) -> None:
        """The pipeline's completion callback (synchronous, on the loop): settle the item."""
        batch = self._held.pop(result.job_id, None)
        if batch is None:
            return  # not ours, or released already (the run was cancelled)
        try:
            if result.success:
                task = batch.success_nowait()
                self.counts["succeeded"] += 1
            else:
                error = result.error
                if not isinstance(error, BaseException):
                    stage = getattr(result.metadata, "current_stage", "?")
                    error = StageFailed(f"item {result.job_id} failed in stage {stage}")
                task = batch.error_nowait(error)
                self.counts["failed"] += 1
        except (LeaseLost, AlreadySettled) as exc:
            logger.warning("batch %s of job %r was not settled: %s", batch.id, batch.job, exc)
            self._changed.set()
            return
        task.add_done_callback(self._settled)
        self._changed.set()

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._changed.set()

    def attach(self, pipeline: Any) -> None:
        """Register ``on_complete`` as the pipeline's completion callback."""
        pipeline.add_completion_callback(self.on_complete)

    # -- the end of a run -----------------------------------------------------------------

    async def release_unsettled(self) -> int:
        """Release every batch no callback settled; wait for the settles in flight.

        Returns how many batches were released.
        """
        self._held.clear()
        released = await self._group.release_outstanding()
        self.counts["released"] += released
        await self._group.wait_settled()
        return released

    async def run(self, pipeline: Any) -> list[Any]:
        """Attach to ``pipeline`` and run it; afterwards release what no callback settled.

        Returns:
            ``pipeline.run()``'s results.
        """
        self.attach(pipeline)
        try:
            results: list[Any] = await pipeline.run()
            return results
        finally:
            # Shielded: a cancelled run still gives its batches back before it ends.
            await asyncio.shield(self.release_unsettled())
