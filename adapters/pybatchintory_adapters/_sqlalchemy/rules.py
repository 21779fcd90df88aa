"""The ledger's rules as SQL expressions, each written once.

An attempt row is *running* while its lease is held; its lease has *run out* once the
database clock passes ``expires_at``; a range *waits for a retry* while its newest attempt
has ``retry_after`` set, and is *dead* once its attempts are used up. Acquire, the dry run
of ``plan``, ``backlog``, ``status`` and the recursion horizon all ask these questions; the
statements in ``statements`` and ``read_statements`` build them from here.

Only an acquire of the job writes an expiry (``expiry_values``), but every read must see a
lease that ran out as expired at once: the ``*_now`` rules and ``seen_now`` read a running
row whose lease ran out as the acquire would write it. A rule that reads two indexes is
given as disjoint parts (one per index), so a count can add one probe per part instead of
scanning for an ``OR``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pybatchintory.models import Status

__all__ = (
    "RUNNING",
    "dead",
    "dead_now",
    "exhausted_by_expiry",
    "expiry_values",
    "holding",
    "lease_ran_out",
    "open_range",
    "running",
    "seen_now",
    "seen_status_in",
    "waiting_for_retry",
    "waiting_for_retry_now",
)

RUNNING = str(Status.RUNNING)


def running(inv: sa.Table) -> sa.ColumnElement[bool]:
    """The attempt holds a lease (it may have run out, unnoticed yet)."""
    return inv.c.status == RUNNING


def lease_ran_out(inv: sa.Table, now: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """A running attempt whose lease expired by ``now`` (the database clock)."""
    return sa.and_(running(inv), inv.c.expires_at <= now)


def exhausted_by_expiry(
    inv: sa.Table, max_attempts: sa.ColumnElement[Any] | int
) -> sa.ColumnElement[bool]:
    """One more failure (an expiry counts as one) uses up the range's attempts."""
    return inv.c.failures + 1 >= max_attempts


def waiting_for_retry(inv: sa.Table) -> sa.ColumnElement[bool]:
    """The newest attempt of a range that will be retried (due or not)."""
    return inv.c.retry_after.is_not(None)


def dead(inv: sa.Table) -> sa.ColumnElement[bool]:
    """The newest attempt of a range whose attempts are used up.

    ``= true``, not ``IS TRUE``: MySQL reads ``(job, dead)`` only for the former.
    """
    return inv.c.dead == sa.true()


def open_range(inv: sa.Table) -> sa.ColumnElement[bool]:
    """A range not finished: waiting for a retry or dead (running is asked separately)."""
    return sa.or_(waiting_for_retry(inv), dead(inv))


def holding(inv: sa.Table, now: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """A running attempt whose lease has not run out by ``now``: it is really running."""
    return sa.and_(running(inv), inv.c.expires_at > now)


def waiting_for_retry_now(
    inv: sa.Table, now: sa.ColumnElement[Any], max_attempts: sa.ColumnElement[Any] | int
) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """A range waiting for a retry, as of ``now``, as two disjoint parts.

    Waiting already, or running with a lease that ran out and attempts left (the next
    acquire expires it and makes it due at once).
    """
    return (
        waiting_for_retry(inv),
        sa.and_(lease_ran_out(inv, now), sa.not_(exhausted_by_expiry(inv, max_attempts))),
    )


def dead_now(
    inv: sa.Table, now: sa.ColumnElement[Any], max_attempts: sa.ColumnElement[Any] | int
) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """A dead range, as of ``now``, as two disjoint parts.

    Dead already, or running with a lease that ran out on its last allowed attempt.
    """
    return (
        dead(inv),
        sa.and_(lease_ran_out(inv, now), exhausted_by_expiry(inv, max_attempts)),
    )


def expiry_values(
    inv: sa.Table,
    at: sa.ColumnElement[Any],
    max_attempts: sa.ColumnElement[Any] | int,
) -> list[tuple[sa.Column[Any], Any]]:
    """The columns an expiry writes, in the order an ``UPDATE`` must assign them.

    ``at`` is when the attempt ended. MySQL evaluates the assignments of an ``UPDATE`` from
    left to right, each one seeing the columns already assigned: ``dead`` and
    ``retry_after`` come before ``failures`` is incremented, or an expiry one short of
    ``max_attempts`` would mark the range both dead and due.
    """
    exhausted = exhausted_by_expiry(inv, max_attempts)
    return [
        (inv.c.status, sa.literal(str(Status.EXPIRED), inv.c.status.type)),
        (inv.c.processing_end, at),
        (inv.c.dead, sa.case((exhausted, sa.true()), else_=sa.false())),
        (inv.c.retry_after, sa.case((exhausted, sa.null()), else_=at)),
        (inv.c.error_type, sa.literal("LeaseExpired", inv.c.error_type.type)),
        (
            inv.c.error_message,
            sa.literal(
                "the lease ran out before the attempt was settled", inv.c.error_message.type
            ),
        ),
        (inv.c.failures, inv.c.failures + 1),
    ]


def seen_now(
    inv: sa.Table, now: sa.ColumnElement[Any], max_attempts: sa.ColumnElement[Any] | int
) -> list[sa.ColumnElement[Any]]:
    """Every column of the ledger as a read sees it ``now``, labelled with its name.

    A running row whose lease ran out reads as the acquire's expiry would write it, ended
    when its lease ran out (``expires_at``); every other row reads as stored.
    """
    ran_out = lease_ran_out(inv, now)
    expired = {
        column.name: value for column, value in expiry_values(inv, inv.c.expires_at, max_attempts)
    }
    return [
        sa.type_coerce(sa.case((ran_out, expired[column.name]), else_=column), column.type).label(
            column.name
        )
        if column.name in expired
        else column
        for column in inv.c
    ]


def seen_status_in(
    inv: sa.Table, now: sa.ColumnElement[Any], statuses: frozenset[str]
) -> sa.ColumnElement[bool]:
    """The row's status as seen ``now`` is one of ``statuses`` (stored values given).

    Written on the stored ``status`` (so the ``(job, status, id)`` index serves it), with
    the expiry check only where ``running`` and ``expired`` are told apart.
    """
    running_wanted = RUNNING in statuses
    expired_wanted = str(Status.EXPIRED) in statuses
    stored = sorted(statuses | {RUNNING}) if expired_wanted else sorted(statuses)
    condition = inv.c.status.in_(stored)
    if running_wanted and not expired_wanted:
        return sa.and_(condition, sa.or_(sa.not_(running(inv)), inv.c.expires_at > now))
    if expired_wanted and not running_wanted:
        return sa.and_(condition, sa.or_(sa.not_(running(inv)), inv.c.expires_at <= now))
    return condition
