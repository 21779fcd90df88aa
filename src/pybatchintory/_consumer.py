"""The long-running consumer of an asyncio service: ``Inventory.consume``.

``concurrency`` workers each lease a batch, run the handler under ``async with batch``
(the exit policy settles it), and go on:

- a handler that raises is recorded ``failed`` (and logged); the loop goes on;
- ``LeaseLost`` and ``StoreError`` (the inventory database is down) are logged and the
  worker backs off, doubling the wait up to ``_BACKOFF_MAX``, then tries again;
- with nothing to do, a worker waits ``poll_interval``;
- ``stop`` (an event) ends every worker between batches: a batch in hand is finished and
  settled first; every wait ends at once;
- cancellation releases the batches in hand (the exit policy), and is re-raised.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from pybatchintory._stopping import StopSignal, wait_or_stop
from pybatchintory.batch import Batch
from pybatchintory.errors import LeaseLost, StoreError
from pybatchintory.models import Status

__all__ = ("ConsumeReport", "Handler", "consume")

log = logging.getLogger("pybatchintory")

_BACKOFF_MAX = 30.0

Handler = Callable[[Batch], Awaitable[Any] | Any]
"""Called with each batch: ``async def handle(batch)`` (a plain function runs on the loop).

A return value other than ``None`` is stored as the attempt's result (JSON).
"""


@dataclass
class ConsumeReport:
    """What one ``Inventory.consume`` run did, by how each batch ended.

    Attributes:
        succeeded: Batches whose handler returned.
        failed: Batches whose handler raised (recorded ``failed``).
        released: Batches released (the handler called ``release()``, or a cancellation).
        lost: Batches whose lease was lost while the handler ran.
        store_errors: Times the inventory database failed (acquire or settle).
    """

    succeeded: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    store_errors: int = 0

    @property
    def batches(self) -> int:
        """Batches handed to the handler."""
        return self.succeeded + self.failed + self.released + self.lost


async def _handle(batch: Batch, handler: Handler) -> None:
    async with batch:
        value = handler(batch)
        if inspect.isawaitable(value):
            value = await value
        if value is not None:
            batch.result = value


async def _worker(
    acquire: Callable[[], Awaitable[Batch | None]],
    handler: Handler,
    *,
    poll_interval: float,
    stop: StopSignal | None,
    report: ConsumeReport,
) -> None:
    backoff = 0.0
    while stop is None or not stop.is_set():
        if backoff and await wait_or_stop(stop, backoff):
            return
        try:
            batch = await acquire()
        except StoreError as exc:
            report.store_errors += 1
            backoff = min(max(backoff * 2, poll_interval / 4, 0.05), _BACKOFF_MAX)
            log.warning("acquire failed, retrying in %.2fs: %s", backoff, exc)
            continue
        if batch is None:
            backoff = 0.0
            if await wait_or_stop(stop, poll_interval):
                return
            continue
        try:
            await _handle(batch, handler)
        except LeaseLost as exc:
            report.lost += 1
            backoff = min(max(backoff * 2, poll_interval / 4, 0.05), _BACKOFF_MAX)
            log.warning("%r: %s; going on in %.2fs", batch, exc, backoff)
            continue
        except StoreError as exc:
            report.store_errors += 1
            backoff = min(max(backoff * 2, poll_interval / 4, 0.05), _BACKOFF_MAX)
            log.warning("%r could not be settled, retrying in %.2fs: %s", batch, backoff, exc)
            continue
        except Exception as exc:
            # Recorded ``failed`` by the exit policy (or settled by the handler before it
            # raised): the service goes on.
            log.warning("%r: the handler raised %s: %s", batch, type(exc).__name__, exc)
        _count(report, batch)
        backoff = 0.0


def _count(report: ConsumeReport, batch: Batch) -> None:
    if batch.status is Status.SUCCEEDED:
        report.succeeded += 1
    elif batch.status is Status.FAILED:
        report.failed += 1
    elif batch.status is Status.RELEASED:
        report.released += 1
    else:
        report.lost += 1


async def consume(
    acquire: Callable[[], Awaitable[Batch | None]],
    handler: Handler,
    *,
    concurrency: int,
    poll_interval: float,
    stop: StopSignal | None,
) -> ConsumeReport:
    """Run ``concurrency`` workers until ``stop`` is set (see the module's docstring)."""
    report = ConsumeReport()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(
                    lambda: _worker(
                        acquire, handler, poll_interval=poll_interval, stop=stop, report=report
                    )
                )
    except BaseExceptionGroup as group:
        # One worker's unexpected error cancels the others; raise it as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return report
