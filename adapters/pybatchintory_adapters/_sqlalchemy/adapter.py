"""The base every built-in adapter specialises: driver check, engine, store, capabilities."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pybatchintory.errors import MissingDriver
from pybatchintory_adapters._sqlalchemy.capabilities import Capabilities
from pybatchintory_adapters._sqlalchemy.pooling import CLEAN_RETURN_OPTIONS, install_clean_return
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore
from pybatchintory_adapters._sqlalchemy.tables import build_tables

__all__ = ("SQLAlchemyAdapter",)


class SQLAlchemyAdapter:
    """An adapter built on SQLAlchemy's asyncio engine.

    Args:
        name: Backend name as in the URL (``postgresql``).
        extra: The pip extra that installs the driver (``postgres``).
        drivers: Async driver name in the URL -> module to import.
        capabilities: The database's differences.
        engine_options: Defaults for ``create_async_engine``.
        configure: Called with each new engine (event hooks such as SQLite's ``BEGIN``).
    """

    def __init__(
        self,
        *,
        name: str,
        extra: str,
        drivers: Mapping[str, str],
        capabilities: Capabilities,
        engine_options: Mapping[str, Any] | None = None,
        configure: Callable[[AsyncEngine], None] | None = None,
    ) -> None:
        self.name = name
        self.extra = extra
        self.drivers = dict(drivers)
        self.capabilities = capabilities
        self.engine_options = dict(engine_options or {})
        self._configure = configure

    def default_driver(self) -> str:
        """The first async driver listed for this database."""
        return next(iter(self.drivers))

    def check_driver(self, driver: str) -> None:
        """Raise ``MissingDriver`` if ``driver`` is unknown or not installed."""
        module = self.drivers.get(driver)
        if module is None:
            known = ", ".join(self.drivers)
            raise MissingDriver(
                f"driver {driver!r} is not supported for {self.name}; use an async driver: {known}"
            )
        if importlib.util.find_spec(module) is None:
            raise MissingDriver(
                f"the {self.name} adapter needs the {module!r} package. "
                f"Install it with: pip install 'pybatchintory[{self.extra}]'"
            )

    def create_engine(self, url: str, **options: Any) -> AsyncEngine:
        """An engine with this database's defaults and hooks."""
        merged = {**CLEAN_RETURN_OPTIONS, **self.engine_options, **options}
        engine = create_async_engine(url, **merged)
        if merged["pool_reset_on_return"] is None:  # not overridden by the caller
            install_clean_return(engine)
        if self._configure is not None:
            self._configure(engine)
        return engine

    def create_store(self, engine: AsyncEngine, *, table_prefix: str = "") -> SQLAlchemyStore:
        """A store on ``engine`` (which it never disposes)."""
        return SQLAlchemyStore(
            engine, tables=build_tables(table_prefix), capabilities=self.capabilities
        )
