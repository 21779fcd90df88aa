"""The inventory database an ``Inventory`` talks to: its engine, its store, other engines.

``Database`` opens lazily (the first ``open()`` creates the engine unless one was given,
builds the adapter's store and creates the schema), creates engines for metadata tables
that live elsewhere (``MetaTable(url=...)``) once per URL, and disposes, on ``aclose()``,
every engine it created and none it was handed.
"""

from __future__ import annotations

import asyncio

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from pybatchintory._registry import adapter_for
from pybatchintory.protocols import InventoryStore

__all__ = ("Database",)


class Database:
    """The inventory's engine and store, and the engines of other metadata databases.

    Args:
        url: The inventory database URL (its scheme picks the adapter).
        table_prefix: Prefix of the inventory's table names.
        engine: Use this engine instead of creating one (never disposed here).

    Raises:
        UnsupportedURL: No adapter for the URL's scheme.
        MissingDriver: The adapter's driver is not installed.
    """

    def __init__(self, url: str, *, table_prefix: str, engine: AsyncEngine | None) -> None:
        self._adapter, self._full_url = adapter_for(url)
        self.url = url
        self._table_prefix = table_prefix
        self._given_engine = engine
        self._engine = engine
        self._store: InventoryStore | None = None
        self._engines: dict[str, AsyncEngine] = {}
        self._open_lock = asyncio.Lock()
        self.closed = False

    @property
    def is_open(self) -> bool:
        """The store exists (``open()`` finished)."""
        return self._store is not None

    @property
    def store(self) -> InventoryStore:
        """The store (after ``open()``)."""
        if self._store is None:
            raise RuntimeError("the Inventory is not open: use `async with Inventory(...)`")
        return self._store

    @property
    def engine(self) -> AsyncEngine:
        """The inventory database engine (after ``open()``)."""
        if self._engine is None:
            raise RuntimeError("the Inventory is not open: use `async with Inventory(...)`")
        return self._engine

    async def open(self) -> InventoryStore:
        """Connect and create the schema if missing; the store."""
        if self._store is not None:
            return self._store
        if self.closed:
            raise RuntimeError("this Inventory was closed")
        async with self._open_lock:
            if self._store is None:
                if self._engine is None:
                    self._engine = self._adapter.create_engine(self._full_url)
                store = self._adapter.create_store(self._engine, table_prefix=self._table_prefix)
                try:
                    await store.setup()
                except BaseException:
                    # Not open, so aclose() may never come: give the connections back now.
                    if self._given_engine is None:
                        with anyio.CancelScope(shield=True):
                            await self._engine.dispose()
                        self._engine = None
                    raise
                self._store = store
        return self._store

    async def migrate(self, *, dry_run: bool) -> list[str]:
        """Bring the schema up to date, open or not (an old schema cannot be opened)."""
        if self.closed:
            raise RuntimeError("this Inventory was closed")
        engine = self._engine or self._adapter.create_engine(self._full_url)
        store = self._adapter.create_store(engine, table_prefix=self._table_prefix)
        try:
            return await store.migrate(dry_run=dry_run)
        finally:
            await store.aclose()
            if engine is not self._engine:
                await engine.dispose()

    def engine_for(self, url: str) -> AsyncEngine:
        """An engine for a metadata database at ``url`` (one per URL, disposed on close).

        The inventory's own URL gives the inventory's engine.
        """
        if url == self.url and self._engine is not None:
            return self._engine
        engine = self._engines.get(url)
        if engine is None:
            adapter, full = adapter_for(url)
            engine = adapter.create_engine(full)
            self._engines[url] = engine
        return engine

    async def aclose(self) -> None:
        """Close the store and dispose the engines created here (shielded)."""
        self.closed = True
        if self._store is not None:
            await self._store.aclose()
        with anyio.CancelScope(shield=True):
            for engine in self._engines.values():
                await engine.dispose()
            if self._engine is not None and self._given_engine is None:
                await self._engine.dispose()
