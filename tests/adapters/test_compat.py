"""The SQLAlchemy internals the driver path relies on (``_sqlalchemy.compat``) still work.

Each test exercises one function of ``compat`` against a real pool (SQLite), so a
SQLAlchemy release that moves or changes one of them fails here, by name, rather than as a
leaked connection or a dead pool generation somewhere in the contract suite. The public
APIs the driver path uses instead of internals are checked too.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from pybatchintory_adapters._sqlalchemy import compat
from pybatchintory_adapters._sqlalchemy.driver_path import Prepared, _returns_rows

from tests.adapters.conftest import checked_out

pytestmark = pytest.mark.sqlite


async def test_a_borrowed_connection_closes_back_into_the_pool(engine: AsyncEngine) -> None:
    borrowed = await engine.raw_connection()
    driver = borrowed.driver_connection
    assert driver is not None
    assert checked_out(engine) == 1
    await compat.close_borrowed(borrowed)
    assert checked_out(engine) == 0
    again = await engine.raw_connection()
    try:
        # The pool handed the same driver connection out again: it was returned, not leaked.
        assert again.driver_connection is driver
    finally:
        await compat.close_borrowed(again)


async def test_an_overflow_connection_is_really_closed(engine: AsyncEngine) -> None:
    borrowed = [await engine.raw_connection() for _ in range(3)]  # pool_size 2 + 1 overflow
    assert checked_out(engine) == 3
    for one in borrowed:
        await compat.close_borrowed(one)
    assert checked_out(engine) == 0
    pool = engine.sync_engine.pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert pool.checkedin() == 2


async def test_an_invalidated_connection_is_never_handed_out_again(engine: AsyncEngine) -> None:
    borrowed = await engine.raw_connection()
    dead = borrowed.driver_connection
    await compat.invalidate_borrowed(borrowed)
    await compat.close_borrowed(borrowed)
    fresh = await engine.raw_connection()
    try:
        assert fresh.driver_connection is not dead
    finally:
        await compat.close_borrowed(fresh)


async def test_recycling_a_generation_replaces_every_pooled_connection(
    engine: AsyncEngine,
) -> None:
    first, second = await engine.raw_connection(), await engine.raw_connection()
    old = [first.driver_connection, second.driver_connection]  # kept alive: ids not reused
    await compat.close_borrowed(second)  # back in the pool, of the same generation
    await compat.recycle_generation(engine, first, ConnectionError("server restarted"))
    await compat.close_borrowed(first)
    replacements = [await engine.raw_connection(), await engine.raw_connection()]
    try:
        assert not any(r.driver_connection is o for r in replacements for o in old)
    finally:
        for one in replacements:
            await compat.close_borrowed(one)


async def test_in_greenlet_runs_a_sync_call_that_does_driver_io(engine: AsyncEngine) -> None:
    borrowed = await engine.raw_connection()
    try:
        cursor = await compat.in_greenlet(borrowed.cursor)
        await compat.in_greenlet(cursor.execute, "SELECT 41 + 1")
        assert await compat.in_greenlet(cursor.fetchall) == [(42,)]
    finally:
        await compat.close_borrowed(borrowed)


def test_returning_columns_are_read_through_public_api() -> None:
    t = sa.table("t", sa.column("id", sa.Integer()), sa.column("v", sa.String()))
    assert _returns_rows(sa.insert(t).values(v="x").returning(t.c.id))
    assert not _returns_rows(sa.insert(t).values(v="x"))
    assert not _returns_rows(sa.update(t).values(v="x"))


async def test_prepared_statements_render_expanding_lists_per_call(engine: AsyncEngine) -> None:
    t = sa.table("t", sa.column("id", sa.Integer()))
    ids: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)
    listed = Prepared(sa.select(t.c.id).where(t.c.id.in_(ids)), engine.dialect)
    assert listed.expanding
    sql, args = listed.statement_for({"ids": [3, 5, 8]})
    assert args == [3, 5, 8] and sql.count("?") == 3
    plain = Prepared(sa.select(t.c.id).where(t.c.id == sa.bindparam("one")), engine.dialect)
    assert not plain.expanding
    assert plain.statement_for({"one": 7}) == (plain.sql, [7])
