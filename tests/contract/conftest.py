"""Fixtures of the contract suite: one behavioural suite, run against every store.

Every test here takes ``db_url`` (through ``inventory`` or ``make_files``), which is
parametrised over SQLite, PostgreSQL and MariaDB with markers: ``pytest -m postgres
tests/contract`` runs one backend. Each test gets a fresh database of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

import pybatchintory as pbi

from tests.helpers import create_meta_table

MakeFiles = Callable[..., Awaitable[pbi.MetaTable]]


@pytest.fixture
async def inventory(db_url: str) -> AsyncIterator[pbi.Inventory]:
    """An open ``Inventory`` on a fresh database (lease_ttl 30 s, max_attempts 3)."""
    async with pbi.Inventory(db_url, lease_ttl=30, max_attempts=3) as inv:
        yield inv


@pytest.fixture
def make_files(db_url: str) -> MakeFiles:
    """``await make_files(rows=1000, name="files", weights=None, ...)`` -> a ``MetaTable``.

    Creates the table (ids ``start_id ..``, sizes from ``tests.helpers.default_size`` unless
    ``weights`` is given, kinds cycling through ``kinds``) in the test's database and returns
    a ``MetaTable`` over it with ``weight="size_in_bytes"`` and ``timestamp="imported"``;
    further keyword arguments go to ``MetaTable``.
    """

    async def make(
        rows: int = 1000,
        *,
        name: str = "files",
        weights: Sequence[int] | None = None,
        kinds: Sequence[str] = ("csv", "json"),
        start_id: int = 1,
        **meta_table: Any,
    ) -> pbi.MetaTable:
        await create_meta_table(db_url, name, rows, weights=weights, kinds=kinds, start_id=start_id)
        options: dict[str, Any] = {"weight": "size_in_bytes", "timestamp": "imported"}
        options.update(meta_table)
        return pbi.MetaTable(name, **options)

    return make


@contextmanager
def statements(inventory: pbi.Inventory) -> Iterator[list[str]]:
    """Collect the SQL of every statement the inventory's engine runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    engine = inventory.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
