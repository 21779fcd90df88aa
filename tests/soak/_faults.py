"""Faults the controller injects from outside the workers.

- Dropped connections: ``pg_terminate_backend`` / MariaDB ``KILL CONNECTION``, only for
  connections to the soak's *own* database (``pg_stat_activity.datname`` /
  ``PROCESSLIST.DB``), never the controller's own ones, and never another database's:
  other test runs share these servers.
- A PostgreSQL server restart (``pg_ctlcluster ... restart``), waited out with
  ``pg_isready``.

The killer talks to the server through its own connection to the server URL's database,
not the soak database, so it never appears among its own candidates.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ("ConnectionKiller", "classify", "restart_postgres")


def classify(query: str | None) -> str:
    """Which library operation a statement belongs to: acquire, heartbeat, settle or other."""
    text = (query or "").lower()
    if not text:
        return "other"
    if (
        "for update" in text
        or "insert into inventory " in text
        or "insert into inventory(" in text
        or "update inventory_jobs set cursor" in text
        or "leaseexpired" in text
        or "lease ran out" in text
        or " as page" in text
        or "min(inventory.retry_after)" in text
    ):
        return "acquire"
    if text.startswith("update inventory set heartbeat_at") or (
        "heartbeat_at" in text and text.startswith("update")
    ):
        return "heartbeat"
    if "job_result" in text and text.startswith("update"):
        return "settle"
    if "select inventory.status, inventory.token" in text:
        return "settle"
    return "other"


@dataclass
class Candidate:
    id: int
    busy: bool
    kind: str


class ConnectionKiller:
    """Kills connections to one database of a PostgreSQL or MariaDB server.

    Args:
        backend: ``postgres`` or ``mysql``.
        url: The soak database's URL (the killer connects to the server's default database).
        server_url: A URL of the same server whose database is *not* the soak's.
        protected: Returns the backend ids of the controller's own connections.
    """

    def __init__(
        self, backend: str, url: str, server_url: str, protected: Callable[[], set[int]]
    ) -> None:
        self.backend = backend
        database = make_url(url).database
        if not database:
            raise ValueError(f"the soak needs a URL that names its database: {url!r}")
        self.database: str = database
        self.server = make_url(server_url)
        if self.server.database == self.database:
            raise ValueError("the killer must not connect to the soak database itself")
        self.protected = protected
        self._conn: Any = None

    async def _connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        s = self.server
        if self.backend == "postgres":
            import asyncpg

            self._conn = await asyncpg.connect(
                host=s.host or "127.0.0.1",
                port=s.port or 5432,
                user=s.username or "postgres",
                password=s.password,
                database=s.database or "postgres",
                timeout=5,
            )
        else:
            import aiomysql

            self._conn = await aiomysql.connect(
                host=s.host or "127.0.0.1",
                port=s.port or 3306,
                user=s.username or "root",
                password=s.password or "",
                db=s.database,
                connect_timeout=5,
                autocommit=True,
            )
        return self._conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self.backend == "postgres":
                conn.terminate()  # never waits on a connection the server already dropped
            else:
                conn.close()
        except Exception:  # already broken: nothing to release
            pass

    async def _candidates(self) -> list[Candidate]:
        conn = await self._connect()
        protected = self.protected()
        if self.backend == "postgres":
            rows = await conn.fetch(
                "SELECT pid, state, query FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'",
                self.database,
            )
            return [
                Candidate(
                    int(r["pid"]),
                    r["state"] in ("active", "idle in transaction"),
                    classify(r["query"]),
                )
                for r in rows
                if int(r["pid"]) not in protected
            ]
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT ID, COMMAND, INFO FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID <> CONNECTION_ID()",
                (self.database,),
            )
            rows = await cursor.fetchall()
        return [
            Candidate(int(r[0]), r[1] == "Query", classify(r[2]))
            for r in rows
            if int(r[0]) not in protected
        ]

    async def _kill(self, target: int) -> None:
        conn = await self._connect()
        if self.backend == "postgres":
            await conn.execute("SELECT pg_terminate_backend($1)", target)
        else:
            async with conn.cursor() as cursor:
                try:
                    await cursor.execute(f"KILL CONNECTION {int(target)}")
                except Exception as exc:  # already gone: error 1094 unknown thread id
                    if "1094" not in str(exc):
                        raise

    async def kill(self, target: str, pick: float, window: float = 3.0) -> str:
        """Kill one connection busy with ``target`` (acquire/heartbeat/settle).

        Polls for up to ``window`` seconds; if no such statement is caught in flight, an
        idle pooled connection is killed instead (the next checkout finds it dead).
        Returns the kind actually hit: ``conn_kill_<target>``, ``conn_kill_idle`` or
        ``conn_kill_none``.
        """
        deadline = time.monotonic() + window
        try:
            while time.monotonic() < deadline:
                found = [c for c in await self._candidates() if c.busy and c.kind == target]
                if found:
                    found.sort(key=lambda c: c.id)
                    await self._kill(found[int(pick * len(found)) % len(found)].id)
                    return f"conn_kill_{target}"
                await asyncio.sleep(0.01)
            idle = sorted((c for c in await self._candidates() if not c.busy), key=lambda c: c.id)
            if not idle:
                return "conn_kill_none"
            await self._kill(idle[int(pick * len(idle)) % len(idle)].id)
            return "conn_kill_idle"
        except (TimeoutError, OSError, ConnectionError):
            await self.aclose()
            return "conn_kill_none"
        except Exception:
            # The killer's own connection died (server restart): reconnect next time.
            await self.aclose()
            return "conn_kill_none"

    async def outage(self, seconds: float) -> int:
        """PostgreSQL: refuse new connections to the soak database and drop its open ones.

        A restart of one database only (``ALLOW_CONNECTIONS false`` for ``seconds``),
        which leaves every other database on the server alone. Returns how many
        connections were dropped.
        """
        name = self.database.replace('"', '""')
        for attempt in range(3):
            try:
                conn = await self._connect()
                await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                break
            except Exception:  # the killer's connection died with a server restart
                await self.aclose()
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5)
        try:
            protected = self.protected()
            victims = [c.id for c in await self._candidates() if c.id not in protected]
            for victim in victims:
                await self._kill(victim)
            await asyncio.sleep(seconds)
        finally:
            for attempt in range(20):
                try:
                    conn = await self._connect()
                    await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                    break
                except Exception:
                    await self.aclose()
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)
        return len(victims)


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode(errors="replace")


async def restart_postgres(
    host: str = "127.0.0.1", port: int = 5432, timeout: float = 90.0
) -> float:
    """Restart the local PostgreSQL cluster and wait until it accepts connections.

    Returns the seconds until ``pg_isready`` answered again.
    """
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    started = time.monotonic()
    rc, out = await _run(
        "pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"
    )
    if rc != 0:
        raise RuntimeError(f"pg_ctlcluster restart failed ({rc}): {out}")
    while True:
        rc, _ = await _run("pg_isready", "-h", host, "-p", str(port))
        if rc == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"PostgreSQL did not come back within {timeout} s")
        await asyncio.sleep(0.2)
