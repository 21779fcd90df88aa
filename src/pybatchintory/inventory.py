"""``Inventory``: the object users hold, a thin facade over three parts.

- ``Leases`` (``_leases``): the leases this owner holds, their heartbeat, the settles in
  flight and the give-backs of cancelled acquires; every ``Batch`` settles through it.
- ``Jobs`` (``_jobs``): bound sources, recorded job definitions and the planner.
- ``Operator`` (``_operator``): the reads of the ledger and the operator's controls.

They share a ``Database`` (``_database``): the inventory engine and store, opened on first
use. ``aclose()`` drains the settles in flight (bounded), releases leases nobody settled,
and disposes the engines the ``Inventory`` created. See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pybatchintory._consumer import ConsumeReport, Handler, consume
from pybatchintory._database import Database
from pybatchintory._group import BatchGroup
from pybatchintory._jobs import Jobs
from pybatchintory._leases import LeaseContext, Leases, lease_policy
from pybatchintory._operator import AuditFinding, Operator
from pybatchintory._planning import check_poll_interval, is_seconds
from pybatchintory._registry import normalise_url
from pybatchintory._stopping import StopSignal, as_stop
from pybatchintory.batch import Batch, _check_json
from pybatchintory.errors import AlreadySettled, InvalidArgument, StoreError
from pybatchintory.models import (
    Attempt,
    Backlog,
    ErrorGroup,
    JobStatus,
    PlannedRange,
    Settlement,
    Status,
    Weight,
)
from pybatchintory.protocols import InventoryStore, MetadataSource
from pybatchintory.settings import Settings, current_settings
from pybatchintory.sources import SourceDefaults
from pybatchintory.weights import as_json

__all__ = ("Inventory", "LeaseContext", "settings_defaults")


def settings_defaults(settings: Settings) -> SourceDefaults:
    """The source defaults named by ``PYBATCHINTORY_META_*`` (url, id, weight, timestamp)."""
    return SourceDefaults(
        url=None if settings.meta_url is None else settings.meta_url.get_secret_value(),
        id=settings.meta_id,
        weight=settings.meta_weight,
        timestamp=settings.meta_timestamp,
    )


class Inventory:
    """The ledger of ranges handed out to batch jobs.

    Args:
        url: The inventory database (SQLAlchemy URL); the scheme picks the adapter.
            Default: ``sqlite+aiosqlite:///pybatchintory.db``.
        owner: Lease owner name; must be unique per ``Inventory``. Default: host:pid:random.
        lease_ttl: Seconds a lease lives without a heartbeat; heartbeats every ``ttl/3``.
        max_attempts: Failed or expired attempts before a range is dead.
        retry_delay: Base of the backoff ``retry_delay * 2**(failures-1)`` (with jitter).
        table_prefix: Prefix of the inventory's table names.
        code_version: Recorded with every failure (e.g. a git sha).
        engine: Use this engine instead of creating one from ``url`` (not disposed here).
        settle_timeout: How long ``aclose()`` waits for settle writes in flight.
        source_defaults: How a source named by a string is read (id, weight and timestamp
            columns) and where a ``MetaTable`` without ``url=`` lives; ``from_settings()``
            fills it from ``PYBATCHINTORY_META_*``. Default: the inventory's database, an
            ``id`` column, no weight.

    Raises:
        InvalidArgument: A setting is out of range.
        UnsupportedURL: No adapter for the URL's scheme.
        MissingDriver: The adapter's driver is not installed.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        owner: str | None = None,
        lease_ttl: float = 60.0,
        max_attempts: int = 3,
        retry_delay: float = 0.0,
        table_prefix: str = "",
        code_version: str | None = None,
        engine: AsyncEngine | None = None,
        settle_timeout: float = 30.0,
        source_defaults: SourceDefaults | None = None,
    ) -> None:
        policy = lease_policy(
            owner=owner,
            lease_ttl=lease_ttl,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            code_version=code_version,
            settle_timeout=settle_timeout,
        )
        if table_prefix and not table_prefix.replace("_", "").isalnum():
            raise InvalidArgument("table_prefix may contain only letters, digits and underscores")
        self.url = url or "sqlite+aiosqlite:///pybatchintory.db"
        self.owner = policy.owner
        self.lease_ttl = policy.lease_ttl
        self.max_attempts = policy.max_attempts
        self.retry_delay = policy.retry_delay
        self.table_prefix = table_prefix
        self.code_version = policy.code_version
        self.settle_timeout = policy.settle_timeout
        self._db = Database(self.url, table_prefix=table_prefix, engine=engine)
        self._leases = Leases(self._db, policy)
        self._jobs = Jobs(self._db, source_defaults)
        self._operator = Operator(self._db, self._jobs, owner=self.owner, max_attempts=max_attempts)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Inventory:
        """An ``Inventory`` configured from ``PYBATCHINTORY_*`` settings (or ``settings``).

        ``META_URL``, ``META_ID``, ``META_WEIGHT`` and ``META_TIMESTAMP`` reach every call:
        they complete a source named by a string (``source="files"``) and place a
        ``MetaTable`` without ``url=``, and the reads of a recorded job (``backlog``,
        ``audit``) find its metadata table through them.
        """
        s = settings or current_settings()
        options: dict[str, Any] = {
            "owner": s.owner,
            "lease_ttl": s.lease_ttl,
            "max_attempts": s.max_attempts,
            "retry_delay": s.retry_delay,
            "table_prefix": s.table_prefix,
            "code_version": s.code_version,
            "source_defaults": settings_defaults(s),
        }
        options.update(overrides)
        return cls(s.inventory_url.get_secret_value(), **options)

    def __repr__(self) -> str:
        return f"Inventory({normalise_url(self.url)!r}, owner={self.owner!r})"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def store(self) -> InventoryStore:
        """The store (after ``open()``)."""
        return self._db.store

    @property
    def engine(self) -> AsyncEngine:
        """The inventory database engine (after ``open()``)."""
        return self._db.engine

    async def open(self) -> Inventory:
        """Connect and create the schema if missing. Called by ``async with``."""
        await self._db.open()
        return self

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Bring the inventory's schema up to date (``pybatchintory migrate``).

        Works on a schema too old to ``open()``. Returns the SQL statements applied (or,
        with ``dry_run``, that would be), in order: none when the schema is current.

        Raises:
            SchemaMismatch: The schema is newer than this pybatchintory.
        """
        return await self._db.migrate(dry_run=dry_run)

    async def __aenter__(self) -> Inventory:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Drain settles in flight, release unsettled leases, stop heartbeats, dispose."""
        if self._db.closed:
            return
        self._db.closed = True
        await self._leases.aclose()
        await self._db.aclose()

    # -- leasing --------------------------------------------------------------------------

    async def _acquire(
        self,
        job: str,
        source: MetadataSource | str,
        n: int,
        *,
        max_count: int | None,
        max_weight: Weight | None,
        id_start: int | None,
        id_end: int | None,
        timeout: float | None = None,
    ) -> list[Batch]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be a positive integer, got {n!r}")
        if timeout is not None and (not is_seconds(timeout) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds: {timeout!r}")
        if self._db.closed:
            raise RuntimeError("this Inventory was closed")
        id_start, id_end = await self._jobs.window(job, id_start, id_end)
        bound, limits = await self._jobs.prepare(
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
        )
        return await self._leases.acquire(
            job,
            bound,
            self._jobs.planner(job, bound, limits, id_end),
            n=n,
            config={
                "max_count": limits.max_count,
                "max_weight": as_json(limits.max_weight),
                "lease_ttl": self.lease_ttl,
                "max_attempts": self.max_attempts,
                "code_version": self.code_version,
            },
            timeout=timeout,
        )

    async def acquire(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        timeout: float | None = None,
    ) -> Batch | None:
        """Lease the next range of ``job``: a retry that is due, else a new range.

        Returns ``None`` when there is nothing to do. Settle the batch with ``success()``,
        ``error()`` or ``release()`` from any task, or use it as ``async with batch:``.
        """
        batches = await self._acquire(
            job,
            source,
            1,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
            timeout=timeout,
        )
        return batches[0] if batches else None

    async def acquire_many(
        self,
        job: str,
        source: MetadataSource | str,
        n: int,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        timeout: float | None = None,
    ) -> list[Batch]:
        """Lease up to ``n`` ranges of ``job`` in one transaction (possibly none)."""
        return await self._acquire(
            job,
            source,
            n,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
            timeout=timeout,
        )

    def _acquire_call(
        self,
        job: str,
        source: MetadataSource | str,
        max_count: int | None,
        max_weight: Weight | None,
        id_start: int | None,
        id_end: int | None,
        timeout: float | None,
    ) -> Callable[[], Awaitable[Batch | None]]:
        """``self.acquire`` with one call's arguments bound (for ``lease`` and ``consume``)."""
        return functools.partial(
            self.acquire,
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
            timeout=timeout,
        )

    def lease(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        wait: bool = False,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        stop: StopSignal | None = None,
    ) -> LeaseContext:
        """``async with inv.lease(job, source) as batch:`` leases, runs, and settles.

        With ``wait=True`` it polls every ``poll_interval`` seconds until a batch is
        available; setting ``stop`` (an ``asyncio.Event`` or ``anyio.Event``) ends that
        wait at once, without a cancel.

        Raises:
            NoBatchAvailable: On entry, when there is nothing to do and ``wait`` is false,
                or when ``stop`` is set before a batch was leased.
        """
        interval = check_poll_interval(poll_interval)
        checked_stop = as_stop(stop)
        acquire = self._acquire_call(job, source, max_count, max_weight, id_start, id_end, timeout)
        return LeaseContext(acquire, job, wait=wait, poll_interval=interval, stop=checked_stop)

    async def consume(
        self,
        job: str,
        source: MetadataSource | str,
        handler: Handler,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        concurrency: int = 1,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        stop: StopSignal | None = None,
    ) -> ConsumeReport:
        """Run ``handler(batch)`` on every batch of ``job``, as a service, until ``stop``.

        ``concurrency`` workers each lease a batch and run the handler under
        ``async with batch``: a return records ``succeeded`` (a value other than ``None``
        is stored as the result), an exception ``failed``; either way the loop goes on.
        ``LeaseLost`` and ``StoreError`` are logged and retried with a growing backoff.
        With nothing to do a worker waits ``poll_interval`` seconds. Setting ``stop`` (an
        ``asyncio.Event`` or ``anyio.Event``) ends the run between batches: batches in
        hand finish first. Cancelling the call releases the batches in hand. Without
        ``stop`` it runs until cancelled (``pbi.run_service`` wires SIGTERM to ``stop``).

        Returns:
            How many batches ended which way.

        Raises:
            InvalidArgument: A setting is out of range (before anything is leased).
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be a positive integer: {concurrency!r}")
        interval = check_poll_interval(poll_interval)
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable: {handler!r}")
        checked_stop = as_stop(stop)
        acquire = self._acquire_call(job, source, max_count, max_weight, id_start, id_end, timeout)
        # Bad arguments and a job conflict raise here, before any worker starts; a database
        # that is not up yet is the workers' to wait for.
        with contextlib.suppress(StoreError):
            await self._jobs.prepare(
                job,
                source,
                max_count=max_count,
                max_weight=max_weight,
                id_start=id_start,
                id_end=id_end,
            )
        return await consume(
            acquire,
            handler,
            concurrency=concurrency,
            poll_interval=interval,
            stop=checked_stop,
        )

    def group(self) -> BatchGroup:
        """``async with inv.group() as group:`` for batches settled away from their acquire.

        ``group.acquire(...)`` and ``group.acquire_many(...)`` take the arguments of
        ``acquire`` and ``acquire_many``; the group counts ``outstanding`` and
        ``settling`` batches, ``await group.wait_settled()`` waits for all of them, and
        on exit it releases what nobody settled and waits for every settle write.
        """
        return BatchGroup(self.acquire_many)

    async def leases(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        iterations: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Batch]:
        """Yield batches one after another until none is left or ``iterations`` is reached.

        Use each as ``async with batch:`` so it is settled by the exit policy.
        """
        if iterations is not None and (
            isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1
        ):
            raise InvalidArgument(f"iterations must be a positive integer: {iterations!r}")
        done = 0
        while iterations is None or done < iterations:
            batch = await self.acquire(
                job,
                source,
                max_count=max_count,
                max_weight=max_weight,
                id_start=id_start,
                id_end=id_end,
                timeout=timeout,
            )
            if batch is None:
                return
            done += 1
            yield batch

    async def settle_many(
        self,
        succeeded: Iterable[Batch] = (),
        *,
        failed: Mapping[Batch, BaseException] | Iterable[tuple[Batch, BaseException]] = (),
        released: Iterable[Batch] = (),
    ) -> list[Batch]:
        """End many batches at once: one fenced statement per 50, each by its own token.

        ``succeeded`` records each batch's ``result``; ``failed`` maps a batch to its
        exception (a retry after the backoff, or dead, as ``error()``); ``released`` gives
        ranges back. With ``acquire_many`` this is the queue path: a batch of leases taken
        and ended in two round trips.

        Returns the batches whose lease was gone (taken over, expired, or already known
        lost): nothing was recorded for them, and each is marked ``lost``. Every other
        batch was settled. Like ``success()``, the write runs in its own task, shielded
        from cancellation, and a failing database is retried while the leases last.

        Raises:
            InvalidArgument: A batch appears twice, is not one of this inventory's, a
                ``failed`` value is not an exception, or a result is not JSON (nothing
                is written).
            AlreadySettled: A batch was settled before (nothing is written).
            StoreError: The database kept failing until a lease would have run out;
                every batch is running again, unsettled.
        """
        pairs = failed.items() if isinstance(failed, Mapping) else failed
        wanted: list[tuple[Batch, Status, BaseException | None]] = [
            *((batch, Status.SUCCEEDED, None) for batch in succeeded),
            *((batch, Status.FAILED, exc) for batch, exc in pairs),
            *((batch, Status.RELEASED, None) for batch in released),
        ]
        seen: set[int] = set()
        for batch, status, exc in wanted:
            if not isinstance(batch, Batch) or not batch._kept_by(self._leases):
                raise InvalidArgument(f"settle_many takes this inventory's batches, got {batch!r}")
            if id(batch) in seen:
                raise InvalidArgument(f"{batch!r} is named twice in settle_many")
            seen.add(id(batch))
            if batch.status is not Status.RUNNING:
                raise AlreadySettled(
                    f"attempt {batch.id} of job {batch.job!r} was already settled as {batch.status}"
                )
            if status is Status.FAILED and not isinstance(exc, BaseException):
                raise InvalidArgument(f"settle_many: failed takes exceptions, got {exc!r}")
            if status is Status.SUCCEEDED:
                _check_json(batch.result)
        known_lost = [batch for batch, _, _ in wanted if batch.lost]
        settles: list[tuple[Batch, Settlement]] = []
        for batch, status, exc in wanted:
            if batch.lost:
                continue
            if status is Status.SUCCEEDED:
                settles.append((batch, batch._success_settlement(None)))
            elif exc is not None:
                settles.append((batch, batch._error_settlement(exc)))
            else:
                settles.append((batch, batch._release_settlement()))
        if not settles:
            return known_lost
        return known_lost + await self._leases.settle_many(settles)

    # -- the operator's reads and controls (see ``_operator``) ----------------------------

    async def backlog(self, job: str, source: MetadataSource | None = None) -> Backlog:
        """What is left for ``job``: rows after the cursor, retries, dead ranges, ETA."""
        return await self._operator.backlog(job, source)

    async def batches(
        self,
        job: str,
        status: Status | str | Collection[Status | str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[Attempt]:
        """Attempts of ``job``, newest first, optionally of some statuses only."""
        return await self._operator.batches(job, status, limit=limit)

    async def history(self, source: MetadataSource | str, meta_id: int) -> list[Attempt]:
        """Every attempt of every job whose range covers ``meta_id`` of ``source``.

        One index probe per job: the range with the greatest start at or before
        ``meta_id``. After ``set_cursor`` back over ids a job already handed out, or
        ``mark_done`` over ranges already recorded, a job's ranges overlap and only its
        newest covering range is returned (see the docs' Lineage section).
        """
        return await self._operator.history(source, meta_id)

    async def status(self) -> list[JobStatus]:
        """One line per job: cursor, window, attempts by status, last success."""
        return await self._operator.status()

    async def errors(self, job: str) -> list[ErrorGroup]:
        """Failed attempts of ``job`` grouped by fingerprint, most frequent first."""
        return await self._operator.errors(job)

    async def retry(
        self,
        job: str,
        *,
        fingerprint: str | None = None,
        batch_ids: Collection[int] | None = None,
    ) -> int:
        """Revive dead ranges of ``job`` (all, one fingerprint, or some attempt ids).

        An attempt id names its range: any attempt of a dead range revives it.
        Returns how many ranges were revived.
        """
        return await self._operator.retry(job, fingerprint=fingerprint, batch_ids=batch_ids)

    async def plan(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        n: int = 5,
    ) -> list[PlannedRange]:
        """Dry run: the next ``n`` ranges the job would get, in order. Writes nothing.

        As an acquire would, it lists the ranges due for a retry first (with their attempt
        number), then new ranges after the cursor, cut by the limits.

        Raises:
            JobConflict: The job is recorded with another source, window or filter.
        """
        return await self._operator.plan(
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
            n=n,
        )

    async def set_cursor(
        self, job: str, meta_id: int, *, source: MetadataSource | str | None = None
    ) -> None:
        """Move ``job``'s cursor: new ranges start after ``meta_id``.

        ``source`` is needed only to create a job that does not exist yet.

        Raises:
            UnknownJob: The job is not recorded and no ``source`` was given.
        """
        return await self._operator.set_cursor(job, meta_id, source=source)

    async def mark_done(
        self,
        job: str,
        start: int,
        end: int,
        *,
        source: MetadataSource | str | None = None,
    ) -> int:
        """Record ``[start, end]`` as processed elsewhere; the cursor moves past it.

        Failed ranges inside it (waiting for a retry, or dead) count as done: they are not
        handed out again. ``source`` is needed only to create a job that does not exist yet.

        Returns the id of the recorded attempt.

        Raises:
            UnknownJob: The job is not recorded and no ``source`` was given.
            InvalidArgument: The range leaves the job's window, or rows between the cursor
                and ``start`` would never be handed out.
        """
        return await self._operator.mark_done(job, start, end, source=source)

    async def audit(self, job: str, source: MetadataSource | None = None) -> list[AuditFinding]:
        """Succeeded ranges of ``job`` whose current count or weight differs from the ledger.

        Recounts with one grouped query per chunk of ranges, not one per range.
        """
        return await self._operator.audit(job, source)
