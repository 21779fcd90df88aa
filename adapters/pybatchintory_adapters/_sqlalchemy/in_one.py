"""The common acquire as one statement: lock, cut, insert and move the cursor in one go.

Where the database runs data-modifying statements inside ``WITH`` (PostgreSQL), an acquire
of one range whose source lives in the inventory's database is one round trip, in
autocommit::

    WITH locked AS MATERIALIZED (SELECT cursor, meta_table FROM jobs WHERE name = :job
                                 FOR UPDATE),                     -- per-job serialisation
         clock  AS MATERIALIZED (SELECT <database clock> AS now, cursor, meta_table,
                                 <oldest running expiry>, <next retry> FROM locked),
         page   AS (<the source's page summary, its cursor the locked one>),
         leased AS (INSERT INTO inventory (...) SELECT ... FROM clock, page
                    WHERE <nothing expired or due> AND <this page decides the cut>
                    RETURNING ...),
         moved  AS (UPDATE jobs SET cursor = (SELECT meta_id_end FROM leased) ...
                    WHERE name = :job AND EXISTS (SELECT FROM leased))
    SELECT ... FROM clock, page LEFT JOIN leased ON true

Every guarantee of the slower path holds: the job row is locked before anything is read
after the cursor (under READ COMMITTED a waiter gets the row as the lock holder left it,
so two ranges never overlap); ``clock`` is computed from the locked row, so it is read
after any lock wait and a lease is never born short; the token is the caller's; the range
is cut from the page as ``RangeCutter`` would (count cap, weight cap, an oversized row
alone). When the statement cannot decide alone (a lease ran out, a retry is due, the job
has no cursor yet, the page does not decide the cut) it inserts nothing, commits nothing
but the lock it took, and the caller runs the transaction of ``leasing.Acquisition``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors

from pybatchintory.models import LeaseGrant, PlannedRange
from pybatchintory.protocols import FirstPage, split_weighted_page
from pybatchintory.weights import as_weight
from pybatchintory_adapters._sqlalchemy.driver_path import HotPath
from pybatchintory_adapters._sqlalchemy.records import aware
from pybatchintory_adapters._sqlalchemy.rules import RUNNING, running
from pybatchintory_adapters._sqlalchemy.statements import ATTEMPT_COLUMNS
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import db_now, plus_seconds

__all__ = (
    "LeaseInOne",
    "LeaseManyInOne",
    "PageCut",
    "LeaseAsked",
    "lease_clock",
    "lease_in_one",
    "lease_many_in_one",
    "new_attempt",
    "one_grant",
    "page_around",
    "page_cut",
)


def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=type_)


def _due_probes(t: Tables, job: sa.BindParameter[Any]) -> tuple[Any, Any]:
    """The oldest running lease's expiry and the next retry of ``job`` (two index probes)."""
    inv = t.inventory
    oldest_expiry = (
        sa.select(sa.func.min(inv.c.expires_at))
        .where(inv.c.job == job, running(inv))
        .scalar_subquery()
    )
    next_retry = sa.select(sa.func.min(inv.c.retry_after)).where(inv.c.job == job).scalar_subquery()
    return oldest_expiry, next_retry


def lease_clock(t: Tables, job: sa.BindParameter[Any]) -> tuple[Any, Any]:
    """``(now, free)``, to read with the locked job row.

    The database clock, and whether no lease of the job ran out and no retry is due by it.
    """
    now = db_now()
    oldest_expiry, next_retry = _due_probes(t, job)
    free = sa.and_(
        sa.or_(oldest_expiry.is_(None), oldest_expiry > now),
        sa.or_(next_retry.is_(None), next_retry > now),
    )
    return now, free


