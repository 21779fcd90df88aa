"""The store's writes: every statement an acquire, heartbeat, settle or control runs.

Each is built once per table set and reused: building a SQLAlchemy statement and its cache
key costs more than executing it on a local server. Bound parameter names start with
``p_``: names of columns are reserved in ``SET`` clauses. The modules that run them
(``leasing``, ``controls``) build no SQL; the reads live in ``read_statements``.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, TypedDict

import sqlalchemy as sa

from pybatchintory.models import Status, Weight
from pybatchintory_adapters._sqlalchemy.rules import (
    dead,
    expiry_values,
    lease_ran_out,
    open_range,
    running,
)
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import LedgerJSON, Timestamp, db_now, db_now_plus

__all__ = ("ATTEMPT_COLUMNS", "MANY_ROWS", "NewAttempt", "Statements")


class NewAttempt(TypedDict):
    """The columns a leased attempt is inserted with, in one place (``ATTEMPT_COLUMNS``)."""

    meta_table: str
    job: str
    job_identifier: str
    processing_start: datetime
    meta_id_start: int
    meta_id_end: int
    weight: Weight
    count: int
    attempt: int
    status: str
    owner: str
    token: str
    heartbeat_at: datetime
    expires_at: datetime
    failures: int
    dead: bool
    oversized: bool
    config: dict[str, Any] | None


ATTEMPT_COLUMNS = tuple(NewAttempt.__annotations__)
"""The columns a new attempt is inserted with."""

MANY_ROWS = 50
"""Attempts per multi-row INSERT (18 parameters each: under SQLite's old 999 limit)."""


def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=type_)


