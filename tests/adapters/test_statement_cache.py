"""The store's cache of compiled statements stays small, whatever the callers do.

Statements of the direct hot path are compiled once and kept by identity; a source that
built a statement per call (the ``settle=`` horizon did) made the cache, and the store,
grow by one entry per acquire for as long as the process lived.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

import pybatchintory as pbi
from pybatchintory_adapters._sqlalchemy.driver_path import PREPARED_STATEMENTS, DirectConnection
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

from tests.helpers import create_meta_table


async def test_acquires_with_a_settle_window_compile_nothing_new(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inv.db'}"
    await create_meta_table(url, rows=500)
    files = pbi.MetaTable(
        "files", weight="size_in_bytes", timestamp="imported", settle=timedelta(0)
    )
    async with pbi.Inventory(url) as inv:
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        for _ in range(3):
            async with inv.lease("settled", files, max_count=10):
                pass
        size = len(store._prepared)
        for _ in range(20):
            async with inv.lease("settled", files, max_count=10):
                pass
        assert len(store._prepared) == size


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inv.db'}"
    async with pbi.Inventory(url) as inv:
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        link = DirectConnection(None, inv.engine, store._prepared)  # type: ignore[arg-type]
        statements = [sa.select(sa.literal(i)) for i in range(PREPARED_STATEMENTS + 50)]
        for statement in statements:
            link._get(statement)
        assert len(store._prepared) == PREPARED_STATEMENTS
        # The newest are kept, the oldest went first.
        assert id(statements[-1]) in store._prepared
        assert id(statements[0]) not in store._prepared
