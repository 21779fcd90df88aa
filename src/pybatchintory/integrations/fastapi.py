"""FastAPI glue: an ``Inventory`` per app, leases per request, backfills, error mapping.

Needs the ``fastapi`` extra (``pip install pybatchintory[fastapi]``)::

    from fastapi import Depends, FastAPI
    from pybatchintory.integrations import fastapi as pbi_fastapi

    app = FastAPI(lifespan=pbi_fastapi.inventory_lifespan("postgresql+asyncpg://..."))
    pbi_fastapi.install_exception_handlers(app)
    app.include_router(pbi_fastapi.status_router(), prefix="/inventory")

    next_batch = pbi_fastapi.lease_dependency("thumbnails", files, max_count=100)

    @app.post("/work")
    async def work(batch: pbi.Batch = Depends(next_batch, scope="function")) -> dict:
        ...

- ``inventory_lifespan(...)`` opens the ``Inventory`` on ``app.state``, starts the
  consumers and (if asked) resumes unfinished backfills; on shutdown it sets ``stop``,
  waits at most ``grace`` seconds for them to finish their batch, cancels the rest (their
  batches are released) and closes the ``Inventory`` (which drains settles in flight).
- ``InventoryDep`` / ``get_inventory``: the app's ``Inventory`` as a dependency.
- ``lease_dependency(job, source, ...)``: a ``yield`` dependency that leases one batch for
  the request; a clean return records ``succeeded``, an exception ``failed``, an
  ``HTTPException`` below 500 ``released`` (the client's mistake burns no attempt),
  cancellation (a client gone) ``released``. With ``Depends(..., scope="function")`` the
  settle is written before the response is sent, so a 200 means recorded.
- ``schedule_backfill(background_tasks, inv, job, backfill, ...)`` leases the backfill's
  first batch before the response (so the job is validated and recorded: ``JobConflict``
  -> 409, ``InvalidArgument`` -> 422), then runs it on the app's lifespan, stopping
  between batches on shutdown.
- ``install_exception_handlers(app)``: ``UnknownJob`` 404, ``JobConflict`` 409,
  ``InvalidArgument`` 422, ``NoBatchAvailable`` 404, ``StoreUnavailable`` 503 with
  ``Retry-After``.
- ``status_router()``: jobs, backlog (ETA in seconds), error groups, and ``retry`` only
  when enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Annotated, Any

from pybatchintory.batch import Batch
from pybatchintory.errors import (
    InvalidArgument,
    JobConflict,
    MissingDriver,
    NoBatchAvailable,
    PybatchintoryError,
    StoreError,
    StoreUnavailable,
    UnknownJob,
)
from pybatchintory.inventory import Inventory
from pybatchintory.models import Backlog, ErrorGroup, JobStatus
from pybatchintory.protocols import MetadataSource

try:
    from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDriver(
        "pybatchintory.integrations.fastapi needs FastAPI. "
        "Install it with: pip install pybatchintory[fastapi]"
    ) from exc

__all__ = (
    "Backfill",
    "BackfillStarted",
    "Consumer",
    "InventoryDep",
    "get_inventory",
    "install_exception_handlers",
    "inventory_lifespan",
    "lease_dependency",
    "schedule_backfill",
    "status_router",
)

logger = logging.getLogger("pybatchintory.integrations.fastapi")

STATE_ATTR = "pybatchintory"
"""The attribute of ``app.state`` that holds the lifespan's runtime."""

Handler = Callable[[Batch], Awaitable[Any]]
"""What a consumer or backfill does with one batch; its return value is the stored result."""


@dataclass(frozen=True)
class Consumer:
    """A long-running consumer the lifespan starts: lease, ``handler(batch)``, settle.

    Runs ``Inventory.consume``: a failure of ``handler`` is recorded as the attempt's
    failure and the loop goes on; an unreachable database is retried with backoff; when
    nothing is left it polls every ``poll_interval`` seconds until shutdown, which stops it
    between batches.

    Attributes:
        job: The job's name.
        source: Its metadata source.
        handler: ``async handler(batch)``; its return value is stored as the result.
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
        concurrency: Batches processed at once.
        poll_interval: Seconds between looks at the ledger when nothing is due.
    """

    job: str
    source: MetadataSource | str
    handler: Handler
    max_count: int | None = None
    max_weight: int | None = None
    concurrency: int = 1
    poll_interval: float = 1.0


@dataclass(frozen=True)
class Backfill:
    """How to process one kind of backfill: its source, its handler, its batch caps.

    Attributes:
        source: The metadata source of the backfill's jobs.
        handler: ``async handler(batch)``; its return value is stored as the result.
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
    """

    source: MetadataSource | str
    handler: Handler
    max_count: int | None = None
    max_weight: int | None = None


