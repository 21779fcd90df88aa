"""The inventory store: one SQLAlchemy Core implementation for every built-in database.

Write operations run in short transactions. ``acquire`` serialises one job by locking its
row in the jobs table (``SELECT ... FOR UPDATE``; SQLite gets the same effect from
``BEGIN IMMEDIATE``), so two workers of one job can never cut overlapping ranges, while
different jobs never wait on each other. Every settle is fenced by token, status and expiry.

This module holds the transactions themselves (pooling, the driver hot path, retries of
deadlocks and dropped connections, error translation); what runs inside them lives by
operation: ``leasing`` (acquire, heartbeat, settle), ``controls`` (the operator's writes),
``jobs`` and ``queries`` (the reads).
"""

from __future__ import annotations

import functools
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pybatchintory.errors import StoreConflict, StoreError, StoreUnavailable
from pybatchintory.models import (
    Attempt,
    ErrorGroup,
    JobSpec,
    JobStatus,
    LeaseGrant,
    LedgerSummary,
    Settlement,
    Status,
    Weight,
)
from pybatchintory.protocols import FirstPage, JobRecord, Planner
from pybatchintory_adapters._sqlalchemy import compat, controls, jobs, migrations, queries
from pybatchintory_adapters._sqlalchemy.capabilities import Capabilities
from pybatchintory_adapters._sqlalchemy.driver_path import (
    DirectConnection,
    EngineLink,
    HotPath,
    Prepared,
)
from pybatchintory_adapters._sqlalchemy.in_batch import LeaseInBatch, lease_in_batch
from pybatchintory_adapters._sqlalchemy.in_one import (
    LeaseAsked,
    LeaseInOne,
    LeaseManyInOne,
    lease_in_one,
    lease_many_in_one,
)
from pybatchintory_adapters._sqlalchemy.leasing import (
    Acquisition,
    renewal,
    settling,
    settling_many,
)
from pybatchintory_adapters._sqlalchemy.pooling import KeptConnection, mark_committed
from pybatchintory_adapters._sqlalchemy.read_statements import ReadStatements
from pybatchintory_adapters._sqlalchemy.statements import Statements
from pybatchintory_adapters._sqlalchemy.tables import Tables

__all__ = ("SQLAlchemyStore",)

T = TypeVar("T")
_Built = TypeVar("_Built")