def _locked_clock(t: Tables, job: sa.BindParameter[Any]) -> Any:
    """``clock``: the locked job row, the database clock after the lock, two due probes.

    Its columns: ``now`` (read from the locked row, so after any lock wait), ``cursor``,
    ``meta_table``, and the oldest running lease's expiry and the next retry (two index
    probes), which say whether a lease may have run out or a retry may be due.
    """
    jobs = t.jobs
    locked = (
        sa.select(jobs.c.cursor, jobs.c.meta_table)
        .where(jobs.c.name == job)
        .with_for_update()
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    oldest_expiry, next_retry = _due_probes(t, job)
    clock = (
        sa.select(
            db_now().label("now"),
            locked.c.cursor,
            locked.c.meta_table,
            oldest_expiry.label("oldest_expiry"),
            next_retry.label("next_retry"),
        )
        .select_from(locked)
        .cte("clock")
        .prefix_with("MATERIALIZED")
    )
    return clock


def _free(clock: Any) -> sa.ColumnElement[bool]:
    """No lease of the job ran out and no retry is due, by the locked clock."""
    now = clock.c.now
    return sa.and_(
        sa.or_(clock.c.oldest_expiry.is_(None), clock.c.oldest_expiry > now),
        sa.or_(clock.c.next_retry.is_(None), clock.c.next_retry > now),
    )


def _literal_limit(limit: int) -> Any:
    """The page's row limit written into the SQL.

    PostgreSQL plans a prepared statement for its parameters' values until a generic plan
    costs no more; with ``LIMIT $n`` the generic plan assumes a tenth of the table, so every
    lease was planned anew (~0.5 ms). With the limit in the text the generic plan is as
    cheap and is kept after five executions. The limit changes rarely (``FirstPage.limit``).
    """
    return sa.literal_column(str(int(limit)), sa.Integer())


def page_around(query: Any, cursor: Any, limit: int | None) -> Any:
    """``query`` after ``cursor`` (for ``p_after``), with ``limit`` written in (``p_limit``).

    So are a split weighted page's head and tail limits (``split_weighted_page``).
    """
    literals: dict[str, int] = {}
    if limit is not None:
        literals["p_limit"] = limit
        split = split_weighted_page(limit)
        if split is not None:
            literals["p_head_limit"], literals["p_tail_limit"] = split

    def replace(element: Any) -> Any:
        if isinstance(element, sa.BindParameter):
            if element.key == "p_after":
                return cursor
            written = literals.get(element.key)
            if written is not None:
                return _literal_limit(written)
        return None

    traverse: Any = visitors.replacement_traverse  # typed for column elements only
    return traverse(query, {}, replace)


@dataclass(frozen=True, slots=True)
class PageCut:
    """The range one page summary decides, as SQL over its columns (``RangeCutter``'s cut).

    Attributes:
        rows: Rows the page read.
        decides: The page decides the cut: it holds rows, and the weight cap is hit
            inside it, or it holds fewer rows than its limit, or the count cap's rows.
        end, count, weight, oversized: The cut range (a first row over the weight cap
            alone, else the rows that fit, else the whole page). The weight is the page's
            own sum: the ledger's NUMERIC column would read a float column's sum back as a
            decimal, and the slower path hands out the page's sum too.
    """

    rows: Any
    decides: sa.ColumnElement[bool]
    end: Any
    count: Any
    weight: Any
    oversized: Any


def page_cut(page: Any, limit: int | None, counted: bool) -> PageCut:
    """The cut of ``page`` (a ``FirstPage.query`` as a subquery or CTE).

    ``limit``: the page's row limit (``None``: unlimited); ``counted``: the count cap
    ``p_max_count`` applies.
    """
    rows, first, first_weight, last, weight, fit_rows, fit_last, fit_weight = page.c
    split = fit_rows < rows  # the weight cap is hit inside the page
    alone = sa.and_(split, fit_rows == 0)  # the first row alone is over the cap
    decides: list[sa.ColumnElement[bool]] = [split]
    decides.append(sa.true() if limit is None else rows < _literal_limit(limit))
    if counted:
        decides.append(rows >= _p("max_count", sa.BigInteger()))
    return PageCut(
        rows=rows,
        decides=sa.and_(rows > 0, sa.or_(*decides)),
        end=sa.case((alone, first), (split, fit_last), else_=last),
        count=sa.case((alone, 1), (split, fit_rows), else_=rows),
        weight=sa.case((alone, first_weight), (split, fit_weight), else_=weight),
        oversized=alone,
    )


def new_attempt(
    inv: sa.Table, *, meta_table: Any, now: Any, start: Any, cut: PageCut
) -> dict[str, Any]:
    """The columns of a first attempt of ``cut``.

    Parameters: ``p_job``, ``p_owner``, ``p_token``, ``p_ttl``, ``p_config``.
    """
    owner = _p("owner", sa.String())
    return {
        "meta_table": meta_table,
        "job": _p("job", sa.String()),
        "job_identifier": owner,
        "processing_start": now,
        "meta_id_start": start,
        "meta_id_end": cut.end,
        "weight": cut.weight,
        "count": cut.count,
        "attempt": sa.literal(1, sa.Integer()),
        "status": sa.literal(RUNNING, inv.c.status.type),
        "owner": owner,
        "token": _p("token", sa.String()),
        "heartbeat_at": now,
        "expires_at": plus_seconds(now, _p("ttl", sa.Float())),
        "failures": sa.literal(0, sa.Integer()),
        "dead": sa.false(),
        "oversized": cut.oversized,
        "config": _p("config", inv.c.config.type),
    }


def lease_in_one(t: Tables, page_query: Any, *, limit: int | None, counted: bool) -> sa.Select[Any]:
    """The one-statement acquire around ``page_query`` (a ``FirstPage.query``).

    ``limit``: the page reads at most this many rows (written into the statement);
    ``counted``: a ``p_max_count`` cap applies. Parameters: ``p_job``, ``p_owner``,
    ``p_token``, ``p_ttl``, ``p_config``, ``p_max_count``, and the page's own.
    """
    inv, jobs = t.inventory, t.jobs
    job = _p("job", sa.String())
    clock = _locked_clock(t, job)
    cursor = sa.select(clock.c.cursor).scalar_subquery()
    page = page_around(page_query, cursor, limit).cte("page")
    cut = page_cut(page, limit, counted)
    now = clock.c.now
    free = _free(clock)
    go = sa.and_(clock.c.cursor.is_not(None), free, cut.decides)
    values = new_attempt(
        inv, meta_table=clock.c.meta_table, now=now, start=clock.c.cursor + 1, cut=cut
    )
    selected = (
        sa.select(*(values[name] for name in ATTEMPT_COLUMNS))
        .select_from(clock.join(page, sa.true()))
        .where(go)
    )
    leased = (
        sa.insert(inv)
        .from_select(list(ATTEMPT_COLUMNS), selected)
        .returning(
            inv.c.id,
            inv.c.meta_id_start,
            inv.c.meta_id_end,
            inv.c.count,
            inv.c.weight,
            inv.c.oversized,
            inv.c.expires_at,
        )
        .cte("leased")
    )
    moved = (
        sa.update(jobs)
        .where(jobs.c.name == job, sa.exists(sa.select(leased.c.id)))
        .values(
            cursor=sa.select(leased.c.meta_id_end).scalar_subquery(),
            updated_at=sa.select(clock.c.now).scalar_subquery(),
        )
        .cte("moved")
    )
    return (
        sa.select(
            clock.c.cursor,
            clock.c.meta_table,
            free.label("free"),
            cut.rows.label("page_rows"),
            leased.c.id,
            leased.c.meta_id_start,
            leased.c.meta_id_end,
            leased.c.count,
            sa.case((leased.c.id.is_(None), None), else_=cut.weight),
            leased.c.oversized,
            leased.c.expires_at,
        )
        .select_from(clock.join(page, sa.true()).outerjoin(leased, sa.true()))
        .add_cte(moved)
    )


def one_grant(asked: LeaseAsked, token: str, row: Sequence[Any]) -> list[LeaseGrant] | None:
    """What a one-round-trip acquire's result row says (``lease_in_one``'s columns).

    The grant, ``[]`` when there is certainly nothing to hand out (no lease ran out, no
    retry due, no row after the cursor), or ``None`` when the slower transaction must decide.
    """
    cursor, meta_table, free, page_rows, key, start, end, count, weight, oversized = row[:10]
    expires = row[10]
    if key is None:
        nothing = cursor is not None and bool(free) and int(page_rows) == 0
        return [] if nothing else None
    cut = PlannedRange(int(start), int(end), int(count), as_weight(weight), bool(oversized))
    asked.first.taken(cut)
    return [
        LeaseGrant(
            id=int(key),
            job=asked.job,
            meta_table=str(meta_table),
            meta_id_start=cut.meta_id_start,
            meta_id_end=cut.meta_id_end,
            count=cut.count,
            weight=cut.weight,
            attempt=1,
            failures=0,
            oversized=cut.oversized,
            token=token,
            expires_at=aware(expires),  # type: ignore[arg-type]
        )
    ]


@dataclass(frozen=True, slots=True)
class LeaseAsked:
    """What one acquire asks for, as a one-round-trip body needs it (shared by all three).

    Attributes:
        first: The source's first page.
        job, owner, ttl: Whose lease, for how long.
        config: The attempt's ``config`` column (a copy of the caller's mapping).
    """

    first: FirstPage
    job: str
    owner: str
    ttl: float
    config: Mapping[str, Any] | None

    def params(self, **tokens: str) -> dict[str, Any]:
        """The statement's parameters, with ``tokens`` (``p_token`` or ``p_tokens``)."""
        params: dict[str, Any] = {
            **self.first.params,
            "p_job": self.job,
            "p_owner": self.owner,
            "p_ttl": float(self.ttl),
            "p_config": self.config,
            **tokens,
        }
        if self.first.max_count is not None:
            params["p_max_count"] = self.first.max_count
        return params

    def one_lease(self) -> dict[str, Any]:
        """The parameters of an acquire of one range; its token is ``p_token``."""
        return self.params(p_token=secrets.token_hex(16))


@dataclass(frozen=True, slots=True)
class LeaseInOne:
    """The body of a one-statement acquire of one range (in autocommit).

    Returns what ``one_grant`` says: the grant, ``[]`` (nothing to hand out) or ``None``
    (the slower transaction must decide).
    """

    statement: sa.Select[Any]
    asked: LeaseAsked

    async def __call__(self, ex: HotPath, link: object) -> list[LeaseGrant] | None:
        params = self.asked.one_lease()
        row = await ex.one(self.statement, params)
        if row is None:
            return None  # no such job: the slower path says so
        return one_grant(self.asked, params["p_token"], row)


def lease_many_in_one(t: Tables, rows_query: Any, limit: int) -> sa.Select[Any]:
    """Up to ``n`` count-capped ranges in one statement around ``rows_query``.

    ``rows_query`` is a ``FirstPage.rows`` (``id``, ``w`` after ``p_after``, at most
    ``limit`` = ``n * p_max_count`` rows, written into the statement): every
    ``p_max_count`` rows in id order are one range, starting just after the previous one's
    end (the first just after the cursor), as the planner would cut them one after another.
    Range ``i`` takes the ``i``-th of the comma-separated tokens ``p_tokens``. Parameters:
    those, ``p_job``, ``p_owner``, ``p_ttl``, ``p_config``, and the rows query's own.
    """
    inv, jobs = t.inventory, t.jobs
    job = _p("job", sa.String())
    clock = _locked_clock(t, job)
    cursor = sa.select(clock.c.cursor).scalar_subquery()
    page = page_around(rows_query, cursor, limit).subquery("page")
    position = sa.func.row_number().over(order_by=page.c.id) - 1
    bucketed = sa.select(
        page.c.id, page.c.w, (position // _p("max_count", sa.BigInteger())).label("b")
    ).subquery("bucketed")
    cuts = (
        sa.select(
            bucketed.c.b,
            sa.func.max(bucketed.c.id).label("e"),
            sa.func.count().label("c"),
            sa.func.coalesce(sa.func.sum(bucketed.c.w), 0).label("wt"),
        )
        .group_by(bucketed.c.b)
        .cte("cuts")
    )
    previous = sa.func.lag(cuts.c.e).over(order_by=cuts.c.b)
    ranged = (
        sa.select(
            cuts.c.b,
            (sa.func.coalesce(previous, clock.c.cursor) + 1).label("s"),
            cuts.c.e,
            cuts.c.c,
            cuts.c.wt,
        )
        .select_from(cuts.join(clock, sa.true()))
        .cte("ranged")
    )
    now = clock.c.now
    go = sa.and_(clock.c.cursor.is_not(None), _free(clock))
    owner = _p("owner", sa.String())
    # The tokens, comma-separated (hex never holds a comma): range i takes the i-th.
    tokens = _p("tokens", sa.Text())
    values: dict[str, Any] = {
        "meta_table": clock.c.meta_table,
        "job": job,
        "job_identifier": owner,
        "processing_start": now,
        "meta_id_start": ranged.c.s,
        "meta_id_end": ranged.c.e,
        "weight": ranged.c.wt,
        "count": ranged.c.c,
        "attempt": sa.literal(1, sa.Integer()),
        "status": sa.literal(RUNNING, inv.c.status.type),
        "owner": owner,
        "token": sa.func.split_part(tokens, ",", sa.cast(ranged.c.b + 1, sa.Integer())),
        "heartbeat_at": now,
        "expires_at": plus_seconds(now, _p("ttl", sa.Float())),
        "failures": sa.literal(0, sa.Integer()),
        "dead": sa.false(),
        "oversized": sa.false(),
        "config": _p("config", inv.c.config.type),
    }
    cut = (
        sa.select(*(values[name] for name in ATTEMPT_COLUMNS))
        .select_from(ranged.join(clock, sa.true()))
        .where(go)
    )
    leased = (
        sa.insert(inv)
        .from_select(list(ATTEMPT_COLUMNS), cut)
        .returning(
            inv.c.id,
            inv.c.token,
            inv.c.meta_id_start,
            inv.c.meta_id_end,
            inv.c.count,
            inv.c.weight,
            inv.c.expires_at,
        )
        .cte("leased")
    )
    moved = (
        sa.update(jobs)
        .where(jobs.c.name == job, sa.exists(sa.select(leased.c.id)))
        .values(
            cursor=sa.select(sa.func.max(leased.c.meta_id_end)).scalar_subquery(),
            updated_at=sa.select(clock.c.now).scalar_subquery(),
        )
        .cte("moved")
    )
    found = sa.select(sa.func.count()).select_from(cuts).scalar_subquery()
    return (
        sa.select(
            clock.c.cursor,
            clock.c.meta_table,
            _free(clock).label("free"),
            found.label("cuts"),
            leased.c.id,
            leased.c.token,
            leased.c.meta_id_start,
            leased.c.meta_id_end,
            leased.c.count,
            ranged.c.wt,
            leased.c.expires_at,
        )
        # The weight as the page summed it (see ``lease_in_one``), by the range's start.
        .select_from(
            clock.outerjoin(leased.join(ranged, ranged.c.s == leased.c.meta_id_start), sa.true())
        )
        .add_cte(moved)
    )


@dataclass(frozen=True, slots=True)
class LeaseManyInOne:
    """The body of a one-statement ``acquire_many`` of count-capped ranges (autocommit).

    Returns the grants in id order, ``[]`` when there is certainly nothing to hand out,
    or ``None`` when the slower transaction must decide (a lease ran out, a retry is due,
    the job has no cursor yet).
    """

    statement: sa.Select[Any]
    asked: LeaseAsked
    n: int

    async def __call__(self, ex: HotPath, link: object) -> list[LeaseGrant] | None:
        assert self.asked.first.max_count is not None, "count-capped ranges only"
        params = self.asked.params(p_tokens=",".join(secrets.token_hex(16) for _ in range(self.n)))
        found = await ex.all(self.statement, params)
        if not found:
            return None  # no such job: the slower path says so
        cursor, meta_table, free, cuts = found[0][:4]
        if found[0][4] is None:
            nothing = cursor is not None and bool(free) and int(cuts) == 0
            return [] if nothing else None
        grants = sorted(
            (
                LeaseGrant(
                    id=int(key),
                    job=self.asked.job,
                    meta_table=str(meta_table),
                    meta_id_start=int(start),
                    meta_id_end=int(end),
                    count=int(count),
                    weight=as_weight(weight),
                    attempt=1,
                    failures=0,
                    oversized=False,
                    token=str(token),
                    expires_at=aware(expires),  # type: ignore[arg-type]
                )
                for *_, key, token, start, end, count, weight, expires in found
            ),
            key=lambda grant: grant.meta_id_start,
        )
        last = grants[-1]
        self.asked.first.taken(
            PlannedRange(last.meta_id_start, last.meta_id_end, last.count, last.weight, False)
        )
        return grants