@dataclass(frozen=True)
class BackfillStarted:
    """What ``schedule_backfill`` returns (a JSON-able response body).

    Attributes:
        job: The backfill's job.
        first_batch: The attempt id of the batch leased before the response, or ``None``
            when the window held nothing left to do.
    """

    job: str
    first_batch: int | None


@dataclass
class _Runtime:
    """What the lifespan keeps on ``app.state``: the inventory, ``stop`` and its tasks."""

    inventory: Inventory
    stop: asyncio.Event
    backfills: Mapping[str, Backfill]
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s ended with an error", task.get_name(), exc_info=task.exception())


# The runtime of each Inventory a lifespan opened: schedule_backfill finds it from ``inv``.
_RUNTIMES: weakref.WeakKeyDictionary[Inventory, _Runtime] = weakref.WeakKeyDictionary()


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}")


def inventory_lifespan(
    url: str | None = None,
    *,
    inventory: Inventory | None = None,
    consumers: Sequence[Consumer] = (),
    backfills: Mapping[str, Backfill] | None = None,
    resume_backfills: bool = False,
    grace: float = 10.0,
    **inventory_options: Any,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that owns an ``Inventory`` for the app's life.

    Args:
        url: The inventory database (ignored when ``inventory`` is given).
        inventory: Use this ``Inventory`` (still opened and closed by the lifespan).
        consumers: Consumers to run while the app is up.
        backfills: Kinds of backfill by job-name prefix: ``schedule_backfill`` and the
            resume on startup look a job's handler up by the longest prefix it starts with.
        resume_backfills: On startup, resume every recorded job with a window whose name
            has a prefix of ``backfills`` and that still has rows, retries or leases left.
        grace: Seconds the shutdown waits for consumers and backfills to finish the batch
            they hold before cancelling them (a cancelled batch is ``released``).
        **inventory_options: ``Inventory`` keyword arguments (``lease_ttl``, ...).

    Returns:
        The lifespan function: ``FastAPI(lifespan=inventory_lifespan(...))``.
    """
    _positive("grace", grace)
    if inventory is not None and (url is not None or inventory_options):
        raise InvalidArgument("pass either inventory= or url= and Inventory options, not both")
    for consumer in consumers:
        if not isinstance(consumer, Consumer):
            raise InvalidArgument(f"consumers takes Consumer objects, got {consumer!r}")
        concurrency = consumer.concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be a positive integer: {concurrency!r}")
        _positive("poll_interval", consumer.poll_interval)
    kinds = dict(backfills or {})
    for prefix, kind in kinds.items():
        if not isinstance(prefix, str) or not isinstance(kind, Backfill):
            raise InvalidArgument(f"backfills maps name prefixes to Backfill: {prefix!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inv = inventory if inventory is not None else Inventory(url, **inventory_options)
        await inv.open()
        runtime = _Runtime(inv, asyncio.Event(), kinds)
        setattr(app.state, STATE_ATTR, runtime)
        _RUNTIMES[inv] = runtime
        try:
            for consumer in consumers:
                runtime.spawn(_consume(inv, consumer, runtime.stop), f"consumer {consumer.job}")
            if resume_backfills and kinds:
                await _resume(runtime)
            yield
        finally:
            runtime.stop.set()
            await _wind_down(runtime, grace)
            _RUNTIMES.pop(inv, None)
            await inv.aclose()

    return lifespan


async def _wind_down(runtime: _Runtime, grace: float) -> None:
    """Let the tasks finish their batch within ``grace``, then cancel what is left."""
    tasks = set(runtime.tasks)
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        logger.warning("cancelled %d task(s) still busy after %.1f s", len(pending), grace)
        await asyncio.wait(pending)


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; true when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _run_one(batch: Batch, handler: Handler) -> None:
    """``handler(batch)`` inside the batch's exit policy; a failure is recorded, not raised."""
    try:
        async with batch:
            batch.result = await handler(batch)
    except Exception:
        logger.exception("batch %s of job %r failed", batch.id, batch.job)


async def _consume(inv: Inventory, consumer: Consumer, stop: asyncio.Event) -> None:
    report = await inv.consume(
        consumer.job,
        consumer.source,
        consumer.handler,
        max_count=consumer.max_count,
        max_weight=consumer.max_weight,
        concurrency=consumer.concurrency,
        poll_interval=consumer.poll_interval,
        stop=stop,
    )
    logger.info("consumer %r stopped: %s", consumer.job, report)


def _kind(runtime: _Runtime, job: str) -> Backfill | None:
    matches = [prefix for prefix in runtime.backfills if job.startswith(prefix)]
    return runtime.backfills[max(matches, key=len)] if matches else None


async def _resume(runtime: _Runtime) -> None:
    inv = runtime.inventory
    for line in await inv.status():
        backfill = _kind(runtime, line.job)
        if backfill is None or line.id_end is None:
            continue
        source = backfill.source if not isinstance(backfill.source, str) else None
        left = await inv.backlog(line.job, source)
        if left.count == 0 and left.running == 0 and left.retry_due == 0:
            continue
        logger.info("resuming backfill %r", line.job)
        runtime.spawn(
            _backfill(inv, line.job, backfill, line.id_start, line.id_end, None, runtime.stop),
            f"backfill {line.job}",
        )


async def _backfill(
    inv: Inventory,
    job: str,
    backfill: Backfill,
    id_start: int | None,
    id_end: int | None,
    first: Batch | None,
    stop: asyncio.Event,
) -> None:
    """Process ``first``, then lease and process batches until the window is done or stop.

    An unreachable database (``StoreError``) is retried with a growing backoff.
    """
    if first is not None:
        await _run_one(first, backfill.handler)
    source = None if isinstance(backfill.source, str) else backfill.source
    backoff = 1.0
    while not stop.is_set():
        try:
            batch = await inv.acquire(
                job,
                backfill.source,
                max_count=backfill.max_count,
                max_weight=backfill.max_weight,
                id_start=id_start,
                id_end=id_end,
            )
            left = None if batch is not None else await inv.backlog(job, source)
        except StoreError as exc:
            logger.warning("backfill %r: the inventory failed (%s); retrying", job, exc)
            if await _stopped(stop, backoff):
                return
            backoff = min(backoff * 2, 30.0)
            continue
        backoff = 1.0
        if batch is not None:
            await _run_one(batch, backfill.handler)
        elif left is not None and left.running == 0 and left.retry_due == 0:
            logger.info("backfill %r is done", job)
            return
        elif await _stopped(stop, 1.0):
            return


# -- dependencies ---------------------------------------------------------------------------


def _runtime(request: Request) -> _Runtime:
    runtime = getattr(request.app.state, STATE_ATTR, None)
    if not isinstance(runtime, _Runtime):
        raise RuntimeError(
            "no Inventory on app.state: create the app with "
            "FastAPI(lifespan=pybatchintory.integrations.fastapi.inventory_lifespan(...))"
        )
    return runtime


def get_inventory(request: Request) -> Inventory:
    """The app's ``Inventory`` (opened by ``inventory_lifespan``), for ``Depends``."""
    return _runtime(request).inventory


InventoryDep = Annotated[Inventory, Depends(get_inventory)]
"""``inv: InventoryDep`` in a path operation receives the app's ``Inventory``."""


def lease_dependency(
    job: str,
    source: MetadataSource | str,
    *,
    max_count: int | None = None,
    max_weight: int | None = None,
    id_start: int | None = None,
    id_end: int | None = None,
    empty_status: int = 404,
) -> Callable[[Request], AsyncIterator[Batch]]:
    """A ``yield`` dependency that leases one batch of ``job`` for the request.

    Use it as ``Depends(lease_dependency(...), scope="function")``: the batch is settled
    when the path operation returns, before the response is sent, so a 200 means the
    success is recorded. (With the default scope the settle happens after the response.)

    How the batch ends: a clean return records ``succeeded`` (with ``batch.result``); an
    ``HTTPException`` below 500 records ``released`` (no attempt burnt) and is re-raised;
    any other exception records ``failed``; cancellation (the client went away) records
    ``released``.

    Args:
        job: The job's name.
        source: Its metadata source.
        max_count: Row cap of the batch.
        max_weight: Weight cap of the batch.
        id_start: First id of the job's window.
        id_end: Last id of the job's window.
        empty_status: The status of the ``HTTPException`` raised when nothing is due.
    """

    async def leased_batch(request: Request) -> AsyncIterator[Batch]:
        inv = get_inventory(request)
        batch = await inv.acquire(
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
        )
        if batch is None:
            raise HTTPException(empty_status, f"nothing to do for job {job!r}")
        async with batch:
            try:
                yield batch
            except HTTPException as exc:
                if exc.status_code < 500 and batch.status == "running":
                    await batch.release()
                raise

    return leased_batch


async def schedule_backfill(
    background_tasks: BackgroundTasks,
    inv: Inventory,
    job: str,
    backfill: Backfill,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
) -> BackfillStarted:
    """Validate and record a backfill of ``[id_start, id_end]`` now, run it after the response.

    The first batch is leased before this returns, so a bad window or limit raises
    ``InvalidArgument`` (422 with ``install_exception_handlers``) and a job recorded with
    another source or window raises ``JobConflict`` (409) while the client still waits.
    The rest runs as a task of the app's lifespan (when ``inv`` is the lifespan's), which
    stops it between batches on shutdown; otherwise in the request's background tasks.

    Returns:
        The job and the id of the first leased attempt (``None``: nothing left to do).
    """
    first = await inv.acquire(
        job,
        backfill.source,
        max_count=backfill.max_count,
        max_weight=backfill.max_weight,
        id_start=id_start,
        id_end=id_end,
    )
    runtime = _RUNTIMES.get(inv)
    stop = runtime.stop if runtime is not None else asyncio.Event()
    work = _backfill(inv, job, backfill, id_start, id_end, first, stop)
    if runtime is not None:
        # Started after the response by the background task, owned by the lifespan.
        background_tasks.add_task(_hand_over, runtime, work, f"backfill {job}")
    else:
        background_tasks.add_task(_await, work)
    return BackfillStarted(job=job, first_batch=None if first is None else first.id)


async def _await(work: Awaitable[Any]) -> None:
    await work


async def _hand_over(runtime: _Runtime, work: Awaitable[Any], name: str) -> None:
    # Async, so that Starlette runs it on the loop (a plain function goes to a thread).
    runtime.spawn(work, name)


# -- errors -----------------------------------------------------------------------------------

_STATUS: tuple[tuple[type[PybatchintoryError], int], ...] = (
    (UnknownJob, 404),
    (NoBatchAvailable, 404),
    (JobConflict, 409),
    (InvalidArgument, 422),
    (StoreUnavailable, 503),
)


def install_exception_handlers(app: FastAPI, *, retry_after: int = 5) -> None:
    """Answer pybatchintory's errors with their HTTP status instead of a 500.

    ``UnknownJob`` and ``NoBatchAvailable`` -> 404, ``JobConflict`` -> 409,
    ``InvalidArgument`` -> 422, ``StoreUnavailable`` -> 503 with ``Retry-After:
    retry_after``. The body is ``{"detail": message, "error": exception type}``.
    """

    def handler_for(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            headers = {"Retry-After": str(retry_after)} if status == 503 else None
            return JSONResponse(
                {"detail": str(exc), "error": type(exc).__name__},
                status_code=status,
                headers=headers,
            )

        return handle

    for error, status in _STATUS:
        app.add_exception_handler(error, handler_for(status))


# -- the status router ------------------------------------------------------------------------


def _job(line: JobStatus) -> dict[str, Any]:
    return {
        "job": line.job,
        "meta_table": line.meta_table,
        "cursor": line.cursor,
        "id_start": line.id_start,
        "id_end": line.id_end,
        "counts": dict(line.counts),
        "last_success": None if line.last_success is None else line.last_success.isoformat(),
    }


def _backlog(job: str, left: Backlog) -> dict[str, Any]:
    return {
        "job": job,
        "count": left.count,
        "weight": left.weight,
        "retry_due": left.retry_due,
        "dead": left.dead,
        "running": left.running,
        "eta_seconds": None if left.eta is None else left.eta.total_seconds(),
    }


def _errors(group: ErrorGroup) -> dict[str, Any]:
    return {
        "fingerprint": group.fingerprint,
        "error_type": group.error_type,
        "error_message": group.error_message,
        "count": group.count,
        "first_seen": group.first_seen.isoformat(),
        "last_seen": group.last_seen.isoformat(),
        "attempt_ids": list(group.attempt_ids),
    }


def status_router(*, enable_retry: bool = False, tags: Sequence[str] = ("inventory",)) -> APIRouter:
    """Read-only routes over the ledger (and ``retry`` when ``enable_retry``).

    - ``GET /jobs``: one line per job (cursor, window, attempts by status, last success).
    - ``GET /jobs/{job}/backlog``: rows and retries left, dead ranges, leases running,
      ``eta_seconds``.
    - ``GET /jobs/{job}/errors``: failed attempts grouped by fingerprint.
    - ``POST /jobs/{job}/retry`` (only with ``enable_retry``): revive dead ranges, all or
      those of ``?fingerprint=``; answers ``{"revived": n}``.

    An unknown job answers 404 (``install_exception_handlers`` maps ``UnknownJob``).
    Include it with a prefix and your own auth dependencies:
    ``app.include_router(status_router(), prefix="/inventory", dependencies=[...])``.
    """
    router = APIRouter(tags=list(tags))

    @router.get("/jobs")
    async def jobs(inv: InventoryDep) -> list[dict[str, Any]]:
        return [_job(line) for line in await inv.status()]

    @router.get("/jobs/{job}/backlog")
    async def backlog(job: str, inv: InventoryDep) -> dict[str, Any]:
        return _backlog(job, await inv.backlog(job))

    @router.get("/jobs/{job}/errors")
    async def errors(job: str, inv: InventoryDep) -> list[dict[str, Any]]:
        return [_errors(group) for group in await inv.errors(job)]

    if enable_retry:

        @router.post("/jobs/{job}/retry")
        async def retry(
            job: str, inv: InventoryDep, fingerprint: str | None = None
        ) -> dict[str, int]:
            return {"revived": await inv.retry(job, fingerprint=fingerprint)}

    return router
