"""Backends for the test suite: a database of its own for every test, on every server.

Each test's database is made ahead of it and dropped behind it on a background thread
(``DatabaseFactory``); ``db_url`` is a clone of a per-session template that already holds
the ledger schema, ``empty_db_url`` and ``meta_db_url`` are empty. Names carry the xdist
worker, so parallel workers (``make test`` runs ``pytest -n``) never meet.

PostgreSQL and MySQL/MariaDB come from ``PYBATCHINTORY_TEST_POSTGRES_URL`` and
``PYBATCHINTORY_TEST_MYSQL_URL`` (defaults: the loopback servers). A server that cannot be
reached skips its tests with the reason, unless it is listed in
``PYBATCHINTORY_TEST_REQUIRE`` (CI: ``postgres,mysql``), where it fails them instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
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


_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_POOL_DEPTH = 2  # databases made ahead, per backend and kind


def _database_url(backend: str, name: str) -> str:
    return make_url(_SERVER_URL[backend]).set(database=name).render_as_string(hide_password=False)


def _new_name(kind: str) -> str:
    """A database name unique across runs, sessions and xdist workers."""
    return f"pbi_{kind}_{_WORKER}_{uuid.uuid4().hex[:8]}"


async def _open_and_close(url: str) -> None:
    """Create the inventory schema the way the library does: an ``Inventory`` opened once."""
    import pybatchintory as pbi

    async with pbi.Inventory(url):
        pass


async def _pg_clone(name: str, template: str) -> None:
    """``CREATE DATABASE name TEMPLATE template``, retried while the template's last
    connection is still going away (PostgreSQL refuses a template that has one)."""
    import asyncpg

    for _ in range(100):
        try:
            await _pg_execute(f"CREATE DATABASE {name} TEMPLATE {template}")
            return
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(0.05)
    await _pg_execute(f"CREATE DATABASE {name} TEMPLATE {template}")


async def _mysql_tables(database: str) -> list[str]:
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
            await cursor.execute(
                f"SHOW FULL TABLES FROM {database} WHERE Table_type = 'BASE TABLE'"
            )
            return [row[0] for row in await cursor.fetchall()]
    finally:
        conn.close()


def _drop_statement(backend: str, name: str) -> str:
    if backend == "postgres":
        return f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    return f"DROP DATABASE IF EXISTS {name}"


class _ServerDatabases:
    """One server's databases for this process (one xdist worker): made ahead, dropped behind.

    A single background thread does every CREATE and DROP, so the tests do not wait for
    them: while a test runs, the next databases are made and the last ones dropped. Two
    kinds: ``empty`` (a plain ``CREATE DATABASE``, as a user's new database) and
    ``inventory`` (a clone of this session's template, in which an ``Inventory`` was opened
    once: the ledger schema at the current version, as the library creates it). PostgreSQL
    clones with ``CREATE DATABASE ... TEMPLATE``; MySQL/MariaDB, which has no templates,
    with ``CREATE TABLE ... LIKE`` (one statement per table, indexes included) and a copy
    of the template's rows.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pbi-{backend}")
        self._ready: dict[str, deque[Future[str]]] = {"empty": deque(), "inventory": deque()}
        self._template: str | None = None
        self._tables: list[str] = []
        self._made: set[str] = set()
        self._lock = threading.Lock()

    def take(self, kind: str) -> str:
        """A database of ``kind`` of this test's own: its name."""
        with self._lock:
            ready = self._ready[kind]
            if not ready:
                ready.append(self._executor.submit(self._make, kind))
            future = ready.popleft()
            while len(ready) < _POOL_DEPTH:
                ready.append(self._executor.submit(self._make, kind))
        return future.result()

    def drop(self, name: str) -> None:
        """Drop ``name`` in the background (after the databases already asked for)."""
        self._executor.submit(self._drop, name)

    def close(self) -> None:
        """Drop what was made ahead and the template; wait for every pending drop."""
        with self._lock:
            pending = [f for ready in self._ready.values() for f in ready]
            for ready in self._ready.values():
                ready.clear()
        for future in pending:
            try:
                self.drop(future.result())
            except Exception:  # a failed make left nothing to drop
                pass
        if self._template is not None:
            self.drop(self._template)
        self._executor.shutdown(wait=True)
        leftover = sorted(self._made)
        if leftover:  # a drop failed: say so, never leave databases behind silently
            raise RuntimeError(f"test databases not dropped on {self.backend}: {leftover}")

    def _make(self, kind: str) -> str:
        return asyncio.run(self._make_async(kind))

    async def _make_async(self, kind: str) -> str:
        execute = _EXECUTE[self.backend]
        name = _new_name("test")
        if kind == "empty":
            await execute(f"CREATE DATABASE {name}")
            self._made.add(name)
            return name
        template = await self._ensure_template()
        if self.backend == "postgres":
            await _pg_clone(name, template)
            self._made.add(name)
            return name
        await execute(f"CREATE DATABASE {name}")
        self._made.add(name)
        for table in self._tables:
            await execute(f"CREATE TABLE {name}.{table} LIKE {template}.{table}")
            await execute(f"INSERT INTO {name}.{table} SELECT * FROM {template}.{table}")
        return name

    async def _ensure_template(self) -> str:
        if self._template is None:
            name = _new_name("tpl")
            await _EXECUTE[self.backend](f"CREATE DATABASE {name}")
            self._made.add(name)
            await _open_and_close(_database_url(self.backend, name))
            if self.backend == "mysql":
                self._tables = await _mysql_tables(name)
            self._template = name
        return self._template

    def _drop(self, name: str) -> None:
        asyncio.run(_EXECUTE[self.backend](_drop_statement(self.backend, name)))
        self._made.discard(name)


class _SqliteTemplate:
    """SQLite's session template: a file in which an ``Inventory`` was opened once; each
    test gets a copy."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._path: Path | None = None
        self._lock = threading.Lock()

    def copy_to(self, target: Path) -> None:
        with self._lock:
            if self._path is None:
                path = self._tmp.mktemp("pbi_tpl") / "inventory.db"
                asyncio.run(_open_and_close(f"sqlite+aiosqlite:///{path}"))
                self._path = path
        shutil.copyfile(self._path, target)


@dataclass
class _Databases:
    """The session's source of test databases, per server."""

    tmp: pytest.TempPathFactory
    servers: dict[str, _ServerDatabases] = field(default_factory=dict)
    sqlite: _SqliteTemplate | None = None

    def server(self, backend: str) -> _ServerDatabases:
        if backend not in self.servers:
            self.servers[backend] = _ServerDatabases(backend)
        return self.servers[backend]

    def sqlite_template(self) -> _SqliteTemplate:
        if self.sqlite is None:
            self.sqlite = _SqliteTemplate(self.tmp)
        return self.sqlite

    def close(self) -> None:
        errors = []
        for server in self.servers.values():
            try:
                server.close()
            except RuntimeError as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Databases]:
    databases = _Databases(tmp_path_factory)
    try:
        yield databases
    finally:
        databases.close()


