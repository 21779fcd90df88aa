"""``Batch``: one leased attempt, its items, its settle, and the exit policy of ``async with``.

A ``Batch`` owns its state machine: running, then settled (``succeeded``, ``failed``,
``released``), or lost (a heartbeat or a settle found the lease gone). It writes through a
``Settler``, the narrow protocol of whoever keeps its lease (``pybatchintory._leases``): it
never sees the ``Inventory``.

Exit policy (see docs/architecture.md, "The life of a lease"): a clean exit records
``succeeded``; an ``Exception`` or an exception group records ``failed`` and is re-raised;
cancellation, ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` record
``released`` and are re-raised. The settle write runs in its own task, shielded from
cancellation and tracked by the lease keeper so that ``aclose()`` waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.to_thread

from pybatchintory.errors import (
    AlreadySettled,
    InvalidArgument,
    LeaseLost,
    StoreError,
)
from pybatchintory.models import LeaseGrant, Settlement, Status, Weight
from pybatchintory.protocols import BoundSource

__all__ = ("Batch", "Settler")

_LOST = "pybatchintory: lease lost"
_RELEASE_ON = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def _only_cancellations(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancellations(inner) for inner in exc.exceptions)
    return isinstance(exc, _RELEASE_ON)


def _is_async(func: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - inspects the method, not callability
    )


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def _call_arguments(args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``process``'s ``args`` and ``kwargs``, checked: a tuple or list, and a mapping."""
    if not isinstance(args, (tuple, list)):
        raise InvalidArgument(
            f"process(func, args=(), kwargs=None): args must be a tuple or list, got {args!r}"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidArgument(
            f"process(func, args=(), kwargs=None): kwargs must be a mapping, got {kwargs!r}"
        )
    return tuple(args), dict(kwargs or {})


def _check_logging(logging: object) -> None:
    """Refuse a ``logging`` text some store cannot hold (before anything is written)."""
    if logging is None:
        return
    if not isinstance(logging, str):
        raise InvalidArgument(f"logging must be a string, got {logging!r}")
    if "\x00" in logging:
        raise InvalidArgument(
            "logging must not contain NUL characters: PostgreSQL cannot store them"
        )


def _check_json(result: Any) -> None:
    """Refuse, before anything is written, a result that some store cannot hold."""
    try:
        # NaN and infinities are not JSON: PostgreSQL and MySQL/MariaDB refuse them.
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"a batch result must be JSON-serialisable: {exc}") from None
    if _has_nul(result):
        raise InvalidArgument(
            "a batch result must not contain NUL characters: PostgreSQL cannot store them"
        )


class Settler(Protocol):
    """What a ``Batch`` needs from whoever keeps its lease: a way to write its settle."""

    def failure(self, grant: LeaseGrant, exc: BaseException | str) -> Settlement:
        """The settlement that records ``exc`` (or a message) as the failure (retry or dead)."""
        ...

    def dropped(self, grant: LeaseGrant) -> bool:
        """The batch of ``grant`` was garbage-collected unsettled: release its lease.

        Returns whether its lease was still held (and is now being released).
        """
        ...

    def settle_nowait(self, batch: Batch, settlement: Settlement) -> asyncio.Task[None]:
        """Start writing ``settlement`` now, in a tracked task, without waiting for it.

        Raises:
            RuntimeError: Not called on the thread of a running event loop.
        """
        ...

    async def settle(self, batch: Batch, settlement: Settlement) -> None:
        """Write ``settlement`` (shielded from cancellation, drained on close).

        Raises:
            LeaseLost: The lease is gone; nothing changed.
            StoreError: The database kept failing until the lease would have run out.
        """
        ...


