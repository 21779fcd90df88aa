"""Read-side operations of the store: run one prebuilt read, turn its rows into records.

The statements are ``ReadStatements``'; each question is one statement.
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import pairwise
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.models import Attempt, ErrorGroup, JobStatus, LedgerSummary, Status
from pybatchintory.weights import as_weight
from pybatchintory_adapters._sqlalchemy.read_statements import ReadStatements
from pybatchintory_adapters._sqlalchemy.records import aware, to_attempt

__all__ = (
    "attempts",
    "due_ranges",
    "error_groups",
    "history",
    "job_statuses",
    "ledger_summary",
    "oldest_open_start",
    "succeeded_ranges",
)


async def _attempts(conn: AsyncConnection, statement: Any, params: dict[str, Any]) -> list[Attempt]:
    return [to_attempt(row) for row in (await conn.execute(statement, params)).mappings()]


async def attempts(
    conn: AsyncConnection,
    rs: ReadStatements,
    job: str,
    *,
    status: Collection[Status] | None,
    limit: int | None,
    ids: Collection[int] | None,
    max_attempts: int,
) -> list[Attempt]:
    """Attempts of one job as seen now, newest first."""
    statuses = frozenset(str(s) for s in status) if status else None
    statement = rs.attempts(statuses, ids is not None, limit is not None)
    params: dict[str, Any] = {"p_job": job, "p_limit": limit, "p_max_attempts": max_attempts}
    if ids is not None:
        params["p_ids"] = list(ids)
    return await _attempts(conn, statement, params)


async def history(
    conn: AsyncConnection, rs: ReadStatements, meta_table: str, meta_id: int, max_attempts: int
) -> list[Attempt]:
    """Every attempt, as seen now, of every job on ``meta_table`` covering ``meta_id``."""
    params = {"p_meta_table": meta_table, "p_meta_id": meta_id, "p_max_attempts": max_attempts}
    return await _attempts(conn, rs.history, params)


async def ledger_summary(
    conn: AsyncConnection, rs: ReadStatements, job: str, max_attempts: int
) -> LedgerSummary:
    """Running leases, ranges waiting for retry and dead ranges of one job (rows, weight), now."""
    params = {"p_job": job, "p_max_attempts": max_attempts}
    row = (await conn.execute(rs.ledger_summary, params)).mappings().one()
    return LedgerSummary(
        running=int(row["running"]),
        retry_ranges=int(row["retry_ranges"]),
        retry_count=int(row["retry_count"]),
        retry_weight=as_weight(row["retry_weight"]),
        dead_ranges=int(row["dead_ranges"]),
        dead_count=int(row["dead_count"]),
        dead_weight=as_weight(row["dead_weight"]),
    )


async def job_statuses(
    conn: AsyncConnection, rs: ReadStatements, max_attempts: int
) -> list[JobStatus]:
    """One line per job, by name: cursor, window, counts, last success."""
    return [
        JobStatus(
            job=row["name"],
            meta_table=row["meta_table"],
            cursor=row["cursor"],
            id_start=row["id_start"],
            id_end=row["id_end"],
            counts={
                "running": int(row["running"]),
                "retry": int(row["retry_ranges"]),
                "dead": int(row["dead_ranges"]),
            },
            last_success=aware(row["last_success"]),
        )
        for row in (
            await conn.execute(rs.job_statuses, {"p_max_attempts": max_attempts})
        ).mappings()
    ]


async def error_groups(conn: AsyncConnection, rs: ReadStatements, job: str) -> list[ErrorGroup]:
    """Failed attempts of one job grouped by fingerprint, most frequent first."""
    rows = (await conn.execute(rs.error_groups, {"p_job": job})).mappings().all()
    newest = [i for i, row in enumerate(rows) if row["newest_first"] == 1]
    groups = [
        ErrorGroup(
            fingerprint=rows[first]["fingerprint"] or "",
            error_type=rows[first]["error_type"] or "",
            error_message=rows[first]["error_message"] or "",
            count=int(rows[first]["group_size"]),
            first_seen=aware(rows[first]["first_seen"]),  # type: ignore[arg-type]
            last_seen=aware(rows[first]["last_seen"]),  # type: ignore[arg-type]
            attempt_ids=tuple(int(row["id"]) for row in rows[first:after]),
        )
        for first, after in pairwise([*newest, len(rows)])
    ]
    groups.sort(key=lambda g: (-g.count, g.fingerprint))
    return groups


async def succeeded_ranges(
    conn: AsyncConnection,
    rs: ReadStatements,
    job: str,
    *,
    after: int | None,
    end: int | None,
    limit: int | None,
    before_open: bool = False,
) -> list[Attempt]:
    """Succeeded attempts of ``job`` starting in ``(after, end]``, in id order.

    ``before_open``: only those before the oldest range that is running, waiting for a
    retry, or dead, decided in the same statement (one snapshot).
    """
    statement = rs.succeeded_ranges(
        before_open, after is not None, end is not None, limit is not None
    )
    params = {"p_job": job, "p_after": after, "p_end": end, "p_limit": limit}
    return await _attempts(conn, statement, params)


async def oldest_open_start(conn: AsyncConnection, rs: ReadStatements, job: str) -> int | None:
    """Smallest start of a range of ``job`` that is running, waiting for a retry, or dead."""
    row = (await conn.execute(rs.oldest_open, {"p_job": job})).one()
    starts = [int(s) for s in row if s is not None]
    return min(starts) if starts else None


async def due_ranges(
    conn: AsyncConnection, rs: ReadStatements, job: str, *, max_attempts: int, limit: int
) -> list[Attempt]:
    """What an acquire would retry now, in its order; nothing is changed.

    Mirrors acquire: an expired lease with attempts left becomes due at once, and due
    ranges go out oldest first.
    """
    params = {"p_job": job, "p_max_attempts": max_attempts, "p_limit": limit}
    return await _attempts(conn, rs.due_ranges, params)