class DatabaseFactory:
    """Gives a test databases of its own on any backend, dropped after it.

    ``factory(backend)`` is an empty database (as a user's new one); ``factory(backend,
    inventory=True)`` already holds the ledger schema, cloned from the session's template
    (an ``Inventory`` opened on it is ready at once). Making and dropping happen on a
    background thread per server, ahead of and behind the tests.
    """

    def __init__(
        self,
        servers: _Servers,
        tmp_path_factory: pytest.TempPathFactory,
        databases: _Databases,
    ) -> None:
        self._servers = servers
        self._tmp = tmp_path_factory
        self._databases = databases
        self._created: list[tuple[str, str]] = []

    def __call__(self, backend: str, *, inventory: bool = False) -> str:
        self._servers.check(backend)
        if backend == "sqlite":
            path = self._tmp.mktemp(_new_name("test")) / "inventory.db"
            if inventory:
                self._databases.sqlite_template().copy_to(path)
            return f"sqlite+aiosqlite:///{path}"
        name = self._databases.server(backend).take("inventory" if inventory else "empty")
        self._created.append((backend, name))
        return _database_url(backend, name)

    def drop_all(self) -> None:
        for backend, name in reversed(self._created):
            self._databases.server(backend).drop(name)
        self._created.clear()


@pytest.fixture
def any_db_url_factory(
    servers: _Servers, tmp_path_factory: pytest.TempPathFactory, _databases: _Databases
) -> Iterator[DatabaseFactory]:
    """``make(backend, inventory=False) -> url``: fresh databases of any backend, dropped
    afterwards."""
    factory = DatabaseFactory(servers, tmp_path_factory, _databases)
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
    """A database of the test's own on the current backend, with the ledger schema in place
    (a clone of the session's template: see ``DatabaseFactory``)."""
    return any_db_url_factory(backend, inventory=True)


@pytest.fixture
def empty_db_url(backend: str, any_db_url_factory: DatabaseFactory) -> str:
    """An empty database of the test's own on the current backend (no ledger schema yet)."""
    return any_db_url_factory(backend)


@pytest.fixture
def meta_db_url(backend: str, any_db_url_factory: DatabaseFactory) -> str:
    """A second, empty database of the same backend (a separate metadata database)."""
    return any_db_url_factory(backend)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow modules (worker processes, Spark, Dask, the CLI's subprocesses) first.

    ``make test`` runs pytest-xdist with ``--dist loadfile``: each module goes whole to
    one worker (one Spark JVM, one Dask cluster, module fixtures set up once). The longest
    modules then start early and the short ones fill in around them, instead of one long
    module closing the run on a single worker. Whole modules move, in their own order.
    """
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0]
        if module in slow_modules:
            return 0
        return 1 if module.startswith("tests/cli/") else 2

    items.sort(key=rank)  # stable: the order within a rank is kept
