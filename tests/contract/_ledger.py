"""Plain-SQL reads and writes of the ledger, independent of the library's own readers.

Every backend returns the same shapes here: timestamps as naive UTC ``datetime`` (SQLite
stores them as text), booleans as ``bool``, JSON columns decoded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import fetch_all

__all__ = (
    "PAST",
    "attempt_row",
    "attempts_of",
    "expire_lease",
    "job_row",
    "ledger_size",
    "table_totals",
    "wait_until",
)

INVENTORY = "inventory"
JOBS = "inventory_jobs"
PAST = "2000-01-01 00:00:00.000000"
"""A timestamp literal every backend compares and stores as a long-gone instant."""

_TIMESTAMPS = ("processing_start", "processing_end", "heartbeat_at", "expires_at", "retry_after")
_JSON = ("job_result", "config", "source")
_BOOLEANS = ("dead", "oversized")


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    for key in _TIMESTAMPS:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = datetime.fromisoformat(value)
        elif isinstance(value, datetime) and value.tzinfo is not None:
            row[key] = value.replace(tzinfo=None)
    for key in _JSON:
        value = row.get(key)
        if isinstance(value, (str, bytes)):
            row[key] = json.loads(value)
    for key in _BOOLEANS:
        if key in row:
            row[key] = bool(row[key])
    return row


async def attempts_of(url: str, job: str) -> list[dict[str, Any]]:
    """Every inventory row of ``job``, in insertion (id) order."""
    rows = await fetch_all(url, f"SELECT * FROM {INVENTORY} WHERE job = :job ORDER BY id", job=job)
    return [_normalise(row) for row in rows]


async def attempt_row(url: str, attempt_id: int) -> dict[str, Any]:
    """One inventory row by its id."""
    (row,) = await fetch_all(url, f"SELECT * FROM {INVENTORY} WHERE id = :id", id=attempt_id)
    return _normalise(row)


async def job_row(url: str, job: str) -> dict[str, Any] | None:
    """The jobs-table row of ``job``, or ``None``."""
    rows = await fetch_all(url, f"SELECT * FROM {JOBS} WHERE name = :job", job=job)
    return _normalise(rows[0]) if rows else None


async def expire_lease(url: str, attempt_id: int) -> None:
    """Move an attempt's lease expiry into the past, as if its worker had frozen."""
    await fetch_all(
        url, f"UPDATE {INVENTORY} SET expires_at = '{PAST}' WHERE id = :id", id=attempt_id
    )


async def ledger_size(url: str) -> tuple[int, int]:
    """``(jobs, attempts)`` recorded; a table that was never created counts as empty."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            present = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
            sizes = []
            for table in (JOBS, INVENTORY):
                if table not in present:
                    sizes.append(0)
                    continue
                count = await conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}"))
                sizes.append(int(count.scalar_one()))
        return sizes[0], sizes[1]
    finally:
        await engine.dispose()


async def table_totals(
    url: str, start: int, end: int, *, where: str = "1 = 1", table: str = "files"
) -> tuple[int, int]:
    """``(count, summed size_in_bytes)`` of the metadata rows ``start..end`` passing ``where``."""
    (row,) = await fetch_all(
        url,
        f"SELECT COUNT(*) AS n, COALESCE(SUM(size_in_bytes), 0) AS w FROM {table} "
        f"WHERE id >= :start AND id <= :end AND ({where})",
        start=start,
        end=end,
    )
    return int(row["n"]), int(row["w"])


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, deadline: float = 10.0, every: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"condition not met within {deadline} s")
        await anyio.sleep(every)