class Statements:
    """Prebuilt statements over one set of tables."""

    def __init__(self, t: Tables) -> None:
        inv, jobs = t.inventory, t.jobs
        self.tables = t
        oldest_expiry = (
            sa.select(sa.func.min(inv.c.expires_at))
            .where(inv.c.job == jobs.c.name, running(inv))
            .scalar_subquery()
        )
        next_retry = (
            sa.select(sa.func.min(inv.c.retry_after))
            .where(inv.c.job == jobs.c.name)
            .scalar_subquery()
        )
        # Locks the job row (FOR UPDATE; SQLite: BEGIN IMMEDIATE) and says, with two index
        # probes, whether any lease may have expired and whether any retry may be due, so
        # the common acquire skips both statements. The operator's controls that touch a
        # cursor take the same lock, so they never race a worker's cut.
        self.lock_job = (
            sa.select(
                jobs.c.cursor,
                jobs.c.meta_table,
                oldest_expiry.label("oldest_expiry"),
                next_retry.label("next_retry"),
                db_now().label("now"),
            )
            .where(jobs.c.name == _p("job"))
            .with_for_update()
        )
        # The clock of an acquire, read again once the job lock is held when taking the
        # lock took a while. The locking statement's own clock is the time it *started*
        # (MySQL's UTC_TIMESTAMP; PostgreSQL evaluates it before waiting for the row lock),
        # so a lease granted after waiting for another worker's lock would be born expired.
        self.clock = sa.select(db_now())
        now = _p("now", Timestamp())
        self.expire = (
            sa.update(inv)
            .where(inv.c.job == _p("job"), lease_ran_out(inv, now))
            .ordered_values(*expiry_values(inv, now, _p("max_attempts", sa.Integer())))
        )
        self.due_retries = (
            sa.select(
                inv.c.id,
                inv.c.meta_table,
                inv.c.meta_id_start,
                inv.c.meta_id_end,
                inv.c.count,
                inv.c.weight,
                inv.c.oversized,
                inv.c.attempt,
                inv.c.failures,
            )
            .where(inv.c.job == _p("job"), inv.c.retry_after <= now)
            .order_by(inv.c.meta_id_start, inv.c.id)
            .limit(_p("n", sa.Integer()))
        )
        self.clear_retry = sa.update(inv).where(inv.c.id == _p("id")).values(retry_after=None)
        # Every value is a ``p_`` parameter: plain column names are reserved in SET clauses
        # (and in the UPDATE inside WITH below they would become more SET columns).
        attempt_values = {name: _p(name, inv.c[name].type) for name in ATTEMPT_COLUMNS}
        self.insert_attempt = sa.insert(inv).values(attempt_values)
        self.insert_attempt_returning = self.insert_attempt.returning(inv.c.id)
        self.move_cursor = (
            sa.update(jobs)
            .where(jobs.c.name == _p("job"))
            .values(cursor=_p("cursor", sa.BigInteger()), updated_at=now)
        )
        # Where UPDATE may run inside WITH (PostgreSQL): the new range's attempt and the
        # cursor move in one round trip.
        self.insert_attempt_moving_cursor = self.insert_attempt_returning.add_cte(
            self.move_cursor.cte("moved_cursor")
        )
        tokens: sa.BindParameter[Any] = sa.bindparam("p_tokens", expanding=True)
        live = sa.and_(
            inv.c.owner == _p("owner"),
            inv.c.token.in_(tokens),
            running(inv),
            inv.c.expires_at > db_now(),
        )
        self.renew = (
            sa.update(inv)
            .where(live)
            .values(
                heartbeat_at=db_now(),
                expires_at=db_now_plus(_p("ttl", sa.Float())),
            )
        )
        self.live_tokens = sa.select(inv.c.token).where(live)
        self.settle_check = sa.select(inv.c.status, inv.c.token).where(inv.c.id == _p("id"))
        self._controls(t)

    def _controls(self, t: Tables) -> None:
        """The other writes: a new job, a range marked done, revivals (schema: migrations)."""
        inv, jobs = t.inventory, t.jobs
        self.insert_job = sa.insert(jobs).values(
            name=_p("name"),
            meta_table=_p("meta_table"),
            source=_p("source", jobs.c.source.type),
            id_start=_p("id_start", sa.BigInteger()),
            id_end=_p("id_end", sa.BigInteger()),
            cursor=_p("cursor", sa.BigInteger()),
            created_at=db_now(),
            updated_at=db_now(),
        )
        start, end = _p("start", sa.BigInteger()), _p("end", sa.BigInteger())
        self.insert_done = sa.insert(inv).values(
            meta_table=_p("meta_table"),
            job=_p("job"),
            job_identifier=_p("owner"),
            processing_start=db_now(),
            processing_end=db_now(),
            meta_id_start=start,
            meta_id_end=end,
            count=_p("count", sa.BigInteger()),
            weight=_p("weight", inv.c.weight.type),
            attempt=1,
            status=str(Status.SUCCEEDED),
            owner=_p("owner"),
            failures=0,
            dead=False,
            oversized=False,
            job_result={"marked_done": True},
        )
        # Ranges inside a range marked done are settled by it: neither retried nor dead.
        self.settle_inside = (
            sa.update(inv)
            .where(
                inv.c.job == _p("job"),
                inv.c.meta_id_start >= start,
                inv.c.meta_id_end <= end,
                open_range(inv),
            )
            .values(retry_after=None, dead=False)
        )
        ids: sa.BindParameter[Any] = sa.bindparam("p_ids", expanding=True)
        # Two statements: MySQL cannot update a table it reads in a subquery.
        self.starts_of = (
            sa.select(inv.c.meta_id_start)
            .where(inv.c.job == _p("job"), inv.c.id.in_(ids))
            .distinct()
        )

    @cache  # noqa: B019 - one Statements per store, four shapes
    def revive(self, by_fingerprint: bool, by_starts: bool) -> sa.Update:
        """Give dead ranges a fresh attempt budget, due now (some fingerprint or starts)."""
        inv = self.tables.inventory
        query = sa.update(inv).where(inv.c.job == _p("job"), dead(inv))
        if by_fingerprint:
            query = query.where(inv.c.fingerprint == _p("fingerprint"))
        if by_starts:
            starts: sa.BindParameter[Any] = sa.bindparam("p_starts", expanding=True)
            query = query.where(inv.c.meta_id_start.in_(starts))
        return query.values(dead=False, failures=0, retry_after=db_now())

    @cache  # noqa: B019 - one Statements per store, at most MANY_ROWS shapes
    def insert_attempts(self, rows: int) -> sa.Insert:
        """``rows`` attempts in one INSERT, returning ``(id, token)`` of each.

        Parameters are ``p_<column>_<i>``; rows come back in no promised order, hence the
        token to match them.
        """
        inv = self.tables.inventory
        values = [
            {name: _p(f"{name}_{i}", inv.c[name].type) for name in ATTEMPT_COLUMNS}
            for i in range(rows)
        ]
        return sa.insert(inv).values(values).returning(inv.c.id, inv.c.token)

    @cache  # noqa: B019 - one Statements per store, a handful of shapes each
    def settle(self, status: Status, counts_as_failure: bool, dead: bool) -> sa.Update:
        """The fenced settle for one shape of settlement."""
        inv = self.tables.inventory
        values: dict[str, Any] = {
            "status": str(status),
            "processing_end": db_now(),
            "job_result": _p("result", LedgerJSON(none_as_null=True)),
            "error_type": _p("error_type", sa.String()),
            "error_message": _p("error_message", sa.Text()),
            "logging": _p("traceback", sa.Text()),
            "fingerprint": _p("fingerprint", sa.String()),
            "code_version": _p("code_version", sa.String()),
        }
        if counts_as_failure:
            values["failures"] = inv.c.failures + 1
        if status is Status.SUCCEEDED:
            values["retry_after"] = None
        elif dead:
            values["dead"] = True
            values["retry_after"] = None
        else:
            values["retry_after"] = db_now_plus(_p("delay", sa.Float()))
        return (
            sa.update(inv)
            .where(
                inv.c.id == _p("id"),
                inv.c.token == _p("token"),
                running(inv),
                inv.c.expires_at > db_now(),
            )
            .values(**values)
        )
