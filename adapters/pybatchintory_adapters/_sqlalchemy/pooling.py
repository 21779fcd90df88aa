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

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection

__all__ = (
    "CLEAN_RETURN_OPTIONS",
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