_TRANSIENT_TRIES = 6
_IN_ONE_STATEMENTS = 64
"""One-statement acquires a store keeps (one per source page shape)."""


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
        self.reads = ReadStatements(tables)
        self._prepared: OrderedDict[int, tuple[sa.Executable, Prepared]] = OrderedDict()
        self._in_one: OrderedDict[tuple[int, int | None, bool], tuple[Any, Any]] = OrderedDict()
        self._ready = False
        self._kept = KeptConnection()
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
        """A connection for acquire and settle: ``(statements, planner link)``.

        With the adapter's ``driver_session``, statements run on the pooled driver
        connection (see ``driver_path``; its ``transaction`` begins and commits);
        otherwise through SQLAlchemy, in a transaction begun and committed here.
        """
        factory = self.capabilities.driver_session
        if factory is None:
            async with self._write(single) as conn:
                yield EngineLink(conn), conn
            return
        # The connection kept from the last transaction, else straight from the pool: no
        # Connection object, two greenlet hops (out and back).
        try:
            fairy = await self._kept.take() or await self.engine.raw_connection()
        except DBAPIError:
            raise
        except Exception as exc:
            # The pool raises the driver's own error when it cannot connect (a refused or
            # closed database); as engine.connect() would, say so as a lost connection.
            dbapi = self.engine.dialect.loaded_dbapi
            if not isinstance(exc, (OSError, dbapi.Error)):
                raise
            wrapped = DBAPIError.instance(None, None, exc, dbapi.Error, connection_invalidated=True)
            raise wrapped from exc
        kept = False
        try:
            direct = DirectConnection(factory(fairy.driver_connection), self.engine, self._prepared)
            try:
                # BEGIN inside (``DirectConnection.transaction``): on a connection that died
                # in the pool (a server restart), BEGIN is the first thing to fail, and that
                # connection must not go back.
                yield direct, direct
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
                        await compat.recycle_generation(self.engine, fairy, exc)
                        raise
                    try:
                        await direct.session.rollback()
                    except Exception:
                        await compat.invalidate_borrowed(fairy)
                raise
            # Committed: kept for the next transaction, or back to the pool as it is.
            kept = self._kept.keep(fairy)
            if not kept:
                mark_committed(fairy)
        finally:
            if not kept:
                with anyio.CancelScope(shield=True):
                    await compat.close_borrowed(fairy)

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
        self,
        work: Callable[[HotPath, object], Awaitable[T]],
        *,
        single: bool = False,
        pure: bool = False,
    ) -> T:
        """``_transact`` for acquire and settle, on the hot path.

        ``pure``: ``work`` runs statements on its connection and nothing else (see
        ``DirectConnection.transaction``).
        """

        async def once() -> T:
            async with self._hot(single) as (statements, link):
                if isinstance(statements, DirectConnection):
                    return await statements.transaction(work, single, pure=pure)
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
        except OSError as exc:
            # A refused or reset connect is not wrapped by SQLAlchemy (asyncpg raises it).
            raise StoreUnavailable(f"the inventory database is unreachable: {exc}") from exc

    # -- schema and jobs ------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the tables and indexes if missing; safe when several processes race.

        Raises:
            SchemaMismatch: An existing inventory's schema is older or newer than the code.
        """
        if self._ready:
            return
        t = self.tables
        for attempt in range(5):
            try:
                await self._transact(lambda conn: migrations.prepare(conn, t))
                break
            except StoreError:
                # Another process created the same tables between our check and our create.
                if attempt == 4:
                    raise
                await anyio.sleep(0.05 * (attempt + 1))
        self._ready = True

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Bring the schema up to date (see ``migrations``); return the SQL, in order."""
        return await migrations.migrate(
            self._transact, self._read, self.tables, self.engine.dialect, dry_run=dry_run
        )

    async def ensure_job(self, spec: JobSpec) -> JobRecord:
        """Record a new job, or raise ``JobConflict`` if ``spec`` disagrees with the record."""
        record = await self.get_job(spec.name)
        if record is None:
            try:
                await self._transact(lambda conn: jobs.insert_job(conn, self.statements, spec))
            except (IntegrityError, StoreError):
                pass  # created concurrently: compare with what the winner recorded
            record = await self.get_job(spec.name)
            if record is None:
                raise StoreError(f"job {spec.name!r} could not be recorded")
        jobs.compare(spec, record)
        return record

    async def get_job(self, name: str) -> JobRecord | None:
        """The recorded job, or ``None``."""
        return await self._read(lambda conn: jobs.one_job(conn, self.reads, name))

    async def list_jobs(self) -> list[JobRecord]:
        """Every recorded job, by name."""
        return await self._read(lambda conn: jobs.all_jobs(conn, self.reads))

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
        """Lease up to ``n`` ranges: expire, then retries oldest first, then new ranges.

        The common case of one range takes one round trip where the database allows it
        (one statement, ``in_one``; one batch, ``in_batch``); the rest, and whatever that
        round trip cannot decide, one transaction.
        """
        if self.capabilities.acquire_in_one or self.capabilities.acquire_in_batch:
            grants = await self._acquire_in_one(job, owner, ttl, n, planner, config)
            if grants is not None:
                return grants
        work = Acquisition(
            statements=self.statements,
            returning=self.engine.dialect.insert_returning,
            fuse=self.capabilities.write_in_with,
            job=job,
            owner=owner,
            ttl=ttl,
            max_attempts=max_attempts,
            n=n,
            planner=planner,
            config=None if config is None else dict(config),
        )
        # A planner whose first page is a statement on this database reads every page
        # through the transaction's own connection: nothing else is waited on.
        offer = getattr(planner, "first_page", None)
        threaded = hasattr(self.capabilities.driver_session, "in_thread")
        pure = threaded and offer is not None and offer(self.engine) is not None
        return await self._transact_hot(work, pure=pure)

    async def _acquire_in_one(
        self,
        job: str,
        owner: str,
        ttl: float,
        n: int,
        planner: Planner,
        config: Mapping[str, Any] | None,
    ) -> list[LeaseGrant] | None:
        """The acquire as one statement, or ``None`` when the transaction must decide.

        One range, or ``n`` count-capped ones (no weight cap), from a source that offers
        its first page as a statement (``FirstPage``).
        """
        offer = getattr(planner, "first_page", None)
        first: FirstPage | None = None if offer is None else offer(self.engine)
        if first is None:
            return None
        asked = LeaseAsked(first, job, owner, ttl, None if config is None else dict(config))
        in_one = self.capabilities.acquire_in_one
        if n == 1:
            # One statement (``in_one``) or one batch (``in_batch``), built once per shape.
            limit, counted = first.limit, first.max_count is not None
            key = (id(first.query), limit, counted)
            body: LeaseInOne | LeaseInBatch
            if in_one:
                build = functools.partial(
                    lease_in_one, self.tables, first.query, limit=limit, counted=counted
                )
                statement = self._cached_in_one(key, first.query, build)
                body = LeaseInOne(statement, asked)
            else:
                batch = functools.partial(
                    lease_in_batch, self.tables, first.query, limit=limit, counted=counted
                )
                statements = self._cached_in_one(key, first.query, batch)
                body = LeaseInBatch(statements, asked)
            return await self._transact_hot(body, single=True)
        if not in_one:
            return None  # many ranges in a batch: not written; the transaction does
        if first.max_count is None or first.max_weight is not None:
            return None  # a weight cap cuts one range after another: the transaction does
        limit = n * first.max_count
        key = (id(first.rows), limit, True)
        many = LeaseManyInOne(
            statement=self._cached_in_one(
                key, first.rows, lambda: lease_many_in_one(self.tables, first.rows, limit)
            ),
            asked=asked,
            n=n,
        )
        return await self._transact_hot(many, single=True)

    def _cached_in_one(
        self, key: tuple[int, int | None, bool], page: Any, build: Callable[[], _Built]
    ) -> _Built:
        """A one-round-trip acquire around the page query ``page``, built once per shape."""
        cached = self._in_one.get(key)
        if cached is not None and cached[0] is page:
            self._in_one.move_to_end(key)
            return cached[1]  # type: ignore[no-any-return]
        statement = build()
        # Keyed by identity and holding the page query, so an id is never reused for another.
        self._in_one[key] = (page, statement)
        while len(self._in_one) > _IN_ONE_STATEMENTS:
            self._in_one.popitem(last=False)
        return statement

    async def heartbeat(self, owner: str, ttl: float, tokens: Collection[str]) -> set[str]:
        """Renew ``owner``'s live leases among ``tokens`` in one statement; return lost ones.

        A lease already past its expiry is not renewed, even if nobody has taken it over
        yet: the database clock decides, so a worker frozen past its TTL loses its lease.
        """
        wanted = list(tokens)
        if not wanted:
            return set()
        return await self._transact(renewal(self.statements, owner, ttl, wanted), single=True)

    async def settle(self, settlement: Settlement) -> None:
        """End an attempt if its lease is still held; otherwise raise ``LeaseLost``."""
        await self._transact_hot(settling(self.statements, settlement), single=True, pure=True)

    async def settle_many(self, settlements: Sequence[Settlement]) -> dict[int, str]:
        """End many attempts whose leases are still held; the ones lost, by id, with why.

        One fenced ``UPDATE`` per 50 settlements, each fenced by its own token as
        ``settle`` is; nothing is raised for a lost lease (the caller is told which).
        """
        if not settlements:
            return {}
        work = settling_many(self.statements, list(settlements))
        return await self._transact_hot(work, single=True, pure=True)

    # -- operator controls ----------------------------------------------------------------

    async def revive(
        self,
        job: str,
        *,
        fingerprint: str | None,
        batch_ids: Collection[int] | None,
        max_attempts: int,
    ) -> int:
        """Give dead ranges a fresh attempt budget and make them due now.

        ``batch_ids`` are attempt ids; each names its range, whichever attempt it is (only
        the range's newest attempt carries the dead flag). Leases that ran out are expired
        first, under the job lock, as an acquire would.
        """
        work = controls.revival(
            self.statements,
            job,
            fingerprint=fingerprint,
            batch_ids=batch_ids,
            max_attempts=max_attempts,
        )
        return await self._transact(work)

    async def set_cursor(self, job: str, meta_id: int) -> None:
        """Move a job's cursor (under the job lock)."""
        await self._transact(controls.cursor_move(self.statements, job, meta_id))

    async def record_done(
        self, job: str, start: int, end: int, count: int, weight: Weight, owner: str
    ) -> int:
        """Record ``[start, end]`` as succeeded and move the cursor past it.

        Ranges inside ``[start, end]`` that wait for a retry or are dead are settled by it:
        they are not handed out again and no longer hold back a downstream job.
        """
        work = controls.done_record(self.statements, job, start, end, count, weight, owner)
        return await self._transact(work)

    # -- reads ----------------------------------------------------------------------------

    async def attempts(
        self,
        job: str,
        *,
        status: Collection[Status] | None = None,
        limit: int | None = None,
        ids: Collection[int] | None = None,
        max_attempts: int,
    ) -> list[Attempt]:
        """Attempts of a job as seen now, newest first."""
        return await self._read(
            lambda c: queries.attempts(
                c, self.reads, job, status=status, limit=limit, ids=ids, max_attempts=max_attempts
            )
        )

    async def history(self, meta_table: str, meta_id: int, *, max_attempts: int) -> list[Attempt]:
        """Every attempt, as seen now, of every job on ``meta_table`` covering ``meta_id``."""
        return await self._read(
            lambda c: queries.history(c, self.reads, meta_table, meta_id, max_attempts)
        )

    async def ledger_summary(self, job: str, *, max_attempts: int) -> LedgerSummary:
        """Running, retry-pending and dead counts of one job (rows, weight), as of now."""
        return await self._read(lambda c: queries.ledger_summary(c, self.reads, job, max_attempts))

    async def job_statuses(self, *, max_attempts: int) -> list[JobStatus]:
        """One line per job, by name: cursor, window, counts, last success (one statement)."""
        return await self._read(lambda c: queries.job_statuses(c, self.reads, max_attempts))

    async def error_groups(self, job: str) -> list[ErrorGroup]:
        """Failed attempts grouped by fingerprint."""
        return await self._read(lambda c: queries.error_groups(c, self.reads, job))

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
                c, self.reads, job, after=after, end=end, limit=limit, before_open=before_open
            )
        )

    async def due_ranges(self, job: str, *, max_attempts: int, limit: int) -> list[Attempt]:
        """The newest attempts of the ranges an acquire would retry now."""
        return await self._read(
            lambda c: queries.due_ranges(c, self.reads, job, max_attempts=max_attempts, limit=limit)
        )

    async def oldest_open_start(self, job: str) -> int | None:
        """Smallest start of a range of ``job`` that is running, waiting for a retry, or dead."""
        return await self._read(lambda c: queries.oldest_open_start(c, self.reads, job))

    async def aclose(self) -> None:
        """Give back the connection kept for the hot path (the engine is not disposed)."""
        await self._kept.aclose()
