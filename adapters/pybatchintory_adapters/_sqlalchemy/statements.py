"""The store's hot-path statements, built once per table set and reused.

Building a SQLAlchemy statement and its cache key costs more than executing it on a local
server, so acquire, settle and heartbeat run prebuilt statements with bound parameters.
Bound parameter names start with ``p_``: names of columns are reserved in ``SET`` clauses.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa

from pybatchintory.models import Status
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import LedgerJSON, Timestamp, db_now, db_now_plus

__all__ = ("ATTEMPT_COLUMNS", "MANY_ROWS", "Statements")

_RUNNING = str(Status.RUNNING)

ATTEMPT_COLUMNS = (
    "meta_table",
    "job",
    "job_identifier",
    "processing_start",
    "meta_id_start",
    "meta_id_end",
    "weight",
    "count",
    "attempt",
    "status",
    "owner",
    "token",
    "heartbeat_at",
    "expires_at",
    "failures",
    "dead",
    "oversized",
    "config",
)
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
            .where(inv.c.job == jobs.c.name, inv.c.status == _RUNNING)
            .scalar_subquery()
        )
        next_retry = (
            sa.select(sa.func.min(inv.c.retry_after))
            .where(inv.c.job == jobs.c.name)
            .scalar_subquery()
        )
        # Locks the job row (FOR UPDATE; SQLite: BEGIN IMMEDIATE) and says, with two index
        # probes, whether any lease may have expired and whether any retry may be due, so
        # the common acquire skips both statements.
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
        exhausted = inv.c.failures + 1 >= _p("max_attempts", sa.Integer())
        now = _p("now", Timestamp())
        # MySQL evaluates the assignments of an UPDATE from left to right, each one seeing
        # the columns already assigned: `dead` and `retry_after` must be computed before
        # `failures` is incremented, or an expiry one short of max_attempts marks the range
        # both dead and due (it is retried, then revived and handed out a second time).
        self.expire = (
            sa.update(inv)
            .where(inv.c.job == _p("job"), inv.c.status == _RUNNING, inv.c.expires_at <= now)
            .ordered_values(
                (inv.c.status, str(Status.EXPIRED)),
                (inv.c.processing_end, now),
                (inv.c.dead, sa.case((exhausted, True), else_=False)),
                (inv.c.retry_after, sa.case((exhausted, sa.null()), else_=now)),
                (inv.c.error_type, "LeaseExpired"),
                (inv.c.error_message, "the lease ran out before the attempt was settled"),
                (inv.c.failures, inv.c.failures + 1),
            )
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
            inv.c.status == _RUNNING,
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
                inv.c.status == _RUNNING,
                inv.c.expires_at > db_now(),
            )
            .values(**values)
        )
