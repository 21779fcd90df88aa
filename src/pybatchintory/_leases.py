"""``Leases``: the leases one owner holds, and every write a lease makes after its grant.

It implements the ``Settler`` protocol every ``Batch`` settles through. Each write runs in a
task of its own, shielded from the caller's cancellation and tracked so that ``aclose()``
drains it:

- an acquire runs the store's transaction in such a task; cancelled while it ran, the
  leases it committed are given back;
- a settle retries a failing database until the lease would run out (it is fenced by
  token, so a late or repeated settle changes nothing);
- one heartbeat task renews every lease held, every ``ttl/3``, and tells the batches whose
  lease was lost.

On Python 3.12 and later a write's task starts eagerly (``_start``): its first step, up to
its first wait for the database, runs at once instead of an event-loop iteration later.

Also ``LeaseContext``, what ``Inventory.lease`` returns: acquire on enter (waiting for a
range if asked to), then the batch's own exit policy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio

from pybatchintory import telemetry
from pybatchintory._database import Database
from pybatchintory._failure import describe_failure, describe_message
from pybatchintory._planning import backoff_delay, is_seconds
from pybatchintory._stopping import StopSignal, wait_or_stop
from pybatchintory.batch import Batch
from pybatchintory.errors import (
    AlreadySettled,
    InvalidArgument,
    LeaseLost,
    NoBatchAvailable,
    StoreError,
)
from pybatchintory.models import LeaseGrant, Settlement, Status
from pybatchintory.protocols import BoundSource, InventoryStore, Planner

__all__ = ("LeaseContext", "LeasePolicy", "Leases", "lease_policy")

log = logging.getLogger("pybatchintory")

_SETTLE_RETRY_FIRST = 0.05
_SETTLE_RETRY_MAX = 1.0
_T = TypeVar("_T")


def _start(write: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    """``write`` in a task of its own, started eagerly where Python allows it (3.12+).

    An eager task runs its first step inside this call, up to its first real wait (a
    statement sent, its reply awaited), instead of after one more event-loop iteration:
    one iteration less per acquire and per settle. It is a task of its own all the same,
    so the caller's cancellation still cannot reach into it. A loop with a task factory
    of its own (instrumentation, say) gets its task from that factory, as before.
    """
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12) and loop.get_task_factory() is None:
        return asyncio.Task(write, loop=loop, eager_start=True)
    return loop.create_task(write)


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """How one owner leases: its name, the lease's life, the retry budget.

    Attributes:
        owner: Lease owner name, unique per ``Inventory``.
        lease_ttl: Seconds a lease lives without a heartbeat.
        max_attempts: Failed or expired attempts before a range is dead.
        retry_delay: Base of the backoff ``retry_delay * 2**(failures-1)``.
        code_version: Recorded with every failure.
        settle_timeout: How long ``aclose()`` waits for settle writes in flight.
    """

    owner: str
    lease_ttl: float
    max_attempts: int
    retry_delay: float
    code_version: str | None
    settle_timeout: float


def _storable_name(value: object) -> bool:
    """A non-empty string that fits a 255-character column on every store."""
    return isinstance(value, str) and bool(value) and len(value) <= 255 and "\x00" not in value


def lease_policy(
    *,
    owner: str | None,
    lease_ttl: float,
    max_attempts: int,
    retry_delay: float,
    code_version: str | None,
    settle_timeout: float,
) -> LeasePolicy:
    """The checked policy; ``owner`` defaults to host:pid:random.

    Raises:
        InvalidArgument: A setting is out of range.
    """
    if not is_seconds(lease_ttl) or lease_ttl <= 0:
        raise InvalidArgument(f"lease_ttl must be a positive number of seconds: {lease_ttl!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgument(f"max_attempts must be an integer >= 1: {max_attempts!r}")
    if not is_seconds(retry_delay) or retry_delay < 0:
        raise InvalidArgument(f"retry_delay must be >= 0 seconds: {retry_delay!r}")
    if not is_seconds(settle_timeout) or settle_timeout < 0:
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
    return LeasePolicy(
        owner=owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
        lease_ttl=float(lease_ttl),
        max_attempts=max_attempts,
        retry_delay=float(retry_delay),
        code_version=code_version,
        settle_timeout=settle_timeout,
    )


def _report_unawaited(batch: str, settlement: Settlement, task: asyncio.Task[None]) -> None:
    """A ``_nowait`` settle whose write failed: say so, since its caller could not await it.

    ``batch`` names the attempt without a status: the status a handle claimed is not the
    ledger's, and a ``LeaseLost`` message says what the ledger has.
    """
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("%s of %s was not recorded: %s", settlement.status, batch, exc)


class Leases:
    """The held batches of one owner, their heartbeat, settles in flight and give-backs."""

    def __init__(self, database: Database, policy: LeasePolicy) -> None:
        self._db = database
        self.policy = policy
        # Weak: a batch nobody references is collected, and its ``__del__`` reports it
        # through ``dropped`` while its token is still in ``_holding``.
        self._held: weakref.WeakValueDictionary[str, Batch] = weakref.WeakValueDictionary()
        self._holding: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def _store(self) -> InventoryStore:
        return self._db.store

    # -- acquire ----------------------------------------------------------------------------

    async def acquire(
        self,
        job: str,
        bound: BoundSource,
        planner: Planner,
        *,
        n: int,
        config: dict[str, Any],
        timeout: float | None,
    ) -> list[Batch]:
        """Lease up to ``n`` ranges of ``job`` and hold them (heartbeats start)."""
        p = self.policy
        acquiring = self._shielded(
            self._store.acquire(
                job,
                owner=p.owner,
                ttl=p.lease_ttl,
                max_attempts=p.max_attempts,
                n=n,
                planner=planner,
                config=config,
            )
        )
        grants = await telemetry.traced_acquire(job, acquiring)
        batches = [Batch(self, grant, bound, timeout=timeout) for grant in grants]
        self._loop = asyncio.get_running_loop()
        for batch in batches:
            self._held[batch.token] = batch
            self._holding.add(batch.token)
        if batches:
            self._ensure_heartbeat()
        return batches

    async def _shielded(self, acquiring: Coroutine[Any, Any, list[LeaseGrant]]) -> list[LeaseGrant]:
        """Run the store's acquire in its own task, shielded from the caller's cancellation.

        Cancelling the caller must neither interrupt the transaction (a half-closed
        connection can keep SQLite's write lock) nor strand leases it committed: those are
        released once it is done, tracked like a settle so that ``aclose()`` drains it.
        """
        task = _start(acquiring)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._track(asyncio.get_running_loop().create_task(self._give_back(task)))
            raise

    async def _give_back(self, acquiring: asyncio.Task[list[LeaseGrant]]) -> None:
        try:
            grants = await acquiring
        except Exception:
            return  # nothing was leased
        for grant in grants:
            try:
                await self._store.settle(
                    Settlement(grant.id, grant.token, Status.RELEASED, retry_delay=0.0)
                )
            except (LeaseLost, StoreError) as exc:
                log.warning("could not release attempt %s after a cancel: %s", grant.id, exc)

    # -- Settler ----------------------------------------------------------------------------

    def failure(self, grant: LeaseGrant, exc: BaseException | str) -> Settlement:
        """The settlement recording ``exc`` (or a message): a retry after a backoff, or dead."""
        p = self.policy
        failure = describe_message(exc) if isinstance(exc, str) else describe_failure(exc)
        failures = grant.failures + 1
        return Settlement(
            grant.id,
            grant.token,
            Status.FAILED,
            error_type=failure.error_type,
            error_message=failure.message,
            traceback=failure.traceback,
            fingerprint=failure.fingerprint,
            code_version=p.code_version,
            counts_as_failure=True,
            dead=failures >= p.max_attempts,
            retry_delay=backoff_delay(p.retry_delay, failures),
        )

    async def settle(self, batch: Batch, settlement: Settlement) -> None:
        """Write a settle in its own task: shielded from cancellation, drained by aclose."""
        task = _start(self._write_settle(batch, settlement))
        self._track(task)
        batch._writing_in(task)
        with anyio.CancelScope(shield=True):
            await asyncio.shield(task)

    def settle_nowait(self, batch: Batch, settlement: Settlement) -> asyncio.Task[None]:
        """Start a settle's write in its own tracked task; a failure nobody awaits is logged."""
        task = asyncio.get_running_loop().create_task(self._write_settle(batch, settlement))
        self._track(task)
        batch._writing_in(task)
        task.add_done_callback(functools.partial(_report_unawaited, batch.describe(), settlement))
        return task

    async def _write_settle(self, batch: Batch, settlement: Settlement) -> None:
        try:
            await telemetry.traced_settle(batch, settlement, self._settle_while_leased)
        except LeaseLost:
            batch._settle_failed(lost=True)
            self._unhold(batch.token)
            raise
        except BaseException:
            batch._settle_failed(lost=False)
            # No more heartbeats for it: unless it is settled again in time, the lease runs
            # out and the range comes back through the acquire order. Renewing it would keep
            # the range held, unsettled, for as long as this process lives.
            self._unhold(batch.token)
            raise
        self._unhold(batch.token)

    def _unhold(self, token: str) -> Batch | None:
        """Stop holding a lease (no more heartbeats); the batch, if still referenced."""
        self._holding.discard(token)
        return self._held.pop(token, None)

    # -- dropped batches --------------------------------------------------------------------

    def dropped(self, grant: LeaseGrant) -> bool:
        """A batch was garbage-collected: release its lease if it is still held here.

        Called from ``Batch.__del__``, on whatever thread dropped the last reference: the
        release is handed to the loop, tracked like a settle so that ``aclose()`` drains
        it. Returns whether the lease was held (the caller then warns).
        """
        if grant.token not in self._holding:
            return False
        self._unhold(grant.token)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._release_dropped, grant)
            except RuntimeError:
                pass  # the loop closed meanwhile: the lease runs out instead
        return True

    def _release_dropped(self, grant: LeaseGrant) -> None:
        release = Settlement(grant.id, grant.token, Status.RELEASED, retry_delay=0.0)
        self._track(asyncio.get_running_loop().create_task(self._write_release(release)))

    async def _write_release(self, settlement: Settlement) -> None:
        try:
            await self._store.settle(settlement)
        except (LeaseLost, StoreError) as exc:
            log.warning(
                "could not release attempt %s of a dropped batch: %s", settlement.attempt_id, exc
            )

    async def _settle_while_leased(self, batch: Batch, settlement: Settlement) -> None:
        """Write ``settlement``, retrying a failing database until the lease would run out.

        A settle is fenced by token, so a late or repeated one changes nothing, and the
        store recognises a try that committed before its connection dropped: retrying
        rides out a server restart shorter than the lease.
        """
        delay = _SETTLE_RETRY_FIRST
        while True:
            try:
                await self._store.settle(settlement)
                return
            except StoreError as exc:
                if batch._lease_left(self.policy.lease_ttl) <= delay:
                    raise
                log.warning("settle of %r failed, retrying in %.2fs: %s", batch, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SETTLE_RETRY_MAX)

    async def settle_many(self, settles: list[tuple[Batch, Settlement]]) -> list[Batch]:
        """Write many settles (claimed by their batches) at once; return the batches lost.

        Like ``settle``: in its own task, shielded from the caller's cancellation and
        drained by ``aclose``; a failing database is retried until the first of the leases
        would run out. A lost batch is marked lost and let go; nothing is raised for it.
        """
        task = _start(self._write_settles(settles))
        self._track(task)
        with anyio.CancelScope(shield=True):
            lost = await asyncio.shield(task)
        return lost

    async def _write_settles(self, settles: list[tuple[Batch, Settlement]]) -> list[Batch]:
        batches = [batch for batch, _ in settles]
        try:
            with telemetry.settling_many(len(settles)):
                gone = await self._settles_while_leased(batches, [s for _, s in settles])
        except BaseException:
            for batch in batches:
                batch._settle_failed(lost=False)
                self._unhold(batch.token)
            raise
        lost: list[Batch] = []
        for batch, settlement in settles:
            self._unhold(batch.token)
            why = gone.get(settlement.attempt_id)
            if why is None:
                telemetry.ended(batch, str(settlement.status))
                continue
            batch._settle_failed(lost=True)
            telemetry.ended(batch, "lost")
            log.warning("%r was not settled: %s", batch, why)
            lost.append(batch)
        return lost

    async def _settles_while_leased(
        self, batches: list[Batch], settlements: list[Settlement]
    ) -> dict[int, str]:
        """``_settle_while_leased`` for many: retried until the first lease would run out."""
        delay = _SETTLE_RETRY_FIRST
        while True:
            try:
                return await self._store.settle_many(settlements)
            except StoreError as exc:
                if min(b._lease_left(self.policy.lease_ttl) for b in batches) <= delay:
                    raise
                log.warning(
                    "settle of %d batches failed, retrying in %.2fs: %s", len(batches), delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SETTLE_RETRY_MAX)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # retrieved here so an abandoned settle's error is not reported as lost

    # -- heartbeat --------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        task = self._heartbeat_task
        if task is None or task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"pybatchintory-heartbeat-{self.policy.owner}"
            )

    async def _heartbeat_loop(self) -> None:
        p = self.policy
        interval = p.lease_ttl / 3
        while self._held and not self._closed:
            await asyncio.sleep(interval)
            tokens = [t for t, b in self._held.items() if b._unsettled]
            if not tokens:
                continue
            started = time.monotonic()
            try:
                lost = await telemetry.traced_heartbeat(
                    p.owner, tokens, self._store.heartbeat(p.owner, p.lease_ttl, tokens)
                )
            except StoreError as exc:
                log.warning("heartbeat failed, retrying in %.1fs: %s", interval, exc)
                continue
            self._heard(tokens, lost, started)

    def _heard(self, tokens: list[str], lost: set[str], started: float) -> None:
        """Tell the batches how a heartbeat that started at ``started`` went.

        A function of its own so that no batch stays referenced by the heartbeat's frame
        while it sleeps: a batch nobody else holds must be collectable.
        """
        for token in tokens:
            renewed = self._held.get(token)
            if renewed is not None and token not in lost:
                renewed._renewed(started)
        for token in lost:
            batch = self._unhold(token)
            if batch is not None:
                telemetry.lost(batch)
                batch._on_lost()

    # -- close ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Release leases nobody settled, drain writes in flight (bounded), stop heartbeats.

        Settles already scheduled on the loop (a ``create_task(batch.success())`` from a
        callback) take their first step before anything is released, so they claim their
        batch first and are drained like the others, instead of being overtaken.
        """
        self._closed = True
        with anyio.move_on_after(self.policy.settle_timeout, shield=True):
            # One pass of the loop's ready queue: every task scheduled before this call
            # takes its first step (and a settle in it claims its batch).
            await asyncio.sleep(0)
            for batch in list(self._held.values()):
                if batch._unsettled and not batch.lost:
                    try:
                        await batch.release()
                    except (LeaseLost, StoreError, AlreadySettled) as exc:
                        log.warning("could not release %r on close: %s", batch, exc)
            # A callback may schedule a settle while others drain (and a batch dropped
            # meanwhile schedules its release): wait for those too.
            while self._pending:
                await asyncio.gather(*list(self._pending), return_exceptions=True)
                await asyncio.sleep(0)
        # What is still held now could not be released: its lease runs out.
        self._holding.clear()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(self._heartbeat_task, return_exceptions=True)


class LeaseContext:
    """The async context manager returned by ``Inventory.lease``.

    Args:
        acquire: Leases the next batch, or returns ``None`` when there is nothing to do.
        job: The job's name (for the message of ``NoBatchAvailable``).
        wait: Poll until a batch is available instead of raising ``NoBatchAvailable``.
        poll_interval: Seconds between polls.
        stop: Ends the wait when set: ``NoBatchAvailable`` is raised instead.
    """

    def __init__(
        self,
        acquire: Callable[[], Awaitable[Batch | None]],
        job: str,
        *,
        wait: bool,
        poll_interval: float,
        stop: StopSignal | None = None,
    ) -> None:
        self._acquire = acquire
        self._job = job
        self._wait = wait
        self._poll_interval = poll_interval
        self._stop = stop
        self._batch: Batch | None = None

    async def __aenter__(self) -> Batch:
        while True:
            if self._stop is not None and self._stop.is_set():
                raise NoBatchAvailable(f"stopped while waiting for a batch of job {self._job!r}")
            batch = await self._acquire()
            if batch is not None:
                break
            if not self._wait:
                raise NoBatchAvailable(f"nothing to hand out for job {self._job!r} right now")
            await wait_or_stop(self._stop, self._poll_interval)
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
