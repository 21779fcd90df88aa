"""The inventory store: one SQLAlchemy Core implementation for every built-in database.

Write operations run in short transactions. ``acquire`` serialises one job by locking its
row in the jobs table (``SELECT ... FOR UPDATE``; SQLite gets the same effect from
``BEGIN IMMEDIATE``), so two workers of one job can never cut overlapping ranges, while
different jobs never wait on each other. Every settle is fenced by token, status and expiry.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from pybatchintory.errors import (
    JobConflict,
    LeaseLost,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnknownJob,
)
from pybatchintory.models import (
    Attempt,
    ErrorGroup,
    JobSpec,
    LeaseGrant,
    PlannedRange,
    Settlement,
    Status,
)
from pybatchintory.protocols import JobRecord, Planner
from pybatchintory_adapters._sqlalchemy import queries
from pybatchintory_adapters._sqlalchemy.capabilities import Capabilities
from pybatchintory_adapters._sqlalchemy.direct import (
    DirectConnection,
    EngineLink,
    HotPath,
    Prepared,
)
from pybatchintory_adapters._sqlalchemy.pooling import mark_committed
from pybatchintory_adapters._sqlalchemy.records import aware, to_job
from pybatchintory_adapters._sqlalchemy.statements import MANY_ROWS, Statements
from pybatchintory_adapters._sqlalchemy.tables import SCHEMA_VERSION, Tables
from pybatchintory_adapters._sqlalchemy.types import db_now

__all__ = ("SQLAlchemyStore",)

T = TypeVar("T")

_RUNNING = str(Status.RUNNING)
_TRANSIENT_TRIES = 6
# How stale the locking statement's clock may be before an acquire reads it again (a lease
# granted after a lock wait must not be born short by the wait); at most ttl/20 as well.
_STALE_CLOCK = 0.05


class _Check(NamedTuple):
    status: str
    token: str


@dataclass(frozen=True, slots=True)
class _NewAttempt:
    """An attempt about to be inserted: a new range or the next try of an old one."""

    meta_table: str
    cut: PlannedRange
    attempt: int
    failures: int


class SQLAlchemyStore:
    """The ledger on a SQLAlchemy asyncio engine.

    Args:
        engine: The inventory database. The store never disposes it.
        tables: The table descriptions (with the configured prefix).
        capabilities: What the database does differently.
    """

    def __init__(self, engine: AsyncEngine, *, tables: Tables, capabilities: Capabilities):
        self.engine = engine
        self.tables = tables
        self.capabilities = capabilities
        self.statements = Statements(tables)
        self._prepared: dict[int, tuple[sa.Executable, Prepared]] = {}
        self._raw_connection = engine.sync_engine.raw_connection
        self._ready = False
        # Option engines share the pool; their options cost nothing per connection, unlike
        # ``await conn.execution_options(...)`` on every transaction.
        write = capabilities.write_options
        self._write_engine = engine.execution_options(**write) if write else engine
        single = capabilities.single_statement_options
        self._single_engine = engine.execution_options(**single) if single is not None else None

    # -- transactions ---------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, single: bool = False) -> AsyncIterator[AsyncConnection]:
        if single and self._single_engine is not None:
            async with self._single_engine.connect() as conn:
                yield conn
                await conn.commit()  # nothing to commit: ends SQLAlchemy's own transaction
                mark_committed(conn)
            return
        async with self._write_engine.connect() as conn:
            async with conn.begin():
                yield conn
            mark_committed(conn)

    @asynccontextmanager
    async def _hot(self, single: bool) -> AsyncIterator[tuple[HotPath, object]]:
        """A write transaction for acquire and settle: ``(statements, planner link)``.

        With the adapter's ``driver_session``, statements run on the pooled driver
        connection (see ``direct``); otherwise through SQLAlchemy.
        """
        factory = self.capabilities.driver_session
        if factory is None:
            async with self._write(single) as conn:
                yield EngineLink(conn), conn
            return
        # Straight from the pool: no Connection object, two greenlet hops (out and back).
        try:
            fairy = await greenlet_spawn(self._raw_connection)
        except DBAPIError:
            raise
        except Exception as exc:
            # The pool raises the driver's own error when it cannot connect (a refused or
            # closed database); as engine.connect() would, say so as a lost connection.
            dbapi = self.engine.dialect.loaded_dbapi
            if not isinstance(exc, (OSError, dbapi.Error)):
                raise
            wrapped = DBAPIError.instance(
                None, None, exc, dbapi.Error, connection_invalidated=True
            )
            raise wrapped from exc
        try:
            direct = DirectConnection(factory(fairy.driver_connection), self.engine, self._prepared)
            try:
                # BEGIN inside: on a connection that died in the pool (a server restart),
                # BEGIN is the first thing to fail, and that connection must not go back.
                await direct.begin(single)
                yield direct, direct
                await direct.commit(single)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    # A dead connection must not go back to the pool: the rollback of a
                    # single-statement write has nothing to send, so it would not notice.
                    if (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
                        direct.session.is_disconnect(exc)
                    ):
                        # As SQLAlchemy's own Connection does: every connection of this
                        # one's generation is recycled on its next checkout, so after a
                        # restart the pool does not hand out its dead connections one by one.
                        pool = self.engine.sync_engine.pool
                        await greenlet_spawn(pool._invalidate, fairy, exc)
                        raise
                    try:
                        await direct.session.rollback()
                    except Exception:
                        await greenlet_spawn(fairy.invalidate)
                raise
            mark_committed(fairy)
        finally:
            # Always inside a greenlet: even a committed connection may need I/O on its way
            # back (an overflow connection is closed by the pool), and outside a greenlet
            # that close fails silently and leaks the connection.
            with anyio.CancelScope(shield=True):
                await greenlet_spawn(fairy.close)

    def _translate(self, exc: DBAPIError) -> StoreError:
        mapped = self.capabilities.translate(exc)
        if isinstance(mapped, StoreError):
            return mapped
        if exc.connection_invalidated:
            return StoreUnavailable(f"the inventory database connection failed: {exc.orig}")
        if self.capabilities.retryable(exc):
            return StoreConflict(f"the inventory database kept conflicting: {exc.orig}")
        return StoreError(f"the inventory database failed: {exc.orig}")

    async def _transact(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, single: bool = False
    ) -> T:
        """Run ``work`` in a write transaction, retrying deadlocks and dropped connections.

        ``single``: ``work``'s only write is one statement, atomic by itself; where the
        database allows it, it runs without ``BEGIN``/``COMMIT`` round trips.
        """
        async def once() -> T:
            async with self._write(single) as conn:
                return await work(conn)

        return await self._retrying(once)

    async def _transact_hot(
        self, work: Callable[[HotPath, object], Awaitable[T]], *, single: bool = False
    ) -> T:
        """``_transact`` for acquire and settle, on the hot path."""

        async def once() -> T:
            async with self._hot(single) as (statements, link):
                return await work(statements, link)

        return await self._retrying(once)

    async def _retrying(self, once: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(_TRANSIENT_TRIES):
            try:
                return await once()
            except DBAPIError as exc:
                transient = exc.connection_invalidated or self.capabilities.retryable(exc)
                if not transient or attempt == _TRANSIENT_TRIES - 1:
                    raise self._translate(exc) from exc
                await anyio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
            except OSError as exc:
                if attempt == _TRANSIENT_TRIES - 1:
                    raise StoreUnavailable(f"the inventory database is unreachable: {exc}") from exc
                await anyio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        try:
            async with self.engine.connect() as conn:
                return await work(conn)
        except DBAPIError as exc:
            raise self._translate(exc) from exc

    # -- schema and jobs ------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the tables and indexes if missing; safe when several processes race."""
        if self._ready:
            return
        t = self.tables

        async def create(conn: AsyncConnection) -> None:
            await conn.run_sync(t.metadata.create_all, checkfirst=True)
            present = (await conn.execute(sa.select(sa.func.max(t.schema.c.version)))).scalar()
            if present is None:
                await conn.execute(
                    sa.insert(t.schema).values(version=SCHEMA_VERSION, applied_at=db_now())
                )

        for attempt in range(5):
            try:
                await self._transact(create)
                break
            except StoreError:
                # Another process created the same tables between our check and our create.
                if attempt == 4:
                    raise
                await anyio.sleep(0.05 * (attempt + 1))
        self._ready = True

    async def ensure_job(self, spec: JobSpec) -> JobRecord:
        """Record a new job, or raise ``JobConflict`` if ``spec`` disagrees with the record."""
        jobs = self.tables.jobs

        async def check(conn: AsyncConnection) -> JobRecord | None:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.name == spec.name))).first()
            return None if row is None else to_job(row)

        record = await self._read(check)
        if record is None:
            cursor = None if spec.id_start is None else spec.id_start - 1

            async def create(conn: AsyncConnection) -> None:
                await conn.execute(
                    sa.insert(jobs).values(
                        name=spec.name,
                        meta_table=spec.meta_table,
                        source=dict(spec.source),
                        id_start=spec.id_start,
                        id_end=spec.id_end,
                        cursor=cursor,
                        created_at=db_now(),
                        updated_at=db_now(),
                    )
                )

            try:
                await self._transact(create)
            except (IntegrityError, StoreError):
                pass  # created concurrently: compare with what the winner recorded
            record = await self._read(check)
            if record is None:
                raise StoreError(f"job {spec.name!r} could not be recorded")
        _compare(spec, record)
        return record

    async def get_job(self, name: str) -> JobRecord | None:
        """The recorded job, or ``None``."""
        jobs = self.tables.jobs

        async def read(conn: AsyncConnection) -> JobRecord | None:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.name == name))).first()
            return None if row is None else to_job(row)

        return await self._read(read)

    async def list_jobs(self) -> list[JobRecord]:
        """Every recorded job, by name."""
        jobs = self.tables.jobs

        async def read(conn: AsyncConnection) -> list[JobRecord]:
            rows = await conn.execute(sa.select(jobs).order_by(jobs.c.name))
            return [to_job(row) for row in rows]

        return await self._read(read)

    # -- leases ---------------------------------------------------------------------------

    async def acquire(
        self,
        job: str,
        *,
        owner: str,
        ttl: float,
        max_attempts: int,
        n: int,
        planner: Planner,
        config: Mapping[str, Any] | None = None,
    ) -> list[LeaseGrant]:
        """Lease up to ``n`` ranges: expire, then retries oldest first, then new ranges."""
        stored_config = None if config is None else dict(config)
        st = self.statements
        returning = self.engine.dialect.insert_returning
        insert = st.insert_attempt_returning if returning else st.insert_attempt

        async def work(ex: HotPath, link: object) -> list[LeaseGrant]:
            asked = time.monotonic()
            locked = await ex.one(st.lock_job, {"p_job": job})
            if locked is None:
                raise UnknownJob(f"job {job!r} is not recorded in the inventory")
            cursor, meta_table, oldest_expiry, next_retry, now = locked
            if time.monotonic() - asked > min(_STALE_CLOCK, ttl / 20):
                # The lock was not free: the statement's clock is from before the wait.
                clock = await ex.one(st.clock, {})
                assert clock is not None
                now = clock[0]
            expires = now + timedelta(seconds=ttl)
            params = {"p_job": job, "p_now": now}
            if oldest_expiry is not None and oldest_expiry <= now:
                await ex.run(st.expire, {**params, "p_max_attempts": max_attempts})
                next_retry = now  # the expired ranges are due now
            rows: list[_NewAttempt] = []
            if next_retry is not None and next_retry <= now:
                due = await ex.all(st.due_retries, {**params, "p_n": n})
                for old_id, old_table, start, end, count, weight, oversized, *tries in due:
                    await ex.run(st.clear_retry, {"p_id": old_id})
                    cut = PlannedRange(
                        int(start), int(end), int(count), int(weight), bool(oversized)
                    )
                    attempt, failures = (int(v) for v in tries)
                    rows.append(_NewAttempt(old_table, cut, attempt + 1, failures))
            new_cursor = cursor
            while len(rows) < n:
                planned = await planner(link, new_cursor)
                if planned is None:
                    break
                rows.append(_NewAttempt(meta_table, planned, 1, 0))
                new_cursor = planned.meta_id_end
            moved = new_cursor != cursor
            # PostgreSQL: the one new range's attempt and the cursor move in one statement.
            fuse = moved and len(rows) == 1 and self.capabilities.write_in_with
            tokens = [secrets.token_hex(16) for _ in rows]
            values = [
                {
                    "meta_table": row.meta_table,
                    "job": job,
                    "job_identifier": owner,
                    "processing_start": now,
                    "meta_id_start": row.cut.meta_id_start,
                    "meta_id_end": row.cut.meta_id_end,
                    "weight": row.cut.weight,
                    "count": row.cut.count,
                    "attempt": row.attempt,
                    "status": _RUNNING,
                    "owner": owner,
                    "token": token,
                    "heartbeat_at": now,
                    "expires_at": expires,
                    "failures": row.failures,
                    "dead": False,
                    "oversized": row.cut.oversized,
                    "config": stored_config,
                }
                for row, token in zip(rows, tokens, strict=True)
            ]
            ids: dict[str, int] = {}
            if len(values) > 1 and returning:
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
            else:
                for one in values:
                    prefixed = {f"p_{name}": value for name, value in one.items()}
                    if fuse:
                        prefixed.update(p_cursor=new_cursor, p_now=now)
                        key = await ex.insert(st.insert_attempt_moving_cursor, prefixed)
                    else:
                        key = await ex.insert(insert, prefixed)
                    ids[one["token"]] = key
            grants = [
                LeaseGrant(
                    id=ids[token],
                    job=job,
                    meta_table=row.meta_table,
                    meta_id_start=row.cut.meta_id_start,
                    meta_id_end=row.cut.meta_id_end,
                    count=row.cut.count,
                    weight=row.cut.weight,
                    attempt=row.attempt,
                    failures=row.failures,
                    oversized=row.cut.oversized,
                    token=token,
                    expires_at=aware(expires),  # type: ignore[arg-type]
                )
                for row, token in zip(rows, tokens, strict=True)
            ]
            if moved and not fuse:
                await ex.run(st.move_cursor, {**params, "p_cursor": new_cursor})
            return grants

        return await self._transact_hot(work)

    async def heartbeat(self, owner: str, ttl: float, tokens: Collection[str]) -> set[str]:
        """Renew ``owner``'s live leases among ``tokens`` in one statement; return lost ones.

        A lease already past its expiry is not renewed, even if nobody has taken it over
        yet: the database clock decides, so a worker frozen past its TTL loses its lease.
        """
        wanted = list(tokens)
        if not wanted:
            return set()
        st = self.statements
        params = {"p_owner": owner, "p_tokens": wanted}

        async def work(conn: AsyncConnection) -> set[str]:
            renewed = await conn.execute(st.renew, {**params, "p_ttl": float(ttl)})
            if renewed.rowcount == len(wanted):
                return set()
            alive = set((await conn.execute(st.live_tokens, params)).scalars())
            return set(wanted) - alive

        return await self._transact(work, single=True)

    async def settle(self, settlement: Settlement) -> None:
        """End an attempt if its lease is still held; otherwise raise ``LeaseLost``."""
        s = settlement
        st = self.statements
        statement = st.settle(s.status, s.counts_as_failure, s.dead)
        params = {
            "p_id": s.attempt_id,
            "p_token": s.token,
            "p_result": s.result,
            "p_error_type": s.error_type,
            "p_error_message": s.error_message,
            "p_traceback": s.traceback,
            "p_fingerprint": s.fingerprint,
            "p_code_version": s.code_version,
        }
        if s.status is not Status.SUCCEEDED and not s.dead:
            params["p_delay"] = float(s.retry_delay)

        async def work(ex: HotPath, link: object) -> None:
            if await ex.run(statement, params) == 1:
                return
            found = await ex.one(st.settle_check, {"p_id": s.attempt_id})
            row = None if found is None else _Check(*found)
            if row is not None and row.token == s.token and row.status == str(s.status):
                return  # an earlier try committed before its connection dropped
            if row is None:
                state = "missing"
            elif row.token != s.token:
                state = "taken over"
            elif row.status == _RUNNING:
                state = "lease expired"
            else:
                state = f"already {row.status}"
            raise LeaseLost(
                f"attempt {s.attempt_id} is no longer leased to this worker ({state}); "
                f"its {s.status} was not recorded"
            )

        # The fenced UPDATE is the only write; the SELECT after a miss only explains it.
        await self._transact_hot(work, single=True)

    # -- operator controls ----------------------------------------------------------------

    async def revive(
        self, job: str, *, fingerprint: str | None, batch_ids: Collection[int] | None
    ) -> int:
        """Give dead ranges a fresh attempt budget and make them due now.

        ``batch_ids`` are attempt ids; each names its range, whichever attempt it is (only
        the range's newest attempt carries the dead flag).
        """
        inv = self.tables.inventory
        query = sa.update(inv).where(inv.c.job == job, inv.c.dead.is_(True))
        if fingerprint is not None:
            query = query.where(inv.c.fingerprint == fingerprint)
        wanted = None if batch_ids is None else list(batch_ids)

        async def work(conn: AsyncConnection) -> int:
            chosen = query
            if wanted is not None:
                # Two statements: MySQL cannot update a table it reads in a subquery.
                starts = (
                    await conn.execute(
                        sa.select(inv.c.meta_id_start)
                        .where(inv.c.job == job, inv.c.id.in_(wanted))
                        .distinct()
                    )
                ).scalars().all()
                if not starts:
                    return 0
                chosen = query.where(inv.c.meta_id_start.in_(list(starts)))
            result = await conn.execute(chosen.values(dead=False, failures=0, retry_after=db_now()))
            return int(result.rowcount)

        return await self._transact(work)

    async def set_cursor(self, job: str, meta_id: int) -> None:
        """Move a job's cursor (under the job lock)."""
        jobs = self.tables.jobs

        async def work(conn: AsyncConnection) -> None:
            locked = (
                await conn.execute(
                    sa.select(jobs.c.name).where(jobs.c.name == job).with_for_update()
                )
            ).first()
            if locked is None:
                raise UnknownJob(f"job {job!r} is not recorded in the inventory")
            await conn.execute(
                sa.update(jobs)
                .where(jobs.c.name == job)
                .values(cursor=meta_id, updated_at=db_now())
            )

        await self._transact(work)

    async def record_done(
        self, job: str, start: int, end: int, count: int, weight: int, owner: str
    ) -> int:
        """Record ``[start, end]`` as succeeded and move the cursor past it.

        Ranges inside ``[start, end]`` that wait for a retry or are dead are settled by it:
        they are not handed out again and no longer hold back a downstream job.
        """
        inv, jobs = self.tables.inventory, self.tables.jobs

        async def work(conn: AsyncConnection) -> int:
            locked = (
                await conn.execute(
                    sa.select(jobs.c.cursor, jobs.c.meta_table)
                    .where(jobs.c.name == job)
                    .with_for_update()
                )
            ).first()
            if locked is None:
                raise UnknownJob(f"job {job!r} is not recorded in the inventory")
            cursor, meta_table = locked
            result = await conn.execute(
                sa.insert(inv).values(
                    meta_table=meta_table,
                    job=job,
                    job_identifier=owner,
                    processing_start=db_now(),
                    processing_end=db_now(),
                    meta_id_start=start,
                    meta_id_end=end,
                    count=count,
                    weight=weight,
                    attempt=1,
                    status=str(Status.SUCCEEDED),
                    owner=owner,
                    failures=0,
                    dead=False,
                    oversized=False,
                    job_result={"marked_done": True},
                )
            )
            await conn.execute(
                sa.update(inv)
                .where(
                    inv.c.job == job,
                    inv.c.meta_id_start >= start,
                    inv.c.meta_id_end <= end,
                    sa.or_(inv.c.retry_after.is_not(None), inv.c.dead.is_(True)),
                )
                .values(retry_after=None, dead=False)
            )
            if cursor is None or end > cursor:
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.name == job)
                    .values(cursor=end, updated_at=db_now())
                )
            (attempt_id,) = result.inserted_primary_key  # type: ignore[misc]
            return int(attempt_id)

        return await self._transact(work)

    # -- reads ----------------------------------------------------------------------------

    async def attempts(
        self,
        job: str,
        *,
        status: Collection[Status] | None = None,
        limit: int | None = None,
        ids: Collection[int] | None = None,
    ) -> list[Attempt]:
        """Attempts of a job, newest first."""
        return await self._read(
            lambda c: queries.attempts(c, self.tables, job, status=status, limit=limit, ids=ids)
        )

    async def history(self, meta_table: str, meta_id: int) -> list[Attempt]:
        """Every attempt of every job on ``meta_table`` whose range covers ``meta_id``."""
        return await self._read(lambda c: queries.history(c, self.tables, meta_table, meta_id))

    async def ledger_summary(self, job: str) -> dict[str, int]:
        """Running, retry-pending and dead counts of one job."""
        return await self._read(lambda c: queries.ledger_summary(c, self.tables, job))

    async def error_groups(self, job: str) -> list[ErrorGroup]:
        """Failed attempts grouped by fingerprint."""
        return await self._read(lambda c: queries.error_groups(c, self.tables, job))

    async def succeeded_ranges(
        self,
        job: str,
        *,
        after: int | None,
        end: int | None,
        limit: int | None,
        before_open: bool = False,
    ) -> list[Attempt]:
        """Succeeded attempts of ``job`` in id order (optionally before its oldest open range)."""
        return await self._read(
            lambda c: queries.succeeded_ranges(
                c, self.tables, job, after=after, end=end, limit=limit, before_open=before_open
            )
        )

    async def due_ranges(self, job: str, *, max_attempts: int, limit: int) -> list[Attempt]:
        """The newest attempts of the ranges an acquire would retry now."""
        return await self._read(
            lambda c: queries.due_ranges(
                c, self.tables, job, max_attempts=max_attempts, limit=limit
            )
        )

    async def oldest_running_start(self, job: str) -> int | None:
        """Smallest start of a running or retry-pending range of ``job``."""
        return await self._read(lambda c: queries.oldest_open_start(c, self.tables, job))

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to whoever created it."""


# Recorded with the source, but not part of a job's identity: they change how ranges are
# measured or where rows are read from, not which ids the job covers.
_NOT_IDENTITY = ("weight", "database")


def _identity(source: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k not in _NOT_IDENTITY}


def _compare(spec: JobSpec, record: JobRecord) -> None:
    recorded = {
        "source": _identity(record.source),
        "id_start": record.id_start,
        "id_end": record.id_end,
    }
    wanted = spec.identity()
    wanted["source"] = _identity(wanted["source"])
    differences = [
        f"{key}: recorded {recorded[key]!r}, given {wanted[key]!r}"
        for key in ("source", "id_start", "id_end")
        if recorded[key] != wanted[key]
    ]
    if differences:
        raise JobConflict(
            f"job {spec.name!r} is already recorded with another definition ("
            + "; ".join(differences)
            + "). Use a new job name, or keep the source, window and filter."
        )
