"""The common acquire in one round trip where ``WITH`` cannot hold writes (MySQL, MariaDB).

The statements of the acquire transaction go to the server as one multi-statement batch,
which the session ends with ``COMMIT`` (``DirectConnection.batch``); session variables
(``@pybatchintory_*``) carry what one statement read to the next::

    SET @pybatchintory_cursor = NULL, ...                             -- nothing left over
    SELECT cursor, meta_table FROM jobs WHERE name = :job
      FOR UPDATE INTO @..cursor, @..meta_table                        -- per-job serialisation
    SELECT <database clock>, <nothing expired or due>, <the cut>
      FROM (<the source's first page after @..cursor>) AS page INTO @..now, ...
    INSERT INTO inventory (...) SELECT @.., :owner, ... FROM DUAL WHERE @..go = 1
    SET @pybatchintory_id = IF(ROW_COUNT() > 0, LAST_INSERT_ID(), NULL)
    UPDATE jobs SET cursor = @..end, ... WHERE name = :job AND @pybatchintory_id IS NOT NULL
    SELECT @..cursor, ..., (SELECT expires_at FROM inventory WHERE id = @pybatchintory_id)
    COMMIT                                                            -- added by the session

The server runs them in order and stops at the first error, leaving the transaction open
for the caller's rollback. Every guarantee of the slower path holds as in ``in_one``: the
job row is locked before the page is read after its cursor, the clock is read after the
lock, the cut is ``RangeCutter``'s (``in_one.page_cut``), and when the page cannot decide
(or a lease ran out, or a retry is due) nothing is inserted and the caller runs the
transaction of ``leasing.Acquisition``.

It needs a connection opened with ``CLIENT.MULTI_STATEMENTS`` (aiomysql always asks for
it); on another connection the store takes the slower path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pybatchintory.models import LeaseGrant
from pybatchintory_adapters._sqlalchemy.driver_path import DirectConnection, HotPath
from pybatchintory_adapters._sqlalchemy.in_one import (
    LeaseAsked,
    PageCut,
    lease_clock,
    new_attempt,
    one_grant,
    page_around,
    page_cut,
)
from pybatchintory_adapters._sqlalchemy.statements import ATTEMPT_COLUMNS
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import Timestamp

__all__ = ("LeaseInBatch", "lease_in_batch")

_VARIABLES = (
    "cursor",
    "meta_table",
    "now",
    "free",
    "rows",
    "go",
    "end",
    "count",
    "weight",
    "oversized",
    "id",
)


def _var(name: str, type_: Any = None) -> Any:
    """The session variable ``@pybatchintory_<name>``."""
    assert name in _VARIABLES
    return sa.literal_column(f"@pybatchintory_{name}", type_)


def _into(*names: str) -> str:
    return "INTO " + ", ".join(f"@pybatchintory_{name}" for name in names)


def lease_in_batch(
    t: Tables, page_query: Any, *, limit: int | None, counted: bool
) -> tuple[sa.Executable, ...]:
    """The statements of a one-round-trip acquire around ``page_query``, in order.

    ``limit`` and ``counted`` as for ``in_one.lease_in_one``; the parameters are the same.
    The last one returns ``lease_in_one``'s result columns.
    """
    inv, jobs = t.inventory, t.jobs
    job = sa.bindparam("p_job", type_=sa.String())
    reset = sa.text("SET " + ", ".join(f"@pybatchintory_{name} = NULL" for name in _VARIABLES))
    lock = (
        sa.select(jobs.c.cursor, jobs.c.meta_table)
        .where(jobs.c.name == job)
        .with_for_update()
        .suffix_with(_into("cursor", "meta_table"))
    )
    # The clock in the statement after the lock: MySQL's clock is the statement's start,
    # which for the locking one is before any wait for the lock (a lease born short).
    now, free = lease_clock(t, job)
    cursor = _var("cursor", sa.BigInteger())
    page = page_around(page_query, cursor, limit).subquery("page")
    cut = page_cut(page, limit, counted)
    go = sa.and_(cursor.is_not(None), free, cut.decides)
    measure = (
        sa.select(now, sa.case((free, 1), else_=0), cut.rows, sa.case((go, 1), else_=0))
        .add_columns(cut.end, cut.count, cut.weight, cut.oversized)
        .select_from(page)
        .suffix_with(_into("now", "free", "rows", "go", "end", "count", "weight", "oversized"))
    )
    held = PageCut(
        rows=_var("rows"),
        decides=_var("go") == 1,
        end=_var("end"),
        count=_var("count"),
        weight=_var("weight"),
        oversized=_var("oversized"),
    )
    at = _var("now", Timestamp())
    values = new_attempt(inv, meta_table=_var("meta_table"), now=at, start=cursor + 1, cut=held)
    insert = sa.insert(inv).from_select(
        list(ATTEMPT_COLUMNS),
        sa.select(*(values[name] for name in ATTEMPT_COLUMNS)).where(held.decides),
    )
    inserted = sa.text("SET @pybatchintory_id = IF(ROW_COUNT() > 0, LAST_INSERT_ID(), NULL)")
    key = _var("id", sa.BigInteger())
    move = (
        sa.update(jobs)
        .where(jobs.c.name == job, key.is_not(None))
        .values(cursor=_var("end"), updated_at=at)
    )
    expires = sa.select(inv.c.expires_at).where(inv.c.id == key).scalar_subquery()
    result = sa.select(
        cursor,
        _var("meta_table"),
        _var("free"),
        _var("rows"),
        key,
        cursor + 1,
        _var("end"),
        _var("count"),
        _var("weight"),
        _var("oversized"),
        expires,
    )
    return (reset, lock, measure, insert, inserted, move, result)


@dataclass(frozen=True, slots=True)
class LeaseInBatch:
    """The body of a one-round-trip acquire of one range (the batch commits itself).

    Returns what ``in_one.one_grant`` says; ``None`` too on a connection that cannot run
    a batch (the slower transaction decides).
    """

    statements: tuple[sa.Executable, ...]
    asked: LeaseAsked

    async def __call__(self, ex: HotPath, link: object) -> list[LeaseGrant] | None:
        if not isinstance(ex, DirectConnection) or not ex.can_batch:
            return None
        params = self.asked.one_lease()
        results = await ex.batch(self.statements, params)
        rows = results[-1]
        assert len(rows) == 1, "the batch's result statement returns one row"
        return one_grant(self.asked, params["p_token"], rows[0])
