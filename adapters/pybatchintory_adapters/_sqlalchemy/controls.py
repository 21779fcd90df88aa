"""The operator's writes: revive dead ranges, move a cursor, record a range as done.

Each function returns the body of one write transaction; the store runs it (retrying
deadlocks and dropped connections). The statements are ``Statements``'; the two bodies that
touch a job's cursor take the job lock first (``lock_job``, as an acquire does), so they
never race a worker's cut, and move the cursor with the acquire's own ``move_cursor``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.errors import UnknownJob
from pybatchintory.models import Weight
from pybatchintory_adapters._sqlalchemy.statements import Statements

__all__ = ("cursor_move", "done_record", "revival")


class _Locked(NamedTuple):
    cursor: int | None
    meta_table: str
    now: datetime


async def _lock_job(conn: AsyncConnection, st: Statements, job: str) -> _Locked:
    """Lock the job's row; its cursor, metadata table and the database clock."""
    row = (await conn.execute(st.lock_job, {"p_job": job})).mappings().first()
    if row is None:
        raise UnknownJob(f"job {job!r} is not recorded in the inventory")
    cursor = row["cursor"]
    return _Locked(None if cursor is None else int(cursor), str(row["meta_table"]), row["now"])


async def _move_cursor(
    conn: AsyncConnection, st: Statements, job: str, to: int, now: datetime
) -> None:
    await conn.execute(st.move_cursor, {"p_job": job, "p_cursor": to, "p_now": now})


def revival(
    st: Statements,
    job: str,
    *,
    fingerprint: str | None,
    batch_ids: Collection[int] | None,
    max_attempts: int,
) -> Callable[[AsyncConnection], Awaitable[int]]:
    """Give dead ranges a fresh attempt budget and make them due now; how many.

    ``batch_ids`` are attempt ids; each names its range, whichever attempt it is (only the
    range's newest attempt carries the dead flag). Under the job lock, the leases that ran
    out are expired first, as an acquire would: a range every read already shows as dead
    (its last attempt's lease ran out) is then revived too.
    """
    wanted = None if batch_ids is None else list(batch_ids)
    params: dict[str, object] = {"p_job": job, "p_fingerprint": fingerprint}

    async def work(conn: AsyncConnection) -> int:
        locked = await _lock_job(conn, st, job)
        expiry = {"p_job": job, "p_now": locked.now, "p_max_attempts": max_attempts}
        await conn.execute(st.expire, expiry)
        if wanted is not None:
            found = await conn.execute(st.starts_of, {"p_job": job, "p_ids": wanted})
            starts = list(found.scalars())
            if not starts:
                return 0
            params["p_starts"] = starts
        chosen = st.revive(fingerprint is not None, wanted is not None)
        return int((await conn.execute(chosen, params)).rowcount)

    return work


def cursor_move(
    st: Statements, job: str, meta_id: int
) -> Callable[[AsyncConnection], Awaitable[None]]:
    """Move a job's cursor to ``meta_id`` (under the job lock)."""

    async def work(conn: AsyncConnection) -> None:
        locked = await _lock_job(conn, st, job)
        await _move_cursor(conn, st, job, meta_id, locked.now)

    return work


def done_record(
    st: Statements, job: str, start: int, end: int, count: int, weight: Weight, owner: str
) -> Callable[[AsyncConnection], Awaitable[int]]:
    """Record ``[start, end]`` as succeeded and move the cursor past it; the attempt's id.

    Ranges inside ``[start, end]`` that wait for a retry or are dead are settled by it:
    they are not handed out again and no longer hold back a downstream job.
    """
    span = {"p_job": job, "p_start": start, "p_end": end}

    async def work(conn: AsyncConnection) -> int:
        locked = await _lock_job(conn, st, job)
        values = {**span, "p_meta_table": locked.meta_table, "p_owner": owner}
        result = await conn.execute(
            st.insert_done, {**values, "p_count": count, "p_weight": weight}
        )
        await conn.execute(st.settle_inside, span)
        if locked.cursor is None or end > locked.cursor:
            await _move_cursor(conn, st, job, end, locked.now)
        (attempt_id,) = result.inserted_primary_key  # type: ignore[misc]
        return int(attempt_id)

    return work
