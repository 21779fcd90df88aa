"""The raw-SQL floors: the fewest statements a correct lease can cost, straight on the driver.

Two-transaction floor (``Floor(..., one_statement=False)``, every backend): one
transaction locks the job row, cuts the range with an index-bounded query and inserts
the attempt (and moves the cursor); one statement settles it, fenced by token and status.

One-statement floor (``one_statement=True``, PostgreSQL): the same acquire as one
data-modifying statement in autocommit (lock the job row in a CTE, cut the range with an
index-bounded ``LIMIT`` read whose lower bound is a scalar subquery on the locked cursor,
insert the attempt, move the cursor), then the same fenced settle: two round trips per
lease, the fewest a lease with a separate settle can make.

The range query sums the weight column as well as counting: the ledger records both for
every range, so a lease that skipped the weight would not be the same lease.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.engine import make_url

SCHEMA = (
    "CREATE TABLE {prefix}jobs (name VARCHAR(64) PRIMARY KEY, cursor_id BIGINT NOT NULL)",
    "CREATE TABLE {prefix}attempts (id {serial}, job VARCHAR(64) NOT NULL, "
    "id_start BIGINT NOT NULL, id_end BIGINT NOT NULL, cnt BIGINT NOT NULL, weight BIGINT, "
    "status VARCHAR(16) NOT NULL, token VARCHAR(64) NOT NULL)",
)
SERIAL = {
    "postgres": "BIGSERIAL PRIMARY KEY",
    "mysql": "BIGINT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
}


# One statement: the job row is locked first (MATERIALIZED: before anything reads the
# cursor), the page's lower bound is the locked cursor, the attempt's insert and the cursor
# move read the page; a waiter gets the row as the lock holder left it.
_ONE_STATEMENT = (
    "WITH job AS MATERIALIZED (SELECT cursor_id FROM {prefix}jobs WHERE name = 'floor' "
    "FOR UPDATE), "
    "page AS (SELECT max(id) AS e, count(*) AS c, sum(w) AS w FROM (SELECT id, "
    "size_in_bytes AS w FROM files WHERE id > (SELECT cursor_id FROM job) "
    "ORDER BY id LIMIT $1) s), "
    "ins AS (INSERT INTO {prefix}attempts (job, id_start, id_end, cnt, weight, status, token) "
    "SELECT 'floor', job.cursor_id + 1, page.e, page.c, page.w, 'running', $2 "
    "FROM job, page WHERE page.c > 0 RETURNING id, id_end), "
    "moved AS (UPDATE {prefix}jobs SET cursor_id = (SELECT id_end FROM ins) "
    "WHERE name = 'floor' AND EXISTS (SELECT 1 FROM ins)) "
    "SELECT id FROM ins"
)


class Floor:
    """A lease loop written directly against one driver.

    Args:
        backend: ``sqlite``, ``postgres`` or ``mysql``.
        url: The database (SQLAlchemy URL).
        cap: Rows per lease (a count cap).
        one_statement: Acquire as one statement (PostgreSQL only).
    """

    def __init__(self, backend: str, url: str, cap: int, *, one_statement: bool = False) -> None:
        if one_statement and backend != "postgres":
            raise ValueError("the one-statement floor is written for PostgreSQL")
        self.backend = backend
        self.url = make_url(url)
        self.cap = cap
        self.one_statement = one_statement
        self.prefix = "floor1_" if one_statement else "floor_"
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
            await self._exec(statement.format(serial=SERIAL[self.backend], prefix=self.prefix))
        await self._exec(f"INSERT INTO {self.prefix}jobs VALUES ('floor', 0)")

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
        if self.one_statement:
            c = self.conn
            attempt = await c.fetchval(_ONE_STATEMENT.format(prefix=self.prefix), self.cap, token)
            await c.execute(
                f"UPDATE {self.prefix}attempts SET status = 'succeeded' "
                "WHERE id = $1 AND token = $2 AND status = 'running'",
                attempt,
                token,
            )
        elif self.backend == "postgres":
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
        await self._exec(f"UPDATE {self.prefix}jobs SET cursor_id = 0 WHERE name = 'floor'")

    async def close(self) -> None:
        """Close the connection."""
        if self.conn is None:
            return
        if self.backend == "mysql":
            self.conn.close()
        else:
            await self.conn.close()
