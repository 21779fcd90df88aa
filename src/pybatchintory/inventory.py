"""``Inventory``: the composition root users hold.

It owns the inventory engine, the store, one heartbeat task renewing every lease it holds,
and the settle writes still in flight; ``aclose()`` drains those writes (bounded), releases
leases nobody settled, and disposes the engines it created.

The class is put together from mixins, one per operation: ``Settling`` (settles, heartbeats,
give-backs), ``Operations`` (the operator's reads and controls) and, under it, ``Preparing``
(binding sources, recording jobs, planning ranges). Leasing itself is here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from pybatchintory import telemetry
from pybatchintory._lease import Batch, LeaseContext
from pybatchintory._operations import Operations
from pybatchintory._registry import adapter_for
from pybatchintory._settling import Settling
from pybatchintory.errors import InvalidArgument, LeaseLost, StoreError
from pybatchintory.models import JobSpec
from pybatchintory.protocols import BoundSource, InventoryStore, MetadataSource
from pybatchintory.settings import Settings
from pybatchintory.sources import MetaTable

__all__ = ("Inventory", "LeaseContext")

log = logging.getLogger("pybatchintory")


def _seconds(value: object) -> bool:
    """A finite number of seconds (not a bool, not NaN or infinity)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _storable_name(value: object) -> bool:
    """A non-empty string that fits a 255-character column on every store."""
    return isinstance(value, str) and bool(value) and len(value) <= 255 and "\x00" not in value


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Inventory(Settling, Operations):
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
        # Both are written into 255-character columns with every attempt or failure: a value
        # a store refuses would fail every settle, so it is refused here instead.
        if owner is not None and not _storable_name(owner):
            raise InvalidArgument(
                f"owner must be a non-empty name of at most 255 characters, without NUL: {owner!r}"
            )
        if code_version and not _storable_name(code_version):
            raise InvalidArgument(
                "code_version must be a string of at most 255 characters, "
                f"without NUL: {code_version!r}"
            )
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
        self._bound: OrderedDict[int, tuple[MetadataSource, BoundSource]] = OrderedDict()
        self._tables: dict[str, MetaTable] = {}
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
                try:
                    await store.setup()
                except BaseException:
                    # Not open, so aclose() may never come: give the connections back now.
                    if self._given_engine is None:
                        with anyio.CancelScope(shield=True):
                            await self._engine.dispose()
                        self._engine = None
                    raise
                self._store = store
        return self

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Bring the inventory's schema up to date (``pybatchintory migrate``).

        Works on a schema too old to ``open()``. Returns the SQL statements applied (or,
        with ``dry_run``, that would be), in order: none when the schema is current.

        Raises:
            SchemaMismatch: The schema is newer than this pybatchintory.
        """
        if self._closed:
            raise RuntimeError("this Inventory was closed")
        engine = self._engine or self._adapter.create_engine(self._full_url)
        store = self._adapter.create_store(engine, table_prefix=self.table_prefix)
        try:
            return await store.migrate(dry_run=dry_run)
        finally:
            await store.aclose()
            if engine is not self._engine:
                await engine.dispose()

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
        acquiring = self._lease(
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
        grants = await telemetry.traced_acquire(job, acquiring)
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
