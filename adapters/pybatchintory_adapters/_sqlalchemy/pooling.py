"""Return committed connections to the pool without a second round trip.

SQLAlchemy's pool rolls every returned connection back, unless the ``Connection`` closed
with its transaction still open. A write transaction here always ends in a commit before
the connection is closed, so that rollback is one wasted round trip per transaction (a real
``ROLLBACK`` on MySQL, a thread hop on SQLite). Engines the adapters create therefore turn
the pool's own reset off and reset in a ``reset`` listener instead, skipping connections the
store marked as committed. Everything else (errors, reads, connections returned mid
transaction) is still rolled back. Engines handed in by the user keep their own settings.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection

from pybatchintory_adapters._sqlalchemy import compat

__all__ = (
    "CLEAN_RETURN_OPTIONS",
    "KeptConnection",
    "install_clean_return",
    "mark_committed",
)

_COMMITTED = "pybatchintory_committed"
_CLEAN_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()

CLEAN_RETURN_OPTIONS: dict[str, Any] = {"pool_reset_on_return": None}
"""``create_async_engine`` options that go with ``install_clean_return``."""


def mark_committed(conn: AsyncConnection | PoolProxiedConnection) -> None:
    """Say that ``conn`` just committed: returning it to the pool needs no rollback."""
    conn.info[_COMMITTED] = True


def install_clean_return(engine: AsyncEngine) -> None:
    """Roll back returned connections unless they are marked committed.

    For engines built with ``CLEAN_RETURN_OPTIONS`` (the pool's own reset turned off).
    """
    _CLEAN_POOLS.add(engine.sync_engine.pool)

    @event.listens_for(engine.sync_engine.pool, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        committed = record.info.pop(_COMMITTED, False) if record is not None else False
        if committed or state.transaction_was_reset or state.terminate_only:
            return
        if state.asyncio_safe:
            dbapi_connection.rollback()


KEEP_IDLE_SECONDS = 5.0
"""How long a kept connection may wait for the next transaction before it goes back."""


class KeptConnection:
    """One borrowed connection kept between the hot path's transactions.

    A pool checkout and its return each cross SQLAlchemy's greenlet bridge: ~120 us of
    Python per lease on PostgreSQL (the wall time around the driver calls, which
    ``benchmarks/profile_lease.py --timing`` prints, before and after this), a tenth
    of the lease. A store keeps the connection of its last committed transaction here and
    takes it back for the next one, so a worker leasing one batch after another borrows
    once. Only a connection whose transaction committed is kept (one that failed goes
    back through the pool's own cleanup); one kept longer than ``idle`` seconds, or
    invalidated meanwhile, goes back to the pool when next asked for, so the pool's
    recycling and pre-ping apply again. ``aclose`` gives it back for good.

    One slot: concurrent transactions of one store borrow from the pool as before.
    """

    def __init__(self, idle: float = KEEP_IDLE_SECONDS) -> None:
        self._idle = idle
        self._kept: PoolProxiedConnection | None = None
        self._since = 0.0
        self._closed = False

    async def take(self) -> PoolProxiedConnection | None:
        """The kept connection, if there is a fresh one (it is no longer kept)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        if kept.is_valid and time.monotonic() - self._since <= self._idle:
            return kept
        await _give_back(kept)
        return None

    def keep(self, connection: PoolProxiedConnection) -> bool:
        """Keep ``connection`` (its transaction committed); ``False`` if the slot is taken."""
        if self._kept is not None or self._closed:
            return False
        self._kept, self._since = connection, time.monotonic()
        return True

    async def aclose(self) -> None:
        """Give the kept connection back to the pool; keep none from now on."""
        self._closed = True
        kept, self._kept = self._kept, None
        if kept is not None:
            await _give_back(kept)


async def _give_back(connection: PoolProxiedConnection) -> None:
    """Return a kept connection (its transaction committed: no rollback on the way)."""
    if connection.is_valid:
        mark_committed(connection)
    with anyio.CancelScope(shield=True):
        await compat.close_borrowed(connection)