class Batch:
    """One leased attempt of one range of a job.

    Attributes:
        id: The attempt's row in the inventory.
        job: The job's name.
        meta_table: The source's name.
        meta_id_start: First id of the range (inclusive).
        meta_id_end: Last id of the range (inclusive).
        count: Rows of the range that pass the job's filter.
        weight: Their summed weight (0 without a weight column).
        attempt: 1 for a new range, 2 and up for retries.
        oversized: A single row heavier than ``max_weight``, handed out alone.
        token: The lease token that fences every settle.
        expires_at: When the lease runs out unless renewed (database clock, UTC).
        result: Set it in the body; stored as ``job_result`` on success.
    """

    def __init__(
        self,
        settler: Settler,
        grant: LeaseGrant,
        source: BoundSource,
        *,
        timeout: float | None = None,
    ) -> None:
        self._settler = settler
        self._grant = grant
        self._source = source
        self._timeout = timeout
        self.result: Any = None
        self._items: list[Mapping[str, Any]] | None = None
        self._status: Status | None = None
        self._lost = False
        self._task: asyncio.Task[Any] | None = None
        self._timeout_cm: asyncio.Timeout | None = None
        self._cancelled_for_loss = False
        self._loss_reported = False
        # When the lease was last known renewed (local monotonic clock): a failing settle
        # is retried until about then + lease_ttl.
        self._renewed_at = time.monotonic()
        self._writing: asyncio.Task[None] | None = None
        self._observers: list[Callable[[Batch], None]] = []

    # -- the range ------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The attempt's row in the inventory."""
        return self._grant.id

    @property
    def job(self) -> str:
        """The job's name."""
        return self._grant.job

    @property
    def meta_table(self) -> str:
        """The source's name."""
        return self._grant.meta_table

    @property
    def meta_id_start(self) -> int:
        """First id of the range (inclusive)."""
        return self._grant.meta_id_start

    @property
    def meta_id_end(self) -> int:
        """Last id of the range (inclusive)."""
        return self._grant.meta_id_end

    @property
    def count(self) -> int:
        """Rows of the range that pass the job's filter."""
        return self._grant.count

    @property
    def weight(self) -> Weight:
        """Their summed weight (0 without a weight column)."""
        return self._grant.weight

    @property
    def attempt(self) -> int:
        """1 for a new range, 2 and up for retries."""
        return self._grant.attempt

    @property
    def oversized(self) -> bool:
        """A single row heavier than ``max_weight``, handed out alone."""
        return self._grant.oversized

    @property
    def token(self) -> str:
        """The lease token that fences every settle."""
        return self._grant.token

    @property
    def expires_at(self) -> datetime:
        """When the lease runs out unless renewed (database clock, UTC)."""
        return self._grant.expires_at

    @property
    def status(self) -> Status:
        """``running`` until settled, then how it ended."""
        return self._status or Status.RUNNING

    @property
    def lost(self) -> bool:
        """True once a heartbeat found the lease gone."""
        return self._lost

    def __repr__(self) -> str:
        # A lost lease says so: the status this handle holds is not what the ledger has.
        state = "lease lost" if self._lost else str(self.status)
        return (
            f"<Batch {self.job!r} #{self.id} [{self.meta_id_start}, {self.meta_id_end}] "
            f"count={self.count} weight={self.weight} attempt={self.attempt} {state}>"
        )

    def describe(self) -> str:
        """The attempt, without a status: ``attempt 7 of job 'daily' [1, 1000]``."""
        return f"attempt {self.id} of job {self.job!r} [{self.meta_id_start}, {self.meta_id_end}]"

    async def items(self) -> list[Mapping[str, Any]]:
        """Every row of the range that passes the job's filter, in id order (cached)."""
        if self._items is None:
            self._items = await self._source.items(self.meta_id_start, self.meta_id_end)
        return self._items

    def iter_items(self, chunk_size: int = 5000) -> AsyncIterator[Mapping[str, Any]]:
        """The rows of the range, read ``chunk_size`` at a time (constant memory)."""
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be > 0, got {chunk_size}")
        return self._source.iter_items(self.meta_id_start, self.meta_id_end, chunk_size)

    # -- settling -------------------------------------------------------------------------

    def _claim_settle(self, status: Status) -> None:
        self._check_unsettled(status)
        self._status = status
        self._writing = None  # its write starts right after the claim
        self._changed()

    def _check_unsettled(self, status: Status) -> None:
        if self._status is not None:
            raise AlreadySettled(
                f"attempt {self.id} of job {self.job!r} was already settled as {self._status}"
            )
        if self._lost:
            self._loss_reported = True
            raise LeaseLost(
                f"the lease of attempt {self.id} of job {self.job!r} was lost; "
                f"its {status} was not recorded"
            )

    def _success_settlement(self, result: Any, logging: str | None = None) -> Settlement:
        value = self.result if result is None else result
        _check_json(value)
        _check_logging(logging)
        self._claim_settle(Status.SUCCEEDED)
        self.result = value
        return Settlement(self.id, self.token, Status.SUCCEEDED, result=value, logging=logging)

    def _error_settlement(
        self, exc: BaseException | str, result: Any = None, logging: str | None = None
    ) -> Settlement:
        if not isinstance(exc, (BaseException, str)):
            raise InvalidArgument(f"error() takes an exception or a message, got {exc!r}")
        if isinstance(exc, str) and "\x00" in exc:
            raise InvalidArgument("an error message must not contain NUL characters")
        _check_json(result)
        _check_logging(logging)
        self._claim_settle(Status.FAILED)
        settlement = self._settler.failure(self._grant, exc)
        return dataclasses.replace(settlement, result=result, logging=logging)

    def _release_settlement(self) -> Settlement:
        self._claim_settle(Status.RELEASED)
        return Settlement(self.id, self.token, Status.RELEASED, retry_delay=0.0)

    async def success(self, result: Any = None, *, logging: str | None = None) -> None:
        """Record the attempt as succeeded, with ``result`` (or ``self.result``) as JSON.

        ``logging`` is free text stored in the ledger's ``logging`` column (the seed's).

        Raises:
            InvalidArgument: ``result`` is not JSON-serialisable, or ``logging`` is not a
                string (nothing is written).
            LeaseLost: The lease is gone; nothing changed.
            AlreadySettled: This handle was settled before.
        """
        await self._settler.settle(self, self._success_settlement(result, logging))

    async def error(
        self, exc: BaseException | str, *, result: Any = None, logging: str | None = None
    ) -> None:
        """Record the attempt as failed: retried after a backoff, or dead.

        An exception records its type, message, traceback and fingerprint; a message string
        (the seed's ``batch.failed("...")``) is recorded with ``error_type`` ``"Error"``. A
        failed attempt may carry a ``result`` (JSON) too; ``logging`` is free text stored in
        the ``logging`` column, before the traceback.

        Raises:
            InvalidArgument: ``exc`` is neither an exception nor a string, or ``result`` is
                not JSON-serialisable (nothing is written).
            LeaseLost: The lease is gone; nothing changed.
            AlreadySettled: This handle was settled before.
        """
        await self._settler.settle(self, self._error_settlement(exc, result, logging))

    async def release(self) -> None:
        """Give the range back without fault; it is due again at once, no attempt used.

        Raises:
            LeaseLost: The lease is gone; nothing changed.
            AlreadySettled: This handle was settled before.
        """
        await self._settler.settle(self, self._release_settlement())

    # The ``_nowait`` settles are for synchronous code on the event loop's thread (a
    # done-callback, a pipeline's completion callback), which cannot await: each claims the
    # settle at once, so nothing (``aclose()`` included) can settle the batch otherwise,
    # then writes it in a task the lease keeper tracks and ``aclose()`` drains.

    def success_nowait(
        self, result: Any = None, *, logging: str | None = None
    ) -> asyncio.Task[None]:
        """Like ``success()``, for synchronous code on the event loop's thread.

        The settle is claimed before this returns; the write runs in a task that
        ``Inventory.aclose()`` waits for. Await the returned task to see how it ended (its
        caller usually cannot, so a failed write, ``LeaseLost`` or ``StoreError``, is also
        logged as a warning on the ``pybatchintory`` logger).

        Raises:
            InvalidArgument: ``result`` is not JSON-serialisable (nothing is claimed).
            LeaseLost: The lease is already known lost; nothing changed.
            AlreadySettled: This handle was settled before.
            RuntimeError: Not called on the thread of a running event loop.
        """
        asyncio.get_running_loop()
        return self._settler.settle_nowait(self, self._success_settlement(result, logging))

    def error_nowait(
        self, exc: BaseException | str, *, result: Any = None, logging: str | None = None
    ) -> asyncio.Task[None]:
        """Like ``error()``, for synchronous code on the event loop's thread.

        See ``success_nowait()`` for how the write runs and is reported.

        Raises:
            InvalidArgument: ``exc`` is not an exception (nothing is claimed).
            LeaseLost: The lease is already known lost; nothing changed.
            AlreadySettled: This handle was settled before.
            RuntimeError: Not called on the thread of a running event loop.
        """
        asyncio.get_running_loop()
        return self._settler.settle_nowait(self, self._error_settlement(exc, result, logging))

    def release_nowait(self) -> asyncio.Task[None]:
        """Like ``release()``, for synchronous code on the event loop's thread.

        See ``success_nowait()`` for how the write runs and is reported.

        Raises:
            LeaseLost: The lease is already known lost; nothing changed.
            AlreadySettled: This handle was settled before.
            RuntimeError: Not called on the thread of a running event loop.
        """
        asyncio.get_running_loop()
        return self._settler.settle_nowait(self, self._release_settlement())

    async def process(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``func(items, *args, **kwargs)`` and settle: success, failure or release.

        The seed's spelling: ``batch.process(func, (3,), {"label": "x"})``, as in the sync
        API. An async ``func`` (or an object with an async ``__call__``) is awaited; a plain one
        runs in a worker thread so heartbeats keep going. Its return value is stored as the
        result when it is JSON-serialisable. The ``timeout=`` the batch was acquired with
        bounds reading the items and ``func``, as it bounds the body of ``async with batch``
        (a plain ``func`` cannot be stopped: its thread runs on, and its result is discarded).

        Raises:
            InvalidArgument: ``args`` is not a tuple or list, or ``kwargs`` not a mapping
                (``func`` is not called, nothing is written).
            AlreadySettled: This handle was settled before (``func`` is not called).
            LeaseLost: The lease is gone (``func`` is not called).
        """
        args, kwargs = _call_arguments(args, kwargs)
        self._check_unsettled(Status.SUCCEEDED)
        try:
            async with asyncio.timeout(self._timeout):
                items = await self.items()
                if _is_async(func):
                    value = await func(items, *args, **kwargs)
                else:
                    value = await anyio.to_thread.run_sync(
                        functools.partial(func, items, *args, **kwargs)
                    )
        except BaseException as exc:
            await self._settle_on_exit(exc)
            raise
        try:
            _check_json(value)
            stored = value
        except InvalidArgument:
            stored = None
        await self.success(stored)
        return value

    # -- async with -----------------------------------------------------------------------

    async def __aenter__(self) -> Batch:
        self._task = asyncio.current_task()
        if self._timeout is not None:
            self._timeout_cm = asyncio.timeout(self._timeout)
            await self._timeout_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        original = exc
        if self._timeout_cm is not None:
            timeout_cm, self._timeout_cm = self._timeout_cm, None
            try:
                await timeout_cm.__aexit__(exc_type, exc, tb)
            except TimeoutError as timed_out:
                exc = timed_out
        task, self._task = self._task, None
        if self._cancelled_for_loss and isinstance(exc, asyncio.CancelledError):
            if task is not None:
                task.uncancel()
            raise LeaseLost(
                f"the lease of attempt {self.id} of job {self.job!r} was lost while running"
            ) from None
        if self._status is not None:
            # Settled in the body (success()/error()/release()): nothing left to record.
            if exc is not original and exc is not None:
                raise exc
            return False
        await self._settle_on_exit(exc)
        if exc is not original and exc is not None:
            raise exc
        return False

    async def _settle_on_exit(self, exc: BaseException | None) -> None:
        if self._status is not None:
            return
        if self._lost and self._loss_reported and exc is None:
            return  # the body already saw LeaseLost from a settle; do not raise it twice
        if exc is None:
            try:
                await self.success()
            except InvalidArgument as bad:
                await self.error(bad)
                raise
            return
        if _only_cancellations(exc):
            try:
                await self.release()
            except (LeaseLost, StoreError):
                pass  # cancellation wins; the range comes back when the lease expires
            return
        try:
            await self.error(exc)
        except LeaseLost as lost:
            raise lost from exc

    def __del__(self) -> None:
        # A batch nobody references can never be settled: without this its lease would be
        # renewed for as long as the Inventory lives. ``getattr``: ``__init__`` may not
        # have run to the end.
        settler = getattr(self, "_settler", None)
        if settler is None or getattr(self, "_status", None) is not None:
            return
        if getattr(self, "_lost", True):
            return
        if settler.dropped(self._grant):
            warnings.warn(
                f"{self!r} was garbage-collected while its lease was held; the lease is "
                "released. Settle every batch (success(), error(), release(), or "
                "`async with batch:`).",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )

    # -- transitions the lease keeper reports ------------------------------------------

    @property
    def _unsettled(self) -> bool:
        """Running: not settled (or its settle did not land), whether or not lost."""
        return self._status is None

    def _renewed(self, at: float) -> None:
        """A heartbeat that started at ``at`` (monotonic clock) renewed the lease."""
        self._renewed_at = at

    def _lease_left(self, ttl: float) -> float:
        """Seconds until the lease runs out, by the last renewal known here."""
        return self._renewed_at + ttl - time.monotonic()

    def _settle_failed(self, *, lost: bool) -> None:
        """The settle write did not land: running again, and ``lost`` if the lease is gone."""
        self._status = None
        if lost:
            self._lost = True
            self._loss_reported = True
        self._changed()

    def _writing_in(self, task: asyncio.Task[None]) -> None:
        """The settle claimed last is being written by ``task``."""
        self._writing = task
        task.add_done_callback(lambda _: self._changed())

    @property
    def _settling(self) -> bool:
        """A settle was claimed and its write has not ended yet."""
        return self._status is not None and (self._writing is None or not self._writing.done())

    def _observe(self, observer: Callable[[Batch], None]) -> None:
        """Call ``observer(batch)`` after every change: claimed, written, failed, lost."""
        self._observers.append(observer)

    def _changed(self) -> None:
        for observer in self._observers:
            observer(self)

    def _on_lost(self) -> None:
        """Called by the heartbeat when the lease is gone: cancel a running body."""
        if self._status is not None or self._lost:
            return
        self._lost = True
        self._changed()
        task = self._task
        if task is not None and not task.done():
            self._cancelled_for_loss = True
            task.cancel(_LOST)
