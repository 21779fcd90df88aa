"""Fresh benchmark databases and fast generated tables on each backend."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_URL = os.environ.get(
    "PYBATCHINTORY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get(
    "PYBATCHINTORY_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"
)


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


@dataclass
class Database:
    """A fresh database for one benchmark run."""

    backend: str
    url: str
    name: str

    async def drop(self) -> None:
        """Drop it (SQLite: remove the file)."""
        if self.backend == "sqlite":
            await asyncio.to_thread(_remove_sqlite, make_url(self.url).database or "")
            return
        server = POSTGRES_URL if self.backend == "postgres" else MYSQL_URL
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
        force = " WITH (FORCE)" if self.backend == "postgres" else ""
        async with engine.connect() as conn:
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {self.name}{force}"))
        await engine.dispose()


async def fresh_database(backend: str, workdir: str) -> Database:
    """Create an empty database on ``backend`` (sqlite, postgres, mysql)."""
    name = f"pbi_bench_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        return Database(backend, f"sqlite+aiosqlite:///{workdir}/{name}.db", name)
    server = POSTGRES_URL if backend == "postgres" else MYSQL_URL
    engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(sa.text(f"CREATE DATABASE {name}"))
    await engine.dispose()
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    return Database(backend, url, name)


_SERIES = {
    "postgres": "SELECT g AS id FROM generate_series(1::bigint, {n}) AS g",
    "mysql": "SELECT seq AS id FROM seq_1_to_{n}",
    "sqlite": (
        "WITH RECURSIVE s(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM s WHERE id < {n}) "
        "SELECT id FROM s"
    ),
}


async def create_files(url: str, backend: str, rows: int, table: str = "files") -> None:
    """A metadata table ``(id, size_in_bytes, kind)`` with ``rows`` generated rows.

    Sizes are ``(id * 7919) % 1000 + 1`` (mean ~500), so a weight cap of 500_000 holds
    about 1000 rows, like the count cap.
    """
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, size_in_bytes BIGINT NOT NULL, "
                "kind VARCHAR(16) NOT NULL)"
            )
        )
        series = _SERIES[backend].format(n=rows)
        await conn.execute(
            sa.text(
                f"INSERT INTO {table} (id, size_in_bytes, kind) "
                f"SELECT id, (id * 7919) % 1000 + 1, "
                f"CASE WHEN id % 2 = 0 THEN 'json' ELSE 'csv' END FROM ({series}) AS ids"
            )
        )
    async with engine.connect() as conn:
        analyze = {"postgres": f"ANALYZE {table}", "mysql": f"ANALYZE TABLE {table}"}
        if backend in analyze:
            await conn.execute(sa.text(analyze[backend]))
        await conn.commit()
    await engine.dispose()
