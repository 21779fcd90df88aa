"""A thread-safe synchronous facade for Spark/Dask drivers, scripts and sync frameworks.

It wraps the async core, never duplicates it: one event loop runs in a background thread
(an anyio blocking portal) and every call is handed to it. The seed's spelling works::

    from pybatchintory.sync import acquire_batch

    batch = acquire_batch(job="incremental_job", weight=10)   # PYBATCHINTORY_* settings
    try:
        process_func(batch.items)
        batch.success()
    except Exception as e:
        batch.error(e)
        raise

Any number of threads may use one ``SyncInventory`` (or the module-level functions) at once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from pybatchintory._default_inventory import seed_call
from pybatchintory.batch import Batch, _call_arguments
from pybatchintory.errors import EventLoopRunning, NoBatchAvailable, UnknownColumn
from pybatchintory.inventory import Inventory
from pybatchintory.models import (
    Attempt,
    Backlog,
    ErrorGroup,
    JobStatus,
    PlannedRange,
    Status,
    Weight,
)
from pybatchintory.protocols import MetadataSource
from pybatchintory.settings import Settings
from pybatchintory.settings import configure as configure_settings

__all__ = (
    "SyncBatch",
    "SyncInventory",
    "acquire_batch",
    "acquire_batches",
    "configure",
    "shutdown",
)

T = TypeVar("T")


class _Loop:
    """The background event loop shared by every ``SyncInventory`` of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._manager: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None

    def portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                self._manager = start_blocking_portal(backend="asyncio")
                self._portal = self._manager.__enter__()
            return self._portal

    def stop(self) -> None:
        with self._lock:
            manager, self._manager, self._portal = self._manager, None, None
        if manager is not None:
            manager.__exit__(None, None, None)


_loop = _Loop()

_ASYNC_SPELLING = {
    "acquire_batch": "batch = await pbi.acquire(job, ...)  (or: async with pbi.lease(job, ...))",
    "acquire_batches": "async for batch in pbi.leases(job, ...)",
}


