"""SQLite runs a hot-path transaction in one hop to aiosqlite's thread.

``_AiosqliteSession.in_thread`` runs the store's whole transaction (``BEGIN IMMEDIATE``,
the statements, ``COMMIT``) as plain ``sqlite3`` calls on aiosqlite's thread, instead of
one hop per statement. Work that waits on something else there is rolled back and runs on
the loop instead; the aiosqlite internals it uses are checked here by name.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa

import pybatchintory as pbi
from pybatchintory_adapters._sqlalchemy.driver_path import HotPath
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

from tests.helpers import create_meta_table, fetch_all

pytestmark = pytest.mark.sqlite


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    """Calls handed to aiosqlite's thread, by what they run."""
    seen: collections.Counter[str] = collections.Counter()
    original: Any = aiosqlite.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen[getattr(fn, "__name__", type(fn).__name__)] += 1
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield seen


async def test_the_aiosqlite_internals_used_are_there(tmp_path: Path) -> None:
    """``_execute`` runs a callable on the thread; ``_conn`` is the sqlite3 connection."""
    async with aiosqlite.connect(tmp_path / "internals.db") as opened:
        conn: Any = opened  # private and untyped: what the adapter relies on
        raw = conn._conn
        assert isinstance(raw, sqlite3.Connection)
        answer = await conn._execute(lambda: raw.execute("SELECT 41 + 1").fetchone())
        assert answer == (42,)


async def test_a_lease_is_one_hop_to_acquire_and_one_to_settle(
    tmp_path: Path, hops: collections.Counter[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hops.db'}"
    await create_meta_table(url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url) as inv:
        first = await inv.acquire("hop", files, max_count=10)
        assert first is not None
        await first.success()
        for start in (11, 21, 31):
            hops.clear()
            batch = await inv.acquire("hop", files, max_count=10)
            assert batch is not None and (batch.meta_id_start, batch.meta_id_end) == (
                start,
                start + 9,
            )
            assert hops == {"drive": 1}, hops  # BEGIN IMMEDIATE .. COMMIT in one hop
            hops.clear()
            await batch.success()
            assert hops == {"drive": 1}, hops
        assert (await inv.status())[0].cursor == 40


async def test_work_that_waits_on_the_loop_is_rolled_back_and_run_there(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'suspend.db'}"
    await create_meta_table(url, rows=10)
    async with pbi.Inventory(url) as inv:
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        insert = sa.text("INSERT INTO files (id, size_in_bytes, kind) VALUES (:id, 1, 'csv')")
        threads: list[str] = []

        async def work(ex: HotPath, link: object) -> int:
            threads.append(threading.current_thread().name)
            rows = await ex.run(insert, {"id": 1000 + len(threads)})
            await asyncio.sleep(0)  # waits on the event loop: cannot finish on the thread
            return rows

        assert await store._transact_hot(work, pure=True) == 1
    # First on aiosqlite's thread, then (after it waited on the loop) on the loop's own.
    assert threads[0] != threads[1] == threading.main_thread().name
    found = await fetch_all(url, "SELECT id FROM files WHERE id > 1000 ORDER BY id")
    assert [row["id"] for row in found] == [1002]  # the thread's try was rolled back
