"""Every use of SQLAlchemy's non-public API, in one place.

The driver path (``driver_path``) borrows a pooled DBAPI connection without a
``Connection`` around it, through the public ``AsyncEngine.raw_connection()``. Giving it
back, or dropping it, needs I/O that SQLAlchemy's asyncio layer only runs inside its
greenlet bridge, and after a lost connection the pool should recycle every connection of
that generation, as SQLAlchemy's own ``Connection`` does. Neither has a public API, so both
live here, each checked by ``tests/adapters/test_compat.py``. The package allows
``sqlalchemy>=2.0.30,<2.2``: a release that moves one of these breaks that test first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

__all__ = ("close_borrowed", "in_greenlet", "invalidate_borrowed", "recycle_generation")

T = TypeVar("T")


async def in_greenlet(func: Callable[..., T], *args: Any) -> T:
    """Run a sync SQLAlchemy call that may do driver I/O (``sqlalchemy.util.greenlet_spawn``)."""
    result: T = await greenlet_spawn(func, *args)
    return result


async def close_borrowed(connection: PoolProxiedConnection) -> None:
    """Return a borrowed connection to its pool.

    Always through the greenlet bridge: even a committed connection may need I/O on its way
    back (an overflow connection is closed by the pool), and outside a greenlet that close
    fails silently and leaks the connection.
    """
    await greenlet_spawn(connection.close)


async def invalidate_borrowed(connection: PoolProxiedConnection) -> None:
    """Close a borrowed connection for good: the pool will not hand it out again."""
    await greenlet_spawn(connection.invalidate)


async def recycle_generation(
    engine: AsyncEngine, connection: PoolProxiedConnection, exc: BaseException
) -> None:
    """Invalidate ``connection`` and every pooled connection as old as it (``Pool._invalidate``).

    What SQLAlchemy's own ``Connection`` does on a disconnect: after a server restart the
    pool does not hand out its dead connections one by one, each failing a transaction.
    """
    await greenlet_spawn(engine.sync_engine.pool._invalidate, connection, exc)
