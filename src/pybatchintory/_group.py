"""``BatchGroup``: batches acquired in one place and settled in another.

Code that hands batches to a queue, a pipeline or callbacks loses the ``async with`` that
would settle them. A group keeps them: it counts those still outstanding (not settled) and
those settling (claimed, write in flight), waits until all are settled, and on exit
releases whatever nobody settled, then waits for every write. ``Inventory.group()``
returns one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio

from pybatchintory.batch import Batch
from pybatchintory.errors import AlreadySettled, LeaseLost, StoreError
from pybatchintory.protocols import MetadataSource

__all__ = ("BatchGroup",)

log = logging.getLogger("pybatchintory")

AcquireMany = Callable[..., Awaitable[list[Batch]]]


class BatchGroup:
    """Batches acquired together and settled anywhere; see ``Inventory.group()``.

    Use it as ``async with inv.group() as group:``. Batches it acquires are settled as
    usual (``success()``, ``error()``, ``release()``, the ``_nowait`` calls, or
    ``async with batch``), from any task or callback on the loop.

    Args:
        acquire_many: ``Inventory.acquire_many``.
    """

    def __init__(self, acquire_many: AcquireMany) -> None:
        self._acquire_many = acquire_many
        self._batches: set[Batch] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self._settled = 0

    def __repr__(self) -> str:
        return f"<BatchGroup outstanding={self.outstanding} settling={self.settling}>"

    # -- counts ---------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Batches of the group not settled yet (a lost lease is not outstanding)."""
        return sum(1 for b in self._batches if b._unsettled and not b.lost)

    @property
    def settling(self) -> int:
        """Batches whose settle was claimed and whose write has not ended yet."""
        return sum(1 for b in self._batches if b._settling)

    @property
    def settled(self) -> int:
        """Batches of the group whose settle was written (or whose lease was lost)."""
        return self._settled

    @property
    def batches(self) -> list[Batch]:
        """The batches still outstanding or settling, oldest first."""
        return sorted(self._batches, key=lambda b: b.id)

    # -- acquiring ------------------------------------------------------------------------

    async def acquire(self, job: str, source: MetadataSource | str, **options: Any) -> Batch | None:
        """``Inventory.acquire`` into the group (same arguments)."""
        batches = await self.acquire_many(job, source, 1, **options)
        return batches[0] if batches else None

    async def acquire_many(
        self, job: str, source: MetadataSource | str, n: int, **options: Any
    ) -> list[Batch]:
        """``Inventory.acquire_many`` into the group (same arguments).

        Raises:
            RuntimeError: The group was exited.
        """
        if self._closed:
            raise RuntimeError("this BatchGroup was exited")
        batches = await self._acquire_many(job, source, n, **options)
        for batch in batches:
            self._batches.add(batch)
            batch._observe(self._on_change)
        return batches

    def _on_change(self, batch: Batch) -> None:
        self._forget_if_done(batch)
        self._changed.set()

    def _forget_if_done(self, batch: Batch) -> None:
        if batch in self._batches and (batch.lost or not (batch._unsettled or batch._settling)):
            self._batches.discard(batch)
            self._settled += 1

    # -- waiting --------------------------------------------------------------------------

    async def wait_settled(self) -> None:
        """Wait until every batch of the group is settled and its write has ended."""
        while True:
            self._changed.clear()
            for batch in list(self._batches):
                self._forget_if_done(batch)
            if not self._batches:
                return
            await self._changed.wait()

    async def release_outstanding(self) -> int:
        """Release every batch nobody settled yet; how many were released."""
        released = 0
        for batch in self.batches:
            if batch._unsettled and not batch.lost:
                try:
                    await batch.release()
                    released += 1
                except (AlreadySettled, LeaseLost, StoreError) as exc:
                    log.warning("could not release %r of a group: %s", batch, exc)
        return released

    async def __aenter__(self) -> BatchGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        # Shielded: a cancelled service must still give its ranges back.
        with anyio.CancelScope(shield=True):
            await asyncio.sleep(0)  # settles already scheduled claim their batch first
            await self.release_outstanding()
            writes = [b._writing for b in self._batches if b._writing is not None]
            if writes:
                await asyncio.gather(*writes, return_exceptions=True)
            self._batches.clear()
