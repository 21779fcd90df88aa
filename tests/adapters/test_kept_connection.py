"""The hot path keeps one committed connection between transactions (``KeptConnection``).

A worker leasing one batch after another borrows from the pool once instead of twice per
lease; the kept connection goes back to the pool when it idled too long, when it was
invalidated, and when the inventory closes. Checked against a real pool on every backend
(the slot itself on SQLite).
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

import pybatchintory as pbi
from pybatchintory._registry import adapter_for
from pybatchintory_adapters._sqlalchemy import compat
from pybatchintory_adapters._sqlalchemy.pooling import KeptConnection
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

from tests.adapters.conftest import checked_out
from tests.conftest import DatabaseFactory
from tests.helpers import create_meta_table


@pytest.mark.sqlite
async def test_one_slot_handed_back_once(engine: AsyncEngine) -> None:
    kept = KeptConnection()
    assert await kept.take() is None
    first, second = await engine.raw_connection(), await engine.raw_connection()
    assert kept.keep(first)
    assert not kept.keep(second)  # one slot: the second goes back to the pool
    await compat.close_borrowed(second)
    assert await kept.take() is first
    assert await kept.take() is None  # taken: no longer kept
    assert kept.keep(first)
    await kept.aclose()
    assert checked_out(engine) == 0
    again = await engine.raw_connection()
    assert not kept.keep(again)  # closed: keeps nothing more
    await compat.close_borrowed(again)


@pytest.mark.sqlite
async def test_an_idle_or_invalidated_connection_goes_back_to_the_pool(
    engine: AsyncEngine,
) -> None:
    kept = KeptConnection(idle=0.0)
    borrowed = await engine.raw_connection()
    assert kept.keep(borrowed)
    assert await kept.take() is None  # idled too long: returned, not handed out
    assert checked_out(engine) == 0

    kept = KeptConnection()
    borrowed = await engine.raw_connection()
    assert kept.keep(borrowed)
    await compat.invalidate_borrowed(borrowed)
    assert await kept.take() is None  # invalidated meanwhile: never handed out again
    assert checked_out(engine) == 0


@pytest.fixture
def url(backend: str, any_db_url_factory: DatabaseFactory) -> str:
    return any_db_url_factory(backend)  # outside the test's loop: it may probe the server


async def test_a_worker_borrows_one_connection_and_closing_gives_it_back(url: str) -> None:
    await create_meta_table(url, rows=200)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    # A queue pool on every backend and SQLAlchemy release (older ones give a SQLite file
    # a NullPool), so that what is checked out can be counted.
    adapter, full = adapter_for(url)
    engine = adapter.create_engine(full, poolclass=AsyncAdaptedQueuePool)
    try:
        await _one_connection(engine, url, files)
    finally:
        await engine.dispose()


async def _one_connection(engine: AsyncEngine, url: str, files: pbi.MetaTable) -> None:
    async with pbi.Inventory(url, engine=engine) as inv:
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        drivers = set()
        for _ in range(5):
            batch = await inv.acquire("kept", files, max_count=10)
            assert batch is not None
            await batch.success()
            kept = await store._kept.take()
            assert kept is not None
            drivers.add(id(kept.driver_connection))
            assert store._kept.keep(kept)
        assert len(drivers) == 1  # the same connection for every acquire and settle
        assert checked_out(engine) == 1  # kept, not leaked: only that one is out
        assert (await inv.status())[0].cursor == 50  # the rest of the pool serves reads
    assert checked_out(engine) == 0
