"""The operator's writes: revive dead ranges, move a cursor, record a range as done.

Each function returns the body of one write transaction; the store runs it (retrying
deadlocks and dropped connections). The two that touch a job's cursor take the job lock
first, as an acquire does, so they never race a worker's cut.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.errors import UnknownJob
from pybatchintory.models import Status
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import db_now

__all__ = ("cursor_move", "done_record", "revival")


async def _lock_job(conn: AsyncConnection, tables: Tables, job: str) -> tuple[int | None, str]:
    """Lock the job's row; its cursor and metadata table."""
    jobs = tables.jobs
    locked = (
        await conn.execute(
            sa.select(jobs.c.cursor, jobs.c.meta_table).where(jobs.c.name == job).with_for_update()
        )
    ).first()
    if locked is None:
        raise UnknownJob(f"job {job!r} is not recorded in the inventory")
    cursor, meta_table = locked
    return (None if cursor is None else int(cursor)), str(meta_table)


def revival(
    tables: Tables, job: str, *, fingerprint: str | None, batch_ids: Collection[int] | None
) -> Callable[[AsyncConnection], Awaitable[int]]:
    """Give dead ranges a fresh attempt budget and make them due now; how many.

    ``batch_ids`` are attempt ids; each names its range, whichever attempt it is (only the
    range's newest attempt carries the dead flag).
    """
    inv = tables.inventory
    query = sa.update(inv).where(inv.c.job == job, inv.c.dead.is_(True))
    if fingerprint is not None:
        query = query.where(inv.c.fingerprint == fingerprint)
    wanted = None if batch_ids is None else list(batch_ids)

    async def work(conn: AsyncConnection) -> int:
        chosen = query
        if wanted is not None:
            # Two statements: MySQL cannot update a table it reads in a subquery.
            starts = (
                (
                    await conn.execute(
                        sa.select(inv.c.meta_id_start)
                        .where(inv.c.job == job, inv.c.id.in_(wanted))
                        .distinct()
                    )
                )
                .scalars()
                .all()
            )
            if not starts:
                return 0
            chosen = query.where(inv.c.meta_id_start.in_(list(starts)))
        result = await conn.execute(chosen.values(dead=False, failures=0, retry_after=db_now()))
        return int(result.rowcount)

    return work


def cursor_move(
    tables: Tables, job: str, meta_id: int
) -> Callable[[AsyncConnection], Awaitable[None]]:
    """Move a job's cursor to ``meta_id`` (under the job lock)."""
    jobs = tables.jobs

    async def work(conn: AsyncConnection) -> None:
        await _lock_job(conn, tables, job)
        await conn.execute(
            sa.update(jobs).where(jobs.c.name == job).values(cursor=meta_id, updated_at=db_now())
        )

    return work


def done_record(
    tables: Tables, job: str, start: int, end: int, count: int, weight: int, owner: str
) -> Callable[[AsyncConnection], Awaitable[int]]:
    """Record ``[start, end]`` as succeeded and move the cursor past it; the attempt's id.

    Ranges inside ``[start, end]`` that wait for a retry or are dead are settled by it:
    they are not handed out again and no longer hold back a downstream job.
    """
    inv, jobs = tables.inventory, tables.jobs

    async def work(conn: AsyncConnection) -> int:
        cursor, meta_table = await _lock_job(conn, tables, job)
        result = await conn.execute(
            sa.insert(inv).values(
                meta_table=meta_table,
                job=job,
                job_identifier=owner,
                processing_start=db_now(),
                processing_end=db_now(),
                meta_id_start=start,
                meta_id_end=end,
                count=count,
                weight=weight,
                attempt=1,
                status=str(Status.SUCCEEDED),
                owner=owner,
                failures=0,
                dead=False,
                oversized=False,
                job_result={"marked_done": True},
            )
        )
        await conn.execute(
            sa.update(inv)
            .where(
                inv.c.job == job,
                inv.c.meta_id_start >= start,
                inv.c.meta_id_end <= end,
                sa.or_(inv.c.retry_after.is_not(None), inv.c.dead.is_(True)),
            )
            .values(retry_after=None, dead=False)
        )
        if cursor is None or end > cursor:
            await conn.execute(
                sa.update(jobs).where(jobs.c.name == job).values(cursor=end, updated_at=db_now())
            )
        (attempt_id,) = result.inserted_primary_key  # type: ignore[misc]
        return int(attempt_id)

    return work
