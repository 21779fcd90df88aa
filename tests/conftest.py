"""Backends for the test suite: one fresh database per test, on every server.

PostgreSQL and MySQL/MariaDB come from ``PYBATCHINTORY_TEST_POSTGRES_URL`` and
``PYBATCHINTORY_TEST_MYSQL_URL`` (defaults: the loopback servers). A server that cannot be
reached skips its tests with the reason, unless it is listed in
``PYBATCHINTORY_TEST_REQUIRE`` (CI: ``postgres,mysql``), where it fails them instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get(
    "PYBATCHINTORY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get(
    "PYBATCHINTORY_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"
)
REQUIRED = {
    name.strip()
    for name in os.environ.get("PYBATCHINTORY_TEST_REQUIRE", "").split(",")
    if name.strip()
}
BACKENDS = ("sqlite", "postgres", "mysql")


async def _pg_execute(statement: str) -> None:
    import asyncpg

    url = make_url(POSTGRES_URL)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
        timeout=10,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _mysql_execute(statement: str) -> None:
    import aiomysql

    url = make_url(MYSQL_URL)
    conn = await aiomysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        connect_timeout=10,
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
        await conn.commit()
    finally:
        conn.close()


_EXECUTE: dict[str, Callable[[str], Coroutine[Any, Any, None]]] = {
    "postgres": _pg_execute,
    "mysql": _mysql_execute,
}
_SERVER_URL = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}


@dataclass
class _Servers:
    """Which servers answered, probed once per session."""

    errors: dict[str, str | None] = field(default_factory=dict)

    def check(self, backend: str) -> None:
        if backend == "sqlite":
            return
        if backend not in self.errors:
            try:
                asyncio.run(_EXECUTE[backend]("SELECT 1"))
                self.errors[backend] = None
            except Exception as exc:  # any failure to reach the server
                self.errors[backend] = f"{type(exc).__name__}: {exc}"
        error = self.errors[backend]
        if error is None:
            return
        shown = make_url(_SERVER_URL[backend]).render_as_string(hide_password=True)
        message = f"{backend} server at {shown} is unreachable: {error}"
        if backend in REQUIRED:
            pytest.fail(f"{message} (required by PYBATCHINTORY_TEST_REQUIRE)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def servers() -> _Servers:
    """The session's server probe."""
    return _Servers()


class DatabaseFactory:
    """Creates fresh databases on any backend and drops them at teardown."""

    def __init__(self, servers: _Servers, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._servers = servers
        self._tmp = tmp_path_factory
        self._created: list[tuple[str, str]] = []

    def __call__(self, backend: str) -> str:
        self._servers.check(backend)
        name = f"pbi_test_{uuid.uuid4().hex[:8]}"
        if backend == "sqlite":
            path = self._tmp.mktemp(name) / "inventory.db"
            return f"sqlite+aiosqlite:///{path}"
        asyncio.run(_EXECUTE[backend](f"CREATE DATABASE {name}"))
        self._created.append((backend, name))
        return (
            make_url(_SERVER_URL[backend]).set(database=name).render_as_string(hide_password=False)
        )

    def drop_all(self) -> None:
        for backend, name in reversed(self._created):
            if backend == "postgres":
                statement = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            else:
                statement = f"DROP DATABASE IF EXISTS {name}"
            asyncio.run(_EXECUTE[backend](statement))
        self._created.clear()


@pytest.fixture
def any_db_url_factory(
    servers: _Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseFactory]:
    """``make(backend) -> url`` for fresh databases of any backend, dropped afterwards."""
    factory = DatabaseFactory(servers, tmp_path_factory)
    try:
        yield factory
    finally:
        factory.drop_all()


@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in BACKENDS])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend of the current parametrisation: sqlite, postgres or mysql."""
    name: str = request.param
    return name


@pytest.fixture
def db_url(backend: str, any_db_url_factory: DatabaseFactory) -> str:
    """A fresh database of the current backend."""
    return any_db_url_factory(backend)


@pytest.fixture
def meta_db_url(backend: str, any_db_url_factory: DatabaseFactory) -> str:
    """A second fresh database of the same backend (a separate metadata database)."""
    return any_db_url_factory(backend)