def _refuse_in_loop(call: str) -> None:
    """Raise ``EventLoopRunning`` when called from a thread that runs an event loop.

    Blocking there would stall every task of that loop (and deadlock on the loop that
    serves this facade), so the call is refused before anything is written.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    spelling = _ASYNC_SPELLING.get(call, "await the same method of pybatchintory.Inventory")
    raise EventLoopRunning(
        f"{call}() is synchronous and was called inside a running event loop; "
        f"in async code use: {spelling}"
    )


class SyncBatch:
    """The synchronous view of a ``Batch``; same attributes, blocking methods."""

    def __init__(self, owner: SyncInventory, batch: Batch) -> None:
        self._owner = owner
        self._batch = batch
        self._item: str | None = None  # the seed's item column (meta_table_cols["item"])

    def __getattr__(self, name: str) -> Any:
        if name in {
            "id",
            "job",
            "meta_table",
            "meta_id_start",
            "meta_id_end",
            "count",
            "weight",
            "attempt",
            "oversized",
            "token",
            "status",
            "lost",
        }:
            return getattr(self._batch, name)
        raise AttributeError(name)

    @property
    def expires_at(self) -> datetime:
        """When the lease runs out unless renewed."""
        return self._batch.expires_at

    @property
    def result(self) -> Any:
        """Stored as ``job_result`` on success."""
        return self._batch.result

    @result.setter
    def result(self, value: Any) -> None:
        self._batch.result = value

    @property
    def items(self) -> list[Any]:
        """The rows of the range (read once, then cached).

        With the seed's item column (``meta_table_cols={"item": "file", ...}``), the values
        of that column, as 0.0.8 gave them.

        Raises:
            UnknownColumn: The item column is not a column of the table.
        """
        rows: list[Mapping[str, Any]] = self._owner._call(self._batch.items)
        if self._item is None:
            return rows
        if rows and self._item not in rows[0]:
            raise UnknownColumn(
                f"item column {self._item!r} (meta_table_cols) is not a column of "
                f"{self._batch.meta_table!r}"
            )
        return [row[self._item] for row in rows]

    def success(self, result: Any = None, *, logging: str | None = None) -> None:
        """Record success (see ``Batch.success``); ``logging`` goes to the logging column."""
        self._owner._call(self._batch.success, result, logging=logging)

    def error(
        self, exc: BaseException | str, *, result: Any = None, logging: str | None = None
    ) -> None:
        """Record a failure: an exception or a message (see ``Batch.error``)."""
        self._owner._call(self._batch.error, exc, result=result, logging=logging)

    def succeeded(self, result: Any = None, logging: str | None = None) -> None:
        """The seed's (0.0.8) name of ``success``."""
        self.success(result, logging=logging)

    def failed(
        self,
        error: BaseException | str | None = None,
        result: Any = None,
        logging: str | None = None,
    ) -> None:
        """The seed's (0.0.8) name of ``error``; without an error, a failure without cause."""
        self.error("failed" if error is None else error, result=result, logging=logging)

    def release(self) -> None:
        """Give the range back without fault (see ``Batch.release``)."""
        self._owner._call(self._batch.release)

    def process(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> T:
        """Run ``func(items, *args, **kwargs)`` in this thread, then settle (seed spelling).

        Success records the return value as the result when it is JSON-serialisable; an
        exception is recorded as a failure and re-raised.
        """
        call_args, call_kwargs = _call_arguments(args, kwargs)
        items = self.items
        try:
            value = func(items, *call_args, **call_kwargs)
        except (KeyboardInterrupt, SystemExit):
            self.release()
            raise
        except BaseException as exc:
            self.error(exc)
            raise
        try:
            self.success(value)
        except Exception as exc:
            from pybatchintory.errors import InvalidArgument

            if not isinstance(exc, InvalidArgument):
                raise
            self.success(None)
        return value

    def __enter__(self) -> SyncBatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._batch.status is not Status.RUNNING:
            return
        if exc is None:
            self.success()
        elif isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            self.release()
        else:
            self.error(exc)

    def __repr__(self) -> str:
        return repr(self._batch).replace("<Batch", "<SyncBatch", 1)


class SyncInventory:
    """A blocking ``Inventory``: same arguments, same methods, safe from many threads."""

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self._inventory = Inventory(url, **options)
        self._portal = _loop.portal()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> SyncInventory:
        """Configured from ``PYBATCHINTORY_*`` settings (see ``Inventory.from_settings``)."""
        sync = cls.__new__(cls)
        sync._inventory = Inventory.from_settings(settings, **overrides)
        sync._portal = _loop.portal()
        sync._closed = False
        return sync

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        _refuse_in_loop(getattr(func, "__name__", "this call"))
        return self._portal.call(functools.partial(func, *args, **kwargs))

    @property
    def inventory(self) -> Inventory:
        """The async ``Inventory`` underneath."""
        return self._inventory

    def close(self) -> None:
        """Drain settles in flight, release unsettled leases, dispose engines."""
        if not self._closed:
            self._closed = True
            self._call(self._inventory.aclose)

    def __enter__(self) -> SyncInventory:
        self._call(self._inventory.open)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def acquire(self, job: str, source: MetadataSource | str, **options: Any) -> SyncBatch | None:
        """Lease the next range (``None``: nothing to do). See ``Inventory.acquire``."""
        batch = self._call(self._inventory.acquire, job, source, **options)
        return None if batch is None else SyncBatch(self, batch)

    def acquire_many(
        self, job: str, source: MetadataSource | str, n: int, **options: Any
    ) -> list[SyncBatch]:
        """Lease up to ``n`` ranges at once. See ``Inventory.acquire_many``."""
        batches = self._call(self._inventory.acquire_many, job, source, n, **options)
        return [SyncBatch(self, b) for b in batches]

    def lease(self, job: str, source: MetadataSource | str, **options: Any) -> SyncBatch:
        """Lease and use as ``with inv.lease(...) as batch:``; raises ``NoBatchAvailable``."""
        batch = self.acquire(job, source, **options)
        if batch is None:
            raise NoBatchAvailable(f"nothing to hand out for job {job!r} right now")
        return batch

    def leases(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        iterations: int | None = None,
        **options: Any,
    ) -> Iterator[SyncBatch]:
        """Yield batches until none is left or ``iterations`` is reached."""
        done = 0
        while iterations is None or done < iterations:
            batch = self.acquire(job, source, **options)
            if batch is None:
                return
            done += 1
            yield batch

    def backlog(self, job: str, source: MetadataSource | None = None) -> Backlog:
        """See ``Inventory.backlog``."""
        result: Backlog = self._call(self._inventory.backlog, job, source)
        return result

    def batches(
        self, job: str, status: Status | str | Collection[Status | str] | None = None
    ) -> list[Attempt]:
        """See ``Inventory.batches``."""
        result: list[Attempt] = self._call(self._inventory.batches, job, status)
        return result

    def history(self, source: MetadataSource | str, meta_id: int) -> list[Attempt]:
        """See ``Inventory.history``."""
        result: list[Attempt] = self._call(self._inventory.history, source, meta_id)
        return result

    def status(self) -> list[JobStatus]:
        """See ``Inventory.status``."""
        result: list[JobStatus] = self._call(self._inventory.status)
        return result

    def errors(self, job: str) -> list[ErrorGroup]:
        """See ``Inventory.errors``."""
        result: list[ErrorGroup] = self._call(self._inventory.errors, job)
        return result

    def retry(self, job: str, **options: Any) -> int:
        """See ``Inventory.retry``."""
        result: int = self._call(self._inventory.retry, job, **options)
        return result

    def plan(self, job: str, source: MetadataSource | str, **options: Any) -> list[PlannedRange]:
        """See ``Inventory.plan``."""
        result: list[PlannedRange] = self._call(self._inventory.plan, job, source, **options)
        return result

    def set_cursor(self, job: str, meta_id: int, **options: Any) -> None:
        """See ``Inventory.set_cursor``."""
        self._call(self._inventory.set_cursor, job, meta_id, **options)

    def mark_done(self, job: str, start: int, end: int, **options: Any) -> int:
        """See ``Inventory.mark_done``."""
        result: int = self._call(self._inventory.mark_done, job, start, end, **options)
        return result

    def audit(self, job: str, source: MetadataSource | None = None) -> list[Any]:
        """See ``Inventory.audit``."""
        result: list[Any] = self._call(self._inventory.audit, job, source)
        return result


_default_lock = threading.Lock()
_default: SyncInventory | None = None


def _default_inventory() -> SyncInventory:
    global _default
    with _default_lock:
        if _default is None:
            _default = SyncInventory.from_settings()
        return _default


def acquire_batch(
    job: str,
    source: MetadataSource | str | None = None,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    meta_table_name: str | None = None,
    meta_table_cols: Mapping[str, str] | None = None,
    batch_weight: Weight | None = None,
    batch_count: int | None = None,
    batch_id_min: int | None = None,
    batch_id_max: int | None = None,
) -> SyncBatch | None:
    """Lease the next batch of ``job`` (seed spelling; ``None``: nothing to do).

    The same object as ``pybatchintory.acquire_batch``. Configured from ``PYBATCHINTORY_*``
    settings and a ``.env`` file in the working directory (or ``configure()``). 0.0.8's
    arguments work as they did: ``meta_table_name``, ``meta_table_cols`` (``uid``,
    ``weight``, ``item``: with ``item``, ``batch.items`` lists that column's values),
    ``batch_weight``, ``batch_count``, ``batch_id_min``, ``batch_id_max``.

    Raises:
        EventLoopRunning: Called inside a running event loop (use ``await pbi.acquire``).
        InvalidArgument: Both spellings of one argument, or no source at all.
    """
    _refuse_in_loop("acquire_batch")
    call = seed_call(
        source,
        weight=weight,
        count=count,
        max_weight=max_weight,
        max_count=max_count,
        id_start=id_start,
        id_end=id_end,
        meta_table_name=meta_table_name,
        meta_table_cols=meta_table_cols,
        batch_weight=batch_weight,
        batch_count=batch_count,
        batch_id_min=batch_id_min,
        batch_id_max=batch_id_max,
    )
    batch = _default_inventory().acquire(
        job,
        call.source,
        id_start=call.id_start,
        id_end=call.id_end,
        max_count=call.max_count,
        max_weight=call.max_weight,
    )
    if batch is not None:
        batch._item = call.item
    return batch


def acquire_batches(
    job: str,
    source: MetadataSource | str | None = None,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    iterations: int | None = None,
    meta_table_name: str | None = None,
    meta_table_cols: Mapping[str, str] | None = None,
    batch_weight: Weight | None = None,
    batch_count: int | None = None,
    batch_id_min: int | None = None,
    batch_id_max: int | None = None,
) -> Iterator[SyncBatch]:
    """Yield batches of ``job`` until none is left or ``iterations`` is reached.

    The same object as ``pybatchintory.acquire_batches``; the arguments of
    ``acquire_batch``, plus ``iterations``.

    Raises:
        EventLoopRunning: Called inside a running event loop (use ``pbi.leases``).
        InvalidArgument: Both spellings of one argument, or no source at all.
    """
    _refuse_in_loop("acquire_batches")
    call = seed_call(
        source,
        weight=weight,
        count=count,
        max_weight=max_weight,
        max_count=max_count,
        id_start=id_start,
        id_end=id_end,
        meta_table_name=meta_table_name,
        meta_table_cols=meta_table_cols,
        batch_weight=batch_weight,
        batch_count=batch_count,
        batch_id_min=batch_id_min,
        batch_id_max=batch_id_max,
    )
    batches = _default_inventory().leases(
        job,
        call.source,
        iterations=iterations,
        id_start=call.id_start,
        id_end=call.id_end,
        max_count=call.max_count,
        max_weight=call.max_weight,
    )
    return _with_item(batches, call.item)


def _with_item(batches: Iterator[SyncBatch], item: str | None) -> Iterator[SyncBatch]:
    for batch in batches:
        batch._item = item
        yield batch


def configure(dot_env: str | None = None, settings: Mapping[str, Any] | None = None) -> Settings:
    """The seed's ``configure``: set the settings of the calls that take none.

    Closes the default inventory, so the next ``acquire_batch`` uses them. See
    ``pybatchintory.settings.configure``.
    """
    configured = configure_settings(dot_env, settings)
    shutdown()
    return configured


def shutdown() -> None:
    """Close the default inventory and stop the background loop (also run at exit)."""
    global _default
    with _default_lock:
        inventory, _default = _default, None
    if inventory is not None:
        inventory.close()
    _loop.stop()


atexit.register(shutdown)
