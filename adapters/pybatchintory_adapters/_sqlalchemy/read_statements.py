"""The store's reads: every statement ``queries`` and ``jobs`` run to read the ledger.

Built once per table set (a read whose shape depends on its arguments is built once per
shape). Each answers its question in one statement, whatever the number of jobs or
groups: per-job figures are correlated subqueries, each one probe of an index.

Every read sees the ledger as of the database clock: a lease that ran out reads as expired
at once (``rules.seen_now`` and the ``*_now`` rules), not only after the next acquire of
its job wrote the expiry. Such reads take ``p_max_attempts``, the reader's retry budget.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa

from pybatchintory.models import Status
from pybatchintory_adapters._sqlalchemy.rules import (
    dead_now,
    holding,
    open_range,
    running,
    seen_now,
    seen_status_in,
    waiting_for_retry_now,
)
from pybatchintory_adapters._sqlalchemy.tables import Tables
from pybatchintory_adapters._sqlalchemy.types import db_now

__all__ = ("ERROR_GROUP_IDS", "ReadStatements")

ERROR_GROUP_IDS = 100
"""How many attempt ids an error group lists (the newest)."""

_SUCCEEDED = str(Status.SUCCEEDED)
_FAILED = str(Status.FAILED)


def _p(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=type_)


def _count(inv: sa.Table, *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
    return sa.select(sa.func.count()).where(*where).scalar_subquery()


def _total(inv: sa.Table, column: str, *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.coalesce(sa.func.sum(inv.c[column]), 0)).where(*where).scalar_subquery()
    )


def _sum_of(figures: list[sa.ScalarSelect[Any]]) -> sa.ColumnElement[Any]:
    """One figure over disjoint parts of a rule: a probe per part, added up."""
    total: sa.ColumnElement[Any] = figures[0]
    for figure in figures[1:]:
        total = total + figure
    return total


def _max_attempts() -> sa.BindParameter[Any]:
    return _p("max_attempts", sa.Integer())


class ReadStatements:
    """Prebuilt reads over one set of tables."""

    def __init__(self, t: Tables) -> None:
        inv, jobs = t.inventory, t.jobs
        self.tables = t
        self.job = sa.select(jobs).where(jobs.c.name == _p("name"))
        self.all_jobs = sa.select(jobs).order_by(jobs.c.name)
        self.ledger_summary = sa.select(*self._summary(inv, _p("job")).values())
        self.job_statuses = self._job_statuses(t)
        self.history = self._history(t)
        self.error_groups = self._error_groups(t)
        running_start, pending_start = self.oldest_open_starts(_p("job"))
        self.oldest_open = sa.select(running_start, pending_start)
        now = db_now()
        _, expired_with_attempts_left = waiting_for_retry_now(inv, now, _max_attempts())
        self.due_ranges = (
            sa.select(inv)
            .where(
                inv.c.job == _p("job"),
                sa.or_(inv.c.retry_after <= now, expired_with_attempts_left),
            )
            .order_by(inv.c.meta_id_start, inv.c.id)
            .limit(_p("limit", sa.Integer()))
        )

    @staticmethod
    def _summary(inv: sa.Table, job: sa.ColumnElement[Any]) -> dict[str, sa.Label[Any]]:
        """Running leases, ranges waiting for a retry and dead ranges of ``job``, as of now.

        Each figure reads one small index range per part of its rule, never the job's
        whole history.
        """
        mine = inv.c.job == job
        now = db_now()
        retry = waiting_for_retry_now(inv, now, _max_attempts())
        gone = dead_now(inv, now, _max_attempts())
        figures = {
            "running": _count(inv, mine, holding(inv, now)),
            "retry_ranges": _sum_of([_count(inv, mine, part) for part in retry]),
            "retry_count": _sum_of([_total(inv, "count", mine, part) for part in retry]),
            "retry_weight": _sum_of([_total(inv, "weight", mine, part) for part in retry]),
            "dead_ranges": _sum_of([_count(inv, mine, part) for part in gone]),
            "dead_count": _sum_of([_total(inv, "count", mine, part) for part in gone]),
            "dead_weight": _sum_of([_total(inv, "weight", mine, part) for part in gone]),
        }
        return {name: figure.label(name) for name, figure in figures.items()}

    def _job_statuses(self, t: Tables) -> sa.Select[Any]:
        """Every job with its counts and last success, by name (one statement)."""
        inv, jobs = t.inventory, t.jobs
        figures = self._summary(inv, jobs.c.name)
        # The newest success by id: max(id) is one probe of (job, status, id), and the row
        # is one primary-key lookup (ORDER BY id DESC LIMIT 1 may walk the primary key).
        newest = inv.alias("newest")
        newest_success = (
            sa.select(sa.func.max(newest.c.id))
            .where(newest.c.job == jobs.c.name, newest.c.status == _SUCCEEDED)
            .correlate(jobs)  # two levels down: not found by auto-correlation
            .scalar_subquery()
        )
        last_success = (
            sa.select(inv.c.processing_end)
            .where(inv.c.id == newest_success)
            .scalar_subquery()
            .label("last_success")
        )
        return sa.select(
            jobs,
            figures["running"],
            figures["retry_ranges"],
            figures["dead_ranges"],
            last_success,
        ).order_by(jobs.c.name)

    def _history(self, t: Tables) -> sa.Select[Any]:
        """Per job on a metadata table, the attempts of its range covering an id.

        The covering range is the one with the greatest start at or before the id: one
        index probe on ``(job, meta_id_start)`` per job, whatever the ledger's size, then
        its attempts by the same index.
        """
        inv, jobs = t.inventory, t.jobs
        meta_id = _p("meta_id", sa.BigInteger())
        covering_start = (
            sa.select(sa.func.max(inv.c.meta_id_start))
            .where(inv.c.job == jobs.c.name, inv.c.meta_id_start <= meta_id)
            .scalar_subquery()
        )
        covering = (
            sa.select(jobs.c.name.label("job"), covering_start.label("start"))
            .where(jobs.c.meta_table == _p("meta_table"))
            .subquery("covering")
        )
        return (
            sa.select(*seen_now(inv, db_now(), _max_attempts()))
            .join(
                covering,
                sa.and_(inv.c.job == covering.c.job, inv.c.meta_id_start == covering.c.start),
            )
            .where(inv.c.meta_id_end >= meta_id)
            .order_by(inv.c.job, inv.c.attempt, inv.c.id)
        )

    def _error_groups(self, t: Tables) -> sa.Select[Any]:
        """Failed attempts of a job, the newest ``ERROR_GROUP_IDS`` of each fingerprint.

        Each row carries its group's count and first and last time (window aggregates), so
        the groups come back in one statement; the group's first row is its newest attempt.
        """
        inv = t.inventory
        group = inv.c.fingerprint
        ranked = (
            sa.select(
                inv.c.fingerprint,
                inv.c.id,
                inv.c.error_type,
                inv.c.error_message,
                sa.func.row_number()
                .over(partition_by=group, order_by=inv.c.id.desc())
                .label("newest_first"),
                sa.func.count().over(partition_by=group).label("group_size"),
                sa.func.min(inv.c.processing_end).over(partition_by=group).label("first_seen"),
                sa.func.max(inv.c.processing_end).over(partition_by=group).label("last_seen"),
            )
            .where(inv.c.job == _p("job"), inv.c.status == _FAILED)
            .subquery("ranked")
        )
        return (
            sa.select(ranked)
            .where(ranked.c.newest_first <= ERROR_GROUP_IDS)
            .order_by(ranked.c.fingerprint, ranked.c.newest_first)
        )

    def oldest_open_starts(
        self, job: sa.ColumnElement[Any]
    ) -> tuple[sa.ScalarSelect[Any], sa.ScalarSelect[Any]]:
        """Smallest start of a running range of ``job``, and of one waiting or dead.

        Two subqueries rather than one ``OR``: each reads its own index.
        """
        inv = self.tables.inventory
        mine = inv.c.job == job
        running_start = sa.select(sa.func.min(inv.c.meta_id_start)).where(mine, running(inv))
        pending_start = sa.select(sa.func.min(inv.c.meta_id_start)).where(mine, open_range(inv))
        return running_start.scalar_subquery(), pending_start.scalar_subquery()

    @cache  # noqa: B019 - one ReadStatements per store, a few shapes
    def attempts(
        self, statuses: frozenset[str] | None, by_ids: bool, limited: bool
    ) -> sa.Select[Any]:
        """Attempts of a job as seen now, newest first (``p_ids``, ``p_limit``).

        ``statuses``: only attempts whose status, as seen now, is one of these.
        """
        inv = self.tables.inventory
        now = db_now()
        query = (
            sa.select(*seen_now(inv, now, _max_attempts()))
            .where(inv.c.job == _p("job"))
            .order_by(inv.c.id.desc())
        )
        if statuses is not None:
            query = query.where(seen_status_in(inv, now, statuses))
        if by_ids:
            query = query.where(inv.c.id.in_(sa.bindparam("p_ids", expanding=True)))
        if limited:
            query = query.limit(_p("limit", sa.Integer()))
        return query

    @cache  # noqa: B019 - one ReadStatements per store, sixteen shapes
    def succeeded_ranges(
        self, before_open: bool, after: bool, end: bool, limited: bool
    ) -> sa.Select[Any]:
        """Succeeded attempts of a job in id order (``p_after``, ``p_end``, ``p_limit``).

        ``before_open`` keeps only those before the job's oldest range that is running,
        waiting for a retry or dead: the bound is part of the same statement, so it and the
        successes come from one snapshot. Two separate reads could see a range still
        unleased in the first and a later range already succeeded in the second, and let a
        reader pass the earlier one.
        """
        inv = self.tables.inventory
        query = (
            sa.select(inv)
            .where(inv.c.job == _p("job"), inv.c.status == _SUCCEEDED)
            .order_by(inv.c.meta_id_start)
        )
        if before_open:
            for oldest in self.oldest_open_starts(_p("job")):
                query = query.where(sa.or_(oldest.is_(None), inv.c.meta_id_start < oldest))
        if after:
            query = query.where(inv.c.meta_id_start > _p("after", sa.BigInteger()))
        if end:
            query = query.where(inv.c.meta_id_start <= _p("end", sa.BigInteger()))
        if limited:
            query = query.limit(_p("limit", sa.Integer()))
        return query
