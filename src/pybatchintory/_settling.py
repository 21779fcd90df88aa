"""Writes a lease makes after it was granted: settles, heartbeats, give-backs.

Mixed into ``Inventory``. Every write here runs in a task of its own, shielded from the
caller's cancellation and tracked in ``_pending`` so that ``aclose()`` drains it:

- a settle retries a failing database until the lease would run out (it is fenced by
  token, so a late or repeated settle changes nothing);
- one heartbeat task renews every lease the ``Inventory`` holds, every ``ttl/3``, and
  tells the batches whose lease was lost;
- an acquire cancelled while its transaction ran gives back what it had leased.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from pybatchintory import telemetry
from pybatchintory._failure import describe_failure
from pybatchintory._lease import Batch
from pybatchintory._planning import backoff_delay
from pybatchintory.errors import LeaseLost, StoreError
from pybatchintory.models import LeaseGrant, Settlement, Status
from pybatchintory.protocols import InventoryStore

__all__ = ("Settling",)

log = logging.getLogger("pybatchintory")

_SETTLE_RETRY_FIRST = 0.05
_SETTLE_RETRY_MAX = 1.0


class Settling:
    """Mixed into ``Inventory``: settle writes, heartbeats and give-backs."""

    if TYPE_CHECKING:
        owner: str
        lease_ttl: float
        max_attempts: int
        retry_delay: float
        code_version: str | None
        _held: dict[str, Batch]
        _pending: set[asyncio.Task[None]]
        _heartbeat_task: asyncio.Task[None] | None
        _closed: bool

        @property
        def store(self) -> InventoryStore: ...

    async def _lease(self, acquiring: Coroutine[Any, Any, list[LeaseGrant]]) -> list[LeaseGrant]:
        """Run the store's acquire in its own task, shielded from the caller's cancellation.

        Cancelling the caller must neither interrupt the transaction (a half-closed
        connection can keep SQLite's write lock) nor strand leases it committed: those are
        released once it is done, tracked like a settle so that ``aclose()`` drains it.
        """
        task = asyncio.get_running_loop().create_task(acquiring)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            give_back = asyncio.get_running_loop().create_task(self._give_back(task))
            self._pending.add(give_back)
            give_back.add_done_callback(self._settled)
            raise

    async def _give_back(self, acquiring: asyncio.Task[list[LeaseGrant]]) -> None:
        try:
            grants = await acquiring
        except Exception:
            return  # nothing was leased
        for grant in grants:
            try:
                await self.store.settle(
                    Settlement(grant.id, grant.token, Status.RELEASED, retry_delay=0.0)
                )
            except (LeaseLost, StoreError) as exc:
                log.warning("could not release attempt %s after a cancel: %s", grant.id, exc)

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
            await telemetry.traced_settle(batch, settlement, self._settle_while_leased)
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
                lost = await telemetry.traced_heartbeat(
                    self.owner, tokens, self.store.heartbeat(self.owner, self.lease_ttl, tokens)
                )
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
                    telemetry.lost(batch)
                    batch._on_lost()
