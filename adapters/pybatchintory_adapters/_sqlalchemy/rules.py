"""The ledger's rules as SQL expressions, each written once.

An attempt row is *running* while its lease is held; its lease has *run out* once the
database clock passes ``expires_at``; a range *waits for a retry* while its newest attempt
has ``retry_after`` set, and is *dead* once its attempts are used up. Acquire, the dry run
of ``plan``, ``backlog``, ``status`` and the recursion horizon all ask these questions; the
statements in ``statements`` and ``read_statements`` build them from here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pybatchintory.models import Status

__all__ = (
    "RUNNING",
    "dead",
    "exhausted_by_expiry",
    "lease_ran_out",
    "open_range",
    "running",
    "waiting_for_retry",
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
