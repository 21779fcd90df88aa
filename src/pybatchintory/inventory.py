"""``Inventory``: the composition root users hold.

It owns the inventory engine, the store, one heartbeat task renewing every lease it holds,
and the settle writes still in flight; ``aclose()`` drains those writes (bounded), releases
leases nobody settled, and disposes the engines it created.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from pybatchintory._failure import describe_failure
from pybatchintory._lease import Batch
from pybatchintory._operations import Operations
from pybatchintory._planning import RangeCutter, backoff_delay, validate_limits, validate_window
from pybatchintory._registry import adapter_for
from pybatchintory.errors import InvalidArgument, LeaseLost, NoBatchAvailable, StoreError
from pybatchintory.models import JobSpec, LeaseGrant, Limits, PlannedRange, Settlement, Status
from pybatchintory.protocols import BindContext, BoundSource, InventoryStore, MetadataSource
from pybatchintory.settings import Settings
from pybatchintory.sources import MetaTable

__all__ = ("Inventory",)

log = logging.getLogger("pybatchintory")

_MAX_JOB_NAME = 255
_SETTLE_RETRY_FIRST = 0.05
_SETTLE_RETRY_MAX = 1.0


def _seconds(value: object) -> bool:
    """A finite number of seconds (not a bool, not NaN or infinity)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def check_job_name(job: object) -> str:
    """Return ``job`` if it is a usable job name.

    Raises:
        InvalidArgument: Not a non-empty string of at most 255 characters.
    """
    if not isinstance(job, str) or not job.strip() or len(job) > _MAX_JOB_NAME:
        raise InvalidArgument(f"job must be a non-empty name of at most 255 characters: {job!r}")
    return job


