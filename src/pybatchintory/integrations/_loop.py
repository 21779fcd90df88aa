"""The lease loop that cluster workers run: lease, process, settle, until the job is drained.

Shared by the Dask and Spark integrations. It runs inside a worker process (a Dask worker
thread, a Spark Python worker) and talks to the inventory database through its own
``SyncInventory``: nothing but the ledger is shared with the other workers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pybatchintory._planning import check_poll_interval
from pybatchintory.errors import InvalidArgument, LeaseLost, UnknownJob
from pybatchintory.protocols import MetadataSource
from pybatchintory.sync import SyncBatch, SyncInventory

__all__ = ("BatchFunc", "LoopReport", "LoopSpec", "lease_loop")

BatchFunc = Callable[[SyncBatch], Any]
"""What a worker does with one batch: read ``batch.items`` (or the assets of
``batch.meta_id_start .. batch.meta_id_end``), process them, return a JSON-serialisable
result (stored as ``job_result``) or ``None``."""

_LIMITS = ("max_count", "max_weight", "id_start", "id_end")


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs to run its loop; pickled and shipped to the worker.

    Attributes:
        job: The job name.
        source: The metadata source (a ``MetaTable`` or ``InventorySource``).
        func: Called once per leased batch, on the worker.
        url: The inventory database; ``None`` reads ``PYBATCHINTORY_*`` settings on the
            worker.
        limits: ``max_count``, ``max_weight``, ``id_start``, ``id_end`` for every acquire.
        inventory_options: Keyword arguments of each worker's ``SyncInventory``
            (``lease_ttl``, ``max_attempts``, ``retry_delay``, ``table_prefix``, ...).
        poll_interval: Seconds between looks at the ledger while other workers still hold
            leases (one of them may die and leave its range to be retried).
        drain: Keep polling until no lease of the job is running and no range waits for a
            retry; with ``False`` a loop ends as soon as nothing can be leased.
        raise_failures: Re-raise a failure of ``func`` after recording it, ending the loop
            (so the host retries the task), instead of going on with the next batch.
    """

    job: str
    source: MetadataSource
    func: BatchFunc
    url: str | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    inventory_options: Mapping[str, Any] = field(default_factory=dict)
    poll_interval: float = 0.5
    drain: bool = True
    raise_failures: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not self.job:
            raise InvalidArgument(f"job must be a non-empty name, got {self.job!r}")
        if not callable(self.func):
            raise InvalidArgument(f"func must be callable, got {self.func!r}")
        unknown = set(self.limits) - set(_LIMITS)
        if unknown:
            raise InvalidArgument(
                f"unknown limits {sorted(unknown)}; allowed: {', '.join(_LIMITS)}"
            )
        _check_limits(self.limits)
        check_poll_interval(self.poll_interval)


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_limits(limits: Mapping[str, Any]) -> None:
    """The checks ``acquire`` makes, on the driver: a worker would only find them later."""
    for name in ("max_count", "max_weight"):
        value = limits.get(name)
        if value is not None and (not _number(value) or value <= 0):
            raise InvalidArgument(f"{name} must be a number > 0, got {value!r}")
    start, end = limits.get("id_start"), limits.get("id_end")
    for name, value in (("id_start", start), ("id_end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{name} must be an integer id, got {value!r}")
    if start is not None and end is not None and start > end:
        raise InvalidArgument(f"id_start {start} is after id_end {end}")


@dataclass(frozen=True)
class LoopReport:
    """What one worker loop did.

    Attributes:
        worker: Where it ran: ``host:pid``.
        succeeded: Batches it settled as succeeded.
        failed: Batches whose ``func`` raised (recorded as failed).
        lost: Batches whose lease was gone when it tried to settle (nothing recorded).
        rows: Rows (``batch.count``) of the succeeded batches.
        seconds: Wall time of the loop.
    """

    worker: str
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    rows: int = 0
    seconds: float = 0.0


def _inventory(spec: LoopSpec) -> SyncInventory:
    if spec.url is None:
        return SyncInventory.from_settings(**dict(spec.inventory_options))
    return SyncInventory(spec.url, **dict(spec.inventory_options))


def _drained(inv: SyncInventory, spec: LoopSpec) -> bool:
    """Nothing to lease now; true when no other worker's lease or a pending retry remains."""
    if not spec.drain:
        return True
    try:
        backlog = inv.backlog(spec.job, spec.source)
    except UnknownJob:
        return True
    return backlog.running == 0 and backlog.retry_due == 0


def lease_loop(spec: LoopSpec) -> LoopReport:
    """Lease, process and settle batches of ``spec.job`` until the job is drained.

    A failure of ``spec.func`` is recorded as ``failed`` (type, message, traceback) and the
    range comes back under the inventory's ``max_attempts``/``retry_delay``; with
    ``raise_failures`` it is re-raised after being recorded. ``KeyboardInterrupt`` and
    ``SystemExit`` give the range back (``released``) and are re-raised.

    Args:
        spec: The job, its source, the function and the options.

    Returns:
        The loop's counts.
    """
    started = time.monotonic()
    counts = {"succeeded": 0, "failed": 0, "lost": 0, "rows": 0}
    limits = {name: value for name, value in spec.limits.items() if value is not None}
    with _inventory(spec) as inv:
        while True:
            batch = inv.acquire(spec.job, spec.source, **limits)
            if batch is None:
                if _drained(inv, spec):
                    break
                time.sleep(spec.poll_interval)
                continue
            _run_one(batch, spec, counts)
    return LoopReport(
        worker=f"{socket.gethostname()}:{os.getpid()}",
        seconds=time.monotonic() - started,
        **counts,
    )


def _run_one(batch: SyncBatch, spec: LoopSpec, counts: dict[str, int]) -> None:
    try:
        result = spec.func(batch)
    except (KeyboardInterrupt, SystemExit):
        batch.release()
        raise
    except Exception as exc:
        try:
            batch.error(exc)
        except LeaseLost:
            counts["lost"] += 1
        else:
            counts["failed"] += 1
        if spec.raise_failures:
            raise
        return
    try:
        batch.success(result)
    except LeaseLost:
        counts["lost"] += 1
        return
    except InvalidArgument as exc:  # a result that is not JSON: nothing was written
        batch.error(exc)
        raise
    counts["succeeded"] += 1
    counts["rows"] += int(batch.count)
