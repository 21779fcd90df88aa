"""Read-side operations of the store: one function per question, index-backed."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.models import Attempt, ErrorGroup, Status
from pybatchintory_adapters._sqlalchemy.records import aware, to_attempt
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import db_now

__all__ = (
    "attempts",
    "due_ranges",
    "error_groups",
    "history",
    "ledger_summary",
    "oldest_open_start",
    "succeeded_ranges",
)


async def attempts(
    conn: AsyncConnection,
    t: Tables,
    job: str,
    *,
    status: Collection[Status] | None,
    limit: int | None,
    ids: Collection[int] | None,
) -> list[Attempt]:
    """Attempts of one job, newest first."""
    inv = t.inventory
    query = sa.select(inv).where(inv.c.job == job).order_by(inv.c.id.desc())
    if status:
        query = query.where(inv.c.status.in_([str(s) for s in status]))
    if ids is not None:
        query = query.where(inv.c.id.in_(list(ids)))
    if limit is not None:
        query = query.limit(limit)
    return [to_attempt(row) for row in (await conn.execute(query)).mappings()]


async def history(conn: AsyncConnection, t: Tables, meta_table: str, meta_id: int) -> list[Attempt]:
    """Every attempt of every job on ``meta_table`` whose range covers ``meta_id``.

    Per job, the covering range is the one with the greatest start at or before
    ``meta_id``: one index probe on ``(job, meta_id_start)``, whatever the ledger's size.
    """
    inv, jobs = t.inventory, t.jobs
    names = (
        await conn.execute(sa.select(jobs.c.name).where(jobs.c.meta_table == meta_table))
    ).scalars()
    found: list[Attempt] = []
    for name in sorted(names):
        start = (
            await conn.execute(
                sa.select(sa.func.max(inv.c.meta_id_start)).where(
                    inv.c.job == name, inv.c.meta_id_start <= meta_id
                )
            )
        ).scalar()
        if start is None:
            continue
        rows = await conn.execute(
            sa.select(inv)
            .where(
                inv.c.job == name,
                inv.c.meta_id_start == start,
                inv.c.meta_id_end >= meta_id,
            )
            .order_by(inv.c.attempt, inv.c.id)
        )
        found.extend(to_attempt(row) for row in rows.mappings())
    return found


async def ledger_summary(conn: AsyncConnection, t: Tables, job: str) -> dict[str, int]:
    """Running leases, ranges waiting for retry and dead ranges of one job.

    Each count reads one small index range (running attempts, pending retries, dead
    ranges), never the job's whole history.
    """
    inv = t.inventory
    running = (
        await conn.execute(
            sa.select(sa.func.count()).where(
                inv.c.job == job, inv.c.status == str(Status.RUNNING)
            )
        )
    ).scalar_one()
    retry = (
        await conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(inv.c.count), 0),
                sa.func.coalesce(sa.func.sum(inv.c.weight), 0),
            ).where(inv.c.job == job, inv.c.retry_after.is_not(None))
        )
    ).one()
    dead = (
        await conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(inv.c.count), 0),
                sa.func.coalesce(sa.func.sum(inv.c.weight), 0),
            ).where(inv.c.job == job, inv.c.dead.is_(True))
        )
    ).one()
    return {
        "running": int(running),
        "retry_ranges": int(retry[0]),
        "retry_count": int(retry[1]),
        "retry_weight": int(retry[2]),
        "dead_ranges": int(dead[0]),
        "dead_count": int(dead[1]),
        "dead_weight": int(dead[2]),
    }


async def error_groups(conn: AsyncConnection, t: Tables, job: str) -> list[ErrorGroup]:
    """Failed attempts of one job grouped by fingerprint, most frequent first."""
    inv = t.inventory
    failed = sa.and_(inv.c.job == job, inv.c.status == str(Status.FAILED))
    grouped = await conn.execute(
        sa.select(
            inv.c.fingerprint,
            sa.func.count(),
            sa.func.min(inv.c.processing_end),
            sa.func.max(inv.c.processing_end),
            sa.func.max(inv.c.id),
        )
        .where(failed)
        .group_by(inv.c.fingerprint)
    )
    groups: list[ErrorGroup] = []
    for fingerprint, count, first, last, newest in grouped.all():
        sample = (
            await conn.execute(
                sa.select(inv.c.error_type, inv.c.error_message).where(inv.c.id == newest)
            )
        ).one()
        ids = (
            await conn.execute(
                sa.select(inv.c.id)
                .where(failed, inv.c.fingerprint == fingerprint)
                .order_by(inv.c.id.desc())
                .limit(100)
            )
        ).scalars()
        groups.append(
            ErrorGroup(
                fingerprint=fingerprint or "",
                error_type=sample.error_type or "",
                error_message=sample.error_message or "",
                count=int(count),
                first_seen=aware(first),  # type: ignore[arg-type]
                last_seen=aware(last),  # type: ignore[arg-type]
                attempt_ids=tuple(int(i) for i in ids),
            )
        )
    groups.sort(key=lambda g: (-g.count, g.fingerprint))
    return groups


async def succeeded_ranges(
    conn: AsyncConnection,
    t: Tables,
    job: str,
    *,
    after: int | None,
    end: int | None,
    limit: int | None,
    before_open: bool = False,
) -> list[Attempt]:
    """Succeeded attempts of ``job`` starting in ``(after, end]``, in id order.

    ``before_open`` keeps only those before the oldest range that is running, waiting for
    a retry, or dead. The bound is part of the same statement, so it and the successes come
    from one snapshot: two separate reads could see a range still unleased in the first and
    a later range already succeeded in the second, and let a reader pass the earlier one.
    """
    inv = t.inventory
    query = (
        sa.select(inv)
        .where(inv.c.job == job, inv.c.status == str(Status.SUCCEEDED))
        .order_by(inv.c.meta_id_start)
    )
    if before_open:
        for oldest in _oldest_open(t, job):
            query = query.where(sa.or_(oldest.is_(None), inv.c.meta_id_start < oldest))
    if after is not None:
        query = query.where(inv.c.meta_id_start > after)
    if end is not None:
        query = query.where(inv.c.meta_id_start <= end)
    if limit is not None:
        query = query.limit(limit)
    return [to_attempt(row) for row in (await conn.execute(query)).mappings()]


def _oldest_open(t: Tables, job: str) -> tuple[sa.ScalarSelect[Any], sa.ScalarSelect[Any]]:
    """Smallest start of a running range, and of one waiting for a retry or dead.

    Two subqueries rather than one ``OR``: each reads its own index.
    """
    inv = t.inventory
    running = sa.select(sa.func.min(inv.c.meta_id_start)).where(
        inv.c.job == job, inv.c.status == str(Status.RUNNING)
    )
    pending = sa.select(sa.func.min(inv.c.meta_id_start)).where(
        inv.c.job == job, sa.or_(inv.c.retry_after.is_not(None), inv.c.dead.is_(True))
    )
    return running.scalar_subquery(), pending.scalar_subquery()


async def oldest_open_start(conn: AsyncConnection, t: Tables, job: str) -> int | None:
    """Smallest start of a range of ``job`` that is running, waiting for a retry, or dead."""
    running, pending = _oldest_open(t, job)
    row = (await conn.execute(sa.select(running, pending))).one()
    starts = [int(s) for s in row if s is not None]
    return min(starts) if starts else None


async def due_ranges(
    conn: AsyncConnection, t: Tables, job: str, *, max_attempts: int, limit: int
) -> list[Attempt]:
    """What an acquire would retry now, in its order; nothing is changed.

    Mirrors acquire: an expired lease with attempts left becomes due at once, and due
    ranges go out oldest first.
    """
    inv = t.inventory
    now = db_now()
    expired = sa.and_(
        inv.c.status == str(Status.RUNNING),
        inv.c.expires_at <= now,
        inv.c.failures + 1 < max_attempts,
    )
    query = (
        sa.select(inv)
        .where(inv.c.job == job, sa.or_(inv.c.retry_after <= now, expired))
        .order_by(inv.c.meta_id_start, inv.c.id)
        .limit(limit)
    )
    return [to_attempt(row) for row in (await conn.execute(query)).mappings()]