class Inventory(Operations):
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
    ) -> None:
        if not _seconds(lease_ttl) or lease_ttl <= 0:
            raise InvalidArgument(f"lease_ttl must be a positive number of seconds: {lease_ttl!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be an integer >= 1: {max_attempts!r}")
        if not _seconds(retry_delay) or retry_delay < 0:
            raise InvalidArgument(f"retry_delay must be >= 0 seconds: {retry_delay!r}")
        if not _seconds(settle_timeout) or settle_timeout < 0:
            raise InvalidArgument(f"settle_timeout must be >= 0 seconds: {settle_timeout!r}")
        if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 255):
            raise InvalidArgument("owner must be a non-empty name of at most 255 characters")
        if table_prefix and not table_prefix.replace("_", "").isalnum():
            raise InvalidArgument("table_prefix may contain only letters, digits and underscores")
        self.url = url or "sqlite+aiosqlite:///pybatchintory.db"
        self._adapter, self._full_url = adapter_for(self.url)
        self.owner = owner or _default_owner()
        self.lease_ttl = float(lease_ttl)
        self.max_attempts = max_attempts
        self.retry_delay = float(retry_delay)
        self.table_prefix = table_prefix
        self.code_version = code_version
        self.settle_timeout = settle_timeout
        self._given_engine = engine
        self._engine: AsyncEngine | None = engine
        self._store: InventoryStore | None = None
        self._engines: dict[str, AsyncEngine] = {}
        self._bound: dict[int, tuple[MetadataSource, BoundSource]] = {}
        self._jobs: dict[str, JobSpec] = {}
        self._sources: dict[str, MetadataSource] = {}
        self._hints: dict[str, int] = {}
        self._held: dict[str, Batch] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Inventory:
        """An ``Inventory`` configured from ``PYBATCHINTORY_*`` settings (or ``settings``)."""
        s = settings or Settings()
        options: dict[str, Any] = {
            "owner": s.owner,
            "lease_ttl": s.lease_ttl,
            "max_attempts": s.max_attempts,
            "retry_delay": s.retry_delay,
            "table_prefix": s.table_prefix,
            "code_version": s.code_version,
        }
        options.update(overrides)
        return cls(s.inventory_url.get_secret_value(), **options)

    def __repr__(self) -> str:
        from pybatchintory._registry import normalise_url

        return f"Inventory({normalise_url(self.url)!r}, owner={self.owner!r})"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def store(self) -> InventoryStore:
        """The store (after ``open()``)."""
        if self._store is None:
            raise RuntimeError("the Inventory is not open: use `async with Inventory(...)`")
        return self._store

    @property
    def engine(self) -> AsyncEngine:
        """The inventory database engine (after ``open()``)."""
        if self._engine is None:
            raise RuntimeError("the Inventory is not open: use `async with Inventory(...)`")
        return self._engine

    async def open(self) -> Inventory:
        """Connect and create the schema if missing. Called by ``async with``."""
        if self._store is not None:
            return self
        if self._closed:
            raise RuntimeError("this Inventory was closed")
        async with self._open_lock:
            if self._store is None:
                if self._engine is None:
                    self._engine = self._adapter.create_engine(self._full_url)
                store = self._adapter.create_store(self._engine, table_prefix=self.table_prefix)
                await store.setup()
                self._store = store
        return self

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
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(self.settle_timeout, shield=True):
            for batch in list(self._held.values()):
                if batch._status is None and not batch.lost:
                    try:
                        await batch.release()
                    except (LeaseLost, StoreError) as exc:
                        log.warning("could not release %r on close: %s", batch, exc)
            if self._pending:
                await asyncio.gather(*list(self._pending), return_exceptions=True)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._store is not None:
            await self._store.aclose()
        with anyio.CancelScope(shield=True):
            for engine in self._engines.values():
                await engine.dispose()
            if self._engine is not None and self._given_engine is None:
                await self._engine.dispose()

    def _engine_for(self, url: str) -> AsyncEngine:
        engine = self._engines.get(url)
        if engine is None:
            adapter, full = adapter_for(url)
            engine = adapter.create_engine(full)
            self._engines[url] = engine
        return engine

    # -- preparing a job ------------------------------------------------------------------

    async def _bind(self, source: MetadataSource | str) -> BoundSource:
        if isinstance(source, str):
            source = MetaTable(source)
        if not isinstance(source, MetadataSource):
            raise InvalidArgument(f"source must be a MetaTable or InventorySource, got {source!r}")
        await self.open()
        cached = self._bound.get(id(source))
        if cached is not None and cached[0] is source:
            return cached[1]
        context = BindContext(
            store=self.store, inventory_engine=self.engine, engine_for=self._engine_for
        )
        bound = await source.bind(context)
        self._bound[id(source)] = (source, bound)
        return bound

    async def _prepare(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None,
        max_weight: int | None,
        id_start: int | None,
        id_end: int | None,
        record: bool = True,
    ) -> tuple[BoundSource, Limits]:
        check_job_name(job)
        validate_window(id_start, id_end)
        validate_limits(max_count, max_weight)
        bound = await self._bind(source)
        limits = validate_limits(max_count, max_weight, has_weight=bound.has_weight)
        spec = JobSpec(
            name=job,
            meta_table=bound.name,
            source=bound.describe(),
            id_start=id_start,
            id_end=id_end,
        )
        if record and self._jobs.get(job) != spec:
            await self.store.ensure_job(spec)
            self._jobs[job] = spec
        self._sources[job] = source if not isinstance(source, str) else MetaTable(source)
        return bound, limits

    def _planner(self, job: str, bound: BoundSource, limits: Limits, id_end: int | None) -> Any:
        async def plan(link: object | None, cursor: int | None) -> PlannedRange | None:
            end = id_end
            horizon = await bound.horizon(link)
            if horizon is not None:
                end = horizon if end is None else min(end, horizon)
            cutter = RangeCutter(after=cursor, end=end, limits=limits, hint=self._hints.get(job))
            while (request := cutter.request()) is not None:
                cutter.feed(await bound.summarize(request, link))
            cut = cutter.result()
            if cut is not None and not cut.oversized:
                self._hints[job] = cut.count
            return cut

        return plan

    # -- leasing --------------------------------------------------------------------------

    async def _acquire(
        self,
        job: str,
        source: MetadataSource | str,
        n: int,
        *,
        max_count: int | None,
        max_weight: int | None,
        id_start: int | None,
        id_end: int | None,
        timeout: float | None = None,
    ) -> list[Batch]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be a positive integer, got {n!r}")
        if timeout is not None and (not _seconds(timeout) or timeout <= 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds: {timeout!r}")
        if self._closed:
            raise RuntimeError("this Inventory was closed")
        bound, limits = await self._prepare(
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
        )
        work = asyncio.get_running_loop().create_task(
            self.store.acquire(
                job,
                owner=self.owner,
                ttl=self.lease_ttl,
                max_attempts=self.max_attempts,
                n=n,
                planner=self._planner(job, bound, limits, id_end),
                config={
                    "max_count": limits.max_count,
                    "max_weight": limits.max_weight,
                    "lease_ttl": self.lease_ttl,
                    "max_attempts": self.max_attempts,
                    "code_version": self.code_version,
                },
            )
        )
        try:
            grants = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The acquire's transaction is never interrupted mid-conversation (a driver
            # cancelled between a statement and its reply can hand its connection back to
            # the pool in an unknown state); it finishes in the background, and whatever it
            # granted is released at once instead of expiring later as a failed attempt.
            self._track(asyncio.get_running_loop().create_task(self._give_back(work)))
            raise
        batches = [Batch(self, grant, bound, timeout=timeout) for grant in grants]
        for batch in batches:
            self._held[batch.token] = batch
        if batches:
            self._ensure_heartbeat()
        return batches

    async def acquire(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
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
        max_weight: int | None = None,
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

    def lease(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        wait: bool = False,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> LeaseContext:
        """``async with inv.lease(job, source) as batch:`` leases, runs, and settles.

        Raises:
            NoBatchAvailable: On entry, when there is nothing to do and ``wait`` is false.
        """
        if not _seconds(poll_interval) or poll_interval <= 0:
            raise InvalidArgument(f"poll_interval must be > 0 seconds: {poll_interval!r}")
        return LeaseContext(
            self,
            job,
            source,
            dict(max_count=max_count, max_weight=max_weight, id_start=id_start, id_end=id_end),
            wait=wait,
            poll_interval=float(poll_interval),
            timeout=timeout,
        )

    async def leases(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: int | None = None,
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

    # -- settling and heartbeats ----------------------------------------------------------

    def _failure_settlement(self, batch: Batch, exc: BaseException) -> Settlement:
        failure = describe_failure(exc)
        failures = batch._grant.failures + 1
        dead = failures >= self.max_attempts
        return Settlement(
            batch.id,
            batch.token,
            Status.FAILED,
            error_type=failure.error_type,
            error_message=failure.message,
            traceback=failure.traceback,
            fingerprint=failure.fingerprint,
            code_version=self.code_version,
            counts_as_failure=True,
            dead=dead,
            retry_delay=backoff_delay(self.retry_delay, failures),
        )

    async def _write_settle(self, batch: Batch, settlement: Settlement) -> None:
        try:
            await self._settle_while_leased(batch, settlement)
        except LeaseLost:
            batch._status = None
            batch._lost = True
            batch._loss_reported = True
            self._held.pop(batch.token, None)
            raise
        except BaseException:
            batch._status = None
            # No more heartbeats for it: unless it is settled again in time, the lease runs
            # out and the range comes back through the acquire order. Renewing it would keep
            # the range held, unsettled, for as long as this process lives.
            self._held.pop(batch.token, None)
            raise
        self._held.pop(batch.token, None)

    async def _settle_while_leased(self, batch: Batch, settlement: Settlement) -> None:
        """Write ``settlement``, retrying a failing database until the lease would run out.

        A settle is fenced by token, so a late or repeated one changes nothing, and the
        store recognises a try that committed before its connection dropped: retrying
        rides out a server restart shorter than the lease.
        """
        delay = _SETTLE_RETRY_FIRST
        while True:
            try:
                await self.store.settle(settlement)
                return
            except StoreError as exc:
                left = batch._renewed_at + self.lease_ttl - time.monotonic()
                if left <= delay:
                    raise
                log.warning("settle of %r failed, retrying in %.2fs: %s", batch, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SETTLE_RETRY_MAX)

    async def _settle(self, batch: Batch, settlement: Settlement) -> None:
        """Write a settle in its own task: shielded from cancellation, drained by aclose."""
        task = asyncio.get_running_loop().create_task(self._write_settle(batch, settlement))
        self._pending.add(task)
        task.add_done_callback(self._settled)
        with anyio.CancelScope(shield=True):
            await asyncio.shield(task)

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a write in flight referenced, and drained by ``aclose``."""
        self._pending.add(task)
        task.add_done_callback(self._settled)

    async def _give_back(self, work: asyncio.Task[list[LeaseGrant]]) -> None:
        """Release the grants of an acquire whose caller was cancelled while it ran."""
        try:
            grants = await work
        except Exception:
            return  # it failed: nothing was granted
        for grant in grants:
            try:
                await self.store.settle(
                    Settlement(grant.id, grant.token, Status.RELEASED, retry_delay=0.0)
                )
            except (LeaseLost, StoreError) as exc:
                log.warning("could not release attempt %s after a cancelled acquire: %s",
                            grant.id, exc)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # retrieved here so an abandoned settle's error is not reported as lost

    def _ensure_heartbeat(self) -> None:
        task = self._heartbeat_task
        if task is None or task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"pybatchintory-heartbeat-{self.owner}"
            )

    async def _heartbeat_loop(self) -> None:
        interval = self.lease_ttl / 3
        while self._held and not self._closed:
            await asyncio.sleep(interval)
            tokens = [t for t, b in self._held.items() if b._status is None]
            if not tokens:
                continue
            started = time.monotonic()
            try:
                lost = await self.store.heartbeat(self.owner, self.lease_ttl, tokens)
            except StoreError as exc:
                log.warning("heartbeat failed, retrying in %.1fs: %s", interval, exc)
                continue
            for token in tokens:
                renewed = self._held.get(token)
                if renewed is not None and token not in lost:
                    renewed._renewed_at = started
            for token in lost:
                batch = self._held.pop(token, None)
                if batch is not None:
                    log.warning("lease lost: %r", batch)
                    batch._on_lost()


class LeaseContext:
    """The async context manager returned by ``Inventory.lease``."""

    def __init__(
        self,
        inventory: Inventory,
        job: str,
        source: MetadataSource | str,
        limits: dict[str, Any],
        *,
        wait: bool,
        poll_interval: float,
        timeout: float | None,
    ) -> None:
        self._inventory = inventory
        self._job = job
        self._source = source
        self._limits = limits
        self._wait = wait
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._batch: Batch | None = None

    async def __aenter__(self) -> Batch:
        while True:
            batch = await self._inventory.acquire(
                self._job, self._source, timeout=self._timeout, **self._limits
            )
            if batch is not None:
                break
            if not self._wait:
                raise NoBatchAvailable(f"nothing to hand out for job {self._job!r} right now")
            await anyio.sleep(self._poll_interval)
        self._batch = batch
        return await batch.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._batch is not None
        return await self._batch.__aexit__(exc_type, exc, tb)
