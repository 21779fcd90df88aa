"""Acquire, heartbeat and settle: the bodies of the store's lease transactions.

The store runs each body in a write transaction (retrying deadlocks and dropped
connections); the bodies only say what happens inside one:

- ``Acquisition``: lock the job row, expire leases that ran out, take the retries that are
  due (oldest first), plan new ranges from the cursor, insert one attempt per range and
  move the cursor. Two workers of one job are serialised by the lock, so their ranges
  never overlap.
- ``renewal``: one fenced ``UPDATE`` renews a worker's live leases; the tokens it did not
  renew are lost.
- ``settling``: one ``UPDATE`` fenced by token, status and expiry ends an attempt; when it
  matches nothing, a read says why and ``LeaseLost`` is raised.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.errors import LeaseLost, UnknownJob
from pybatchintory.models import LeaseGrant, PlannedRange, Settlement, Status
from pybatchintory.protocols import Planner
from pybatchintory.weights import as_weight
from pybatchintory_adapters._sqlalchemy.driver_path import HotPath
from pybatchintory_adapters._sqlalchemy.records import aware
from pybatchintory_adapters._sqlalchemy.rules import RUNNING
from pybatchintory_adapters._sqlalchemy.statements import MANY_ROWS, NewAttempt, Statements

__all__ = ("Acquisition", "renewal", "settling")

# How stale the locking statement's clock may be before an acquire reads it again (a lease
# granted after a lock wait must not be born short by the wait); at most ttl/20 as well.
_STALE_CLOCK = 0.05


@dataclass(frozen=True, slots=True)
class _Next:
    """An attempt about to be inserted: a new range or the next try of an old one."""

    meta_table: str
    cut: PlannedRange
    attempt: int
    failures: int


class _Locked(NamedTuple):
    """What the job lock's statement read: where the job stands, at the database's clock."""

    cursor: int | None
    meta_table: str
    oldest_expiry: datetime | None
    next_retry: datetime | None
    now: datetime


@dataclass(frozen=True, slots=True)
class Acquisition:
    """The transaction body of one acquire of up to ``n`` ranges.

    Attributes:
        statements: The prebuilt statements.
        returning: The database returns inserted keys (``INSERT ... RETURNING``).
        fuse: The database can insert the attempt and move the cursor in one statement.
    """

    statements: Statements
    returning: bool
    fuse: bool
    job: str
    owner: str
    ttl: float
    max_attempts: int
    n: int
    planner: Planner
    config: dict[str, Any] | None

    async def __call__(self, ex: HotPath, link: object) -> list[LeaseGrant]:
        locked = await self._lock(ex)
        now = locked.now
        rows = await self._due_retries(ex, locked)
        new_cursor = locked.cursor
        while len(rows) < self.n:
            planned = await self.planner(link, new_cursor)
            if planned is None:
                break
            rows.append(_Next(locked.meta_table, planned, 1, 0))
            new_cursor = planned.meta_id_end
        moved = new_cursor != locked.cursor
        # PostgreSQL: the one new range's attempt and the cursor move in one statement.
        fused = moved and len(rows) == 1 and self.fuse
        expires = now + timedelta(seconds=self.ttl)
        values = [self._values(row, now, expires) for row in rows]
        ids = await self._insert(ex, values, new_cursor if fused else None, now)
        grants = [
            LeaseGrant(
                id=ids[one["token"]],
                job=self.job,
                meta_table=row.meta_table,
                meta_id_start=row.cut.meta_id_start,
                meta_id_end=row.cut.meta_id_end,
                count=row.cut.count,
                weight=row.cut.weight,
                attempt=row.attempt,
                failures=row.failures,
                oversized=row.cut.oversized,
                token=one["token"],
                expires_at=aware(expires),  # type: ignore[arg-type]
            )
            for row, one in zip(rows, values, strict=True)
        ]
        if moved and not fused:
            st = self.statements
            await ex.run(st.move_cursor, {"p_job": self.job, "p_now": now, "p_cursor": new_cursor})
        return grants

    async def _lock(self, ex: HotPath) -> _Locked:
        """Lock the job row, read the clock and expire the leases that ran out."""
        st = self.statements
        asked = time.monotonic()
        found = await ex.one(st.lock_job, {"p_job": self.job})
        if found is None:
            raise UnknownJob(f"job {self.job!r} is not recorded in the inventory")
        locked = _Locked(*found)
        if time.monotonic() - asked > min(_STALE_CLOCK, self.ttl / 20):
            # The lock was not free: the statement's clock is from before the wait.
            clock = await ex.one(st.clock, {})
            assert clock is not None
            locked = locked._replace(now=clock[0])
        now = locked.now
        if locked.oldest_expiry is not None and locked.oldest_expiry <= now:
            params = {"p_job": self.job, "p_now": now, "p_max_attempts": self.max_attempts}
            await ex.run(st.expire, params)
            locked = locked._replace(next_retry=now)  # the expired ranges are due now
        return locked

    async def _due_retries(self, ex: HotPath, locked: _Locked) -> list[_Next]:
        """The next attempts of the ranges whose retry is due, oldest first."""
        if locked.next_retry is None or locked.next_retry > locked.now:
            return []
        st = self.statements
        rows: list[_Next] = []
        params = {"p_job": self.job, "p_now": locked.now, "p_n": self.n}
        for old_id, old_table, start, end, count, weight, oversized, *tries in await ex.all(
            st.due_retries, params
        ):
            await ex.run(st.clear_retry, {"p_id": old_id})
            cut = PlannedRange(int(start), int(end), int(count), as_weight(weight), bool(oversized))
            attempt, failures = (int(v) for v in tries)
            rows.append(_Next(old_table, cut, attempt + 1, failures))
        return rows

    def _values(self, row: _Next, now: datetime, expires: datetime) -> NewAttempt:
        return NewAttempt(
            meta_table=row.meta_table,
            job=self.job,
            job_identifier=self.owner,
            processing_start=now,
            meta_id_start=row.cut.meta_id_start,
            meta_id_end=row.cut.meta_id_end,
            weight=row.cut.weight,
            count=row.cut.count,
            attempt=row.attempt,
            status=RUNNING,
            owner=self.owner,
            token=secrets.token_hex(16),
            heartbeat_at=now,
            expires_at=expires,
            failures=row.failures,
            dead=False,
            oversized=row.cut.oversized,
            config=self.config,
        )

    async def _insert(
        self, ex: HotPath, values: list[NewAttempt], cursor: int | None, now: datetime
    ) -> dict[str, int]:
        """Insert the attempts; their keys by token. ``cursor``: move it in the same statement."""
        st = self.statements
        ids: dict[str, int] = {}
        if len(values) > 1 and self.returning:
            # acquire_many: one INSERT per MANY_ROWS attempts, keys matched by token.
            for offset in range(0, len(values), MANY_ROWS):
                chunk = values[offset : offset + MANY_ROWS]
                merged = {
                    f"p_{name}_{i}": value
                    for i, one in enumerate(chunk)
                    for name, value in one.items()
                }
                found = await ex.all(st.insert_attempts(len(chunk)), merged)
                ids.update((str(token), int(key)) for key, token in found)
            return ids
        insert = st.insert_attempt_returning if self.returning else st.insert_attempt
        for one in values:
            prefixed = {f"p_{name}": value for name, value in one.items()}
            if cursor is not None:
                prefixed.update(p_cursor=cursor, p_now=now)
                ids[one["token"]] = await ex.insert(st.insert_attempt_moving_cursor, prefixed)
            else:
                ids[one["token"]] = await ex.insert(insert, prefixed)
        return ids


def renewal(
    statements: Statements, owner: str, ttl: float, tokens: list[str]
) -> Callable[[AsyncConnection], Awaitable[set[str]]]:
    """The body of one heartbeat: renew ``owner``'s live leases among ``tokens``.

    Returns the tokens that were not renewed (taken over, settled, or already expired: the
    database clock decides, so a worker frozen past its TTL loses its lease).
    """
    params = {"p_owner": owner, "p_tokens": tokens}

    async def work(conn: AsyncConnection) -> set[str]:
        renewed = await conn.execute(statements.renew, {**params, "p_ttl": float(ttl)})
        if renewed.rowcount == len(tokens):
            return set()
        alive = set((await conn.execute(statements.live_tokens, params)).scalars())
        return set(tokens) - alive

    return work


class _Check(NamedTuple):
    status: str
    token: str


def settling(
    statements: Statements, settlement: Settlement
) -> Callable[[HotPath, object], Awaitable[None]]:
    """The body of one settle: end the attempt if its lease is still held, else ``LeaseLost``.

    The fenced ``UPDATE`` is the only write; the read after a miss only explains it.
    """
    s = settlement
    statement = statements.settle(s.status, s.counts_as_failure, s.dead)
    params: dict[str, Any] = {
        "p_id": s.attempt_id,
        "p_token": s.token,
        "p_result": s.result,
        "p_error_type": s.error_type,
        "p_error_message": s.error_message,
        "p_traceback": _logging_text(s),
        "p_fingerprint": s.fingerprint,
        "p_code_version": s.code_version,
    }
    if s.status is not Status.SUCCEEDED and not s.dead:
        params["p_delay"] = float(s.retry_delay)

    async def work(ex: HotPath, link: object) -> None:
        if await ex.run(statement, params) == 1:
            return
        found = await ex.one(statements.settle_check, {"p_id": s.attempt_id})
        row = None if found is None else _Check(*found)
        if row is not None and row.token == s.token and row.status == str(s.status):
            return  # an earlier try committed before its connection dropped
        raise LeaseLost(
            f"attempt {s.attempt_id} is no longer leased to this worker "
            f"({_why(row, s.token)}); its {s.status} was not recorded"
        )

    return work


def _logging_text(s: Settlement) -> str | None:
    """The ``logging`` column: the caller's text, then a failure's traceback."""
    parts = [part for part in (s.logging, s.traceback) if part]
    return "\n".join(parts) if parts else None


def _why(row: _Check | None, token: str) -> str:
    """Why a fenced settle matched nothing, in the ledger's own terms."""
    if row is None:
        return "the ledger has no such attempt"
    if row.token != token:
        return f"another lease holds it; the ledger has it as {row.status}"
    if row.status == RUNNING:
        return "its lease ran out; the ledger has it as running, expired"
    return f"the ledger has it as {row.status}"
