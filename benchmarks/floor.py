"""The raw-SQL floor: the fewest statements a correct lease can cost, straight on the driver.

One transaction locks the job row, cuts the range with an index-bounded query and inserts
the attempt (and moves the cursor); one statement settles it, fenced by token and status.
The range query sums the weight column as well as counting: the ledger records both for
every range, so a lease that skipped the weight would not be the same lease.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.engine import make_url

SCHEMA = (
    "CREATE TABLE floor_jobs (name VARCHAR(64) PRIMARY KEY, cursor_id BIGINT NOT NULL)",
    "CREATE TABLE floor_attempts (id {serial}, job VARCHAR(64) NOT NULL, "
    "id_start BIGINT NOT NULL, id_end BIGINT NOT NULL, cnt BIGINT NOT NULL, weight BIGINT, "
    "status VARCHAR(16) NOT NULL, token VARCHAR(64) NOT NULL)",
)
SERIAL = {
    "postgres": "BIGSERIAL PRIMARY KEY",
    "mysql": "BIGINT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
}


class Floor:
    """A lease loop written directly against one driver."""

    def __init__(self, backend: str, url: str, cap: int) -> None:
        self.backend = backend
        self.url = make_url(url)
        self.cap = cap
        self.conn: Any = None

    async def open(self) -> None:
        """Connect and create the floor's tables."""
        u = self.url
        if self.backend == "postgres":
            import asyncpg

            self.conn = await asyncpg.connect(
                host=u.host, port=u.port, user=u.username, database=u.database
            )
        elif self.backend == "mysql":
            import aiomysql

            self.conn = await aiomysql.connect(
                host=u.host,
                port=u.port or 3306,
                user=u.username,
                password=u.password or "",
                db=u.database,
                autocommit=True,
            )
            await self._mysql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        else:
            import aiosqlite

            self.conn = await aiosqlite.connect(u.database or "", isolation_level=None)
            await self.conn.execute("PRAGMA journal_mode = WAL")
            await self.conn.execute("PRAGMA synchronous = NORMAL")
        for statement in SCHEMA:
            await self._exec(statement.format(serial=SERIAL[self.backend]))
        await self._exec("INSERT INTO floor_jobs VALUES ('floor', 0)")

    async def _mysql(self, sql: str, *args: Any) -> Any:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, args or None)
            return await cur.fetchone(), cur.lastrowid

    async def _exec(self, sql: str) -> None:
        if self.backend == "postgres":
            await self.conn.execute(sql)
        elif self.backend == "mysql":
            await self._mysql(sql)
        else:
            await self.conn.execute(sql)

    async def lease(self) -> None:
        """One acquire (one transaction) and one fenced settle."""
        token = secrets.token_hex(16)
        if self.backend == "postgres":
            c = self.conn
            async with c.transaction():
                cursor = await c.fetchval(
                    "SELECT cursor_id FROM floor_jobs WHERE name = 'floor' FOR UPDATE"
                )
                end, count, weight = await c.fetchrow(
                    "SELECT max(id), count(*), sum(w) FROM (SELECT id, size_in_bytes AS w "
                    "FROM files WHERE id > $1 "
                    "ORDER BY id LIMIT $2) s",
                    cursor,
                    self.cap,
                )
                attempt = await c.fetchval(
                    "INSERT INTO floor_attempts "
                    "(job, id_start, id_end, cnt, weight, status, token) "
                    "VALUES ('floor', $1, $2, $3, $4, 'running', $5) RETURNING id",
                    cursor + 1,
                    end,
                    count,
                    weight,
                    token,
                )
                await c.execute("UPDATE floor_jobs SET cursor_id = $1 WHERE name = 'floor'", end)
            await c.execute(
                "UPDATE floor_attempts SET status = 'succeeded' "
                "WHERE id = $1 AND token = $2 AND status = 'running'",
                attempt,
                token,
            )
        elif self.backend == "mysql":
            await self._mysql("BEGIN")
            (cursor,), _ = await self._mysql(
                "SELECT cursor_id FROM floor_jobs WHERE name = 'floor' FOR UPDATE"
            )
            (end, count, weight), _ = await self._mysql(
                "SELECT max(id), count(*), sum(w) FROM (SELECT id, size_in_bytes AS w "
                "FROM files WHERE id > %s "
                "ORDER BY id LIMIT %s) s",
                cursor,
                self.cap,
            )
            _, attempt = await self._mysql(
                "INSERT INTO floor_attempts (job, id_start, id_end, cnt, weight, status, token) "
                "VALUES ('floor', %s, %s, %s, %s, 'running', %s)",
                cursor + 1,
                end,
                count,
                weight,
                token,
            )
            await self._mysql("UPDATE floor_jobs SET cursor_id = %s WHERE name = 'floor'", end)
            await self._mysql("COMMIT")
            await self._mysql(
                "UPDATE floor_attempts SET status = 'succeeded' "
                "WHERE id = %s AND token = %s AND status = 'running'",
                attempt,
                token,
            )
        else:
            c = self.conn
            await c.execute("BEGIN IMMEDIATE")
            async with c.execute("SELECT cursor_id FROM floor_jobs WHERE name = 'floor'") as cur:
                (cursor,) = await cur.fetchone()
            async with c.execute(
                "SELECT max(id), count(*), sum(w) FROM (SELECT id, size_in_bytes AS w "
                "FROM files WHERE id > ? "
                "ORDER BY id LIMIT ?)",
                (cursor, self.cap),
            ) as cur:
                end, count, weight = await cur.fetchone()
            async with c.execute(
                "INSERT INTO floor_attempts (job, id_start, id_end, cnt, weight, status, token) "
                "VALUES ('floor', ?, ?, ?, ?, 'running', ?)",
                (cursor + 1, end, count, weight, token),
            ) as cur:
                attempt = cur.lastrowid
            await c.execute("UPDATE floor_jobs SET cursor_id = ? WHERE name = 'floor'", (end,))
            await c.execute("COMMIT")
            await c.execute(
                "UPDATE floor_attempts SET status = 'succeeded' "
                "WHERE id = ? AND token = ? AND status = 'running'",
                (attempt, token),
            )

    async def rewind(self) -> None:
        """Start again from the head of the table."""
        await self._exec("UPDATE floor_jobs SET cursor_id = 0 WHERE name = 'floor'")

    async def close(self) -> None:
        """Close the connection."""
        if self.conn is None:
            return
        if self.backend == "mysql":
            self.conn.close()
        else:
            await self.conn.close()
