"""The common acquire is one round trip, and cuts what the transaction would cut.

PostgreSQL (``in_one``): lock the job row, cut the range from the source's first page,
insert the attempt and move the cursor in one data-modifying statement, in autocommit.
MariaDB (``in_batch``): the same as one multi-statement batch ending in its ``COMMIT``.
These tests count what reaches the driver, compare every cut with the slower transaction's
on the same data (count cap, weight cap, an oversized row, a filter, a window), and check
that a lease granted after a lock wait is not born short, on both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomysql
import asyncpg
import pytest
from sqlalchemy.engine import make_url

import pybatchintory as pbi
import pybatchintory_adapters.mysql as mysql_adapter
import pybatchintory_adapters.postgres as pg_adapter
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

from tests.conftest import DatabaseFactory
from tests.contract._ledger import attempt_row, attempts_of, expire_lease, table_totals
from tests.helpers import create_meta_table, fetch_all


@pytest.fixture
def pg_url(any_db_url_factory: DatabaseFactory) -> str:
    return any_db_url_factory("postgres")


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def url(request: pytest.FixtureRequest, any_db_url_factory: DatabaseFactory) -> str:
    """A fresh database on PostgreSQL (one statement) or MariaDB (one batch)."""
    return any_db_url_factory(request.param)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the driver sessions send, a round trip each (``BEGIN`` included).

    A MariaDB batch counts once, as its first statement after the ``SET`` that resets its
    variables (``SELECT ... FOR UPDATE``); a statement sent with its ``COMMIT`` counts once.
    """
    seen: list[str] = []
    for session in (pg_adapter._AsyncpgSession, mysql_adapter._AiomysqlSession):
        rows, run, begin = session.rows, session.run, session.begin

        async def counted_rows(self: Any, sql: str, args: Any, _rows: Any = rows) -> Any:
            seen.append(sql)
            return await _rows(self, sql, args)

        async def counted_run(self: Any, sql: str, args: Any, _run: Any = run) -> Any:
            seen.append(sql)
            return await _run(self, sql, args)

        async def counted_begin(self: Any, single: bool, _begin: Any = begin) -> None:
            if not single:
                seen.append("BEGIN")
            await _begin(self, single)

        monkeypatch.setattr(session, "rows", counted_rows)
        monkeypatch.setattr(session, "run", counted_run)
        monkeypatch.setattr(session, "begin", counted_begin)
    batch = mysql_adapter._AiomysqlSession.batch

    async def counted_batch(self: Any, sql: str, args: Any) -> Any:
        seen.append(sql.split(";\n", 1)[1])
        return await batch(self, sql, args)

    monkeypatch.setattr(mysql_adapter._AiomysqlSession, "batch", counted_batch)
    yield seen


def _one_round_trip(sql: str) -> bool:
    """The one-round-trip acquire: PostgreSQL's statement or MariaDB's batch."""
    return sql.lstrip().startswith(("WITH", "SELECT inventory_jobs.`cursor`"))


def _slow(inv: pbi.Inventory) -> None:
    store = inv.store
    assert isinstance(store, SQLAlchemyStore)
    store.capabilities = dataclasses.replace(
        store.capabilities, acquire_in_one=False, acquire_in_batch=False
    )


async def test_a_lease_is_one_round_trip_and_its_settle_another(url: str, sent: list[str]) -> None:
    await create_meta_table(url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url) as inv:
        first = await inv.acquire("one", files, max_count=10)  # records the job, sets a cursor
        assert first is not None
        await first.success()
        for start in (11, 21, 31):
            sent.clear()
            batch = await inv.acquire("one", files, max_count=10)
            assert batch is not None
            assert len(sent) == 1 and _one_round_trip(sent[0]), sent
            assert (batch.meta_id_start, batch.meta_id_end, batch.count) == (start, start + 9, 10)
            assert (batch.count, batch.weight) == await table_totals(url, start, start + 9)
            row = await attempt_row(url, batch.id)
            assert (row["status"], row["token"], row["attempt"]) == ("running", batch.token, 1)
            sent.clear()
            await batch.success()
            assert len(sent) == 1
        cursor = (await inv.status())[0]
        assert cursor.cursor == 40


async def test_the_slower_path_takes_expired_leases_and_due_retries(
    url: str, sent: list[str]
) -> None:
    await create_meta_table(url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url) as inv:
        a = await inv.acquire("slow", files, max_count=10)
        b = await inv.acquire("slow", files, max_count=10)
        assert a is not None and b is not None
        await expire_lease(url, a.id)
        sent.clear()
        again = await inv.acquire("slow", files, max_count=10)
        assert again is not None and (again.meta_id_start, again.attempt) == (1, 2)
        # The one round trip could not decide: the transaction did.
        assert len(sent) > 1 and _one_round_trip(sent[0]), sent
        await again.release()
        retried = await inv.acquire("slow", files, max_count=10)
        assert retried is not None and (retried.meta_id_start, retried.attempt) == (1, 3)
        await retried.success()
        await b.success()
        sent.clear()
        fresh = await inv.acquire("slow", files, max_count=10)
        assert fresh is not None and fresh.meta_id_start == 21 and len(sent) == 1
        await fresh.success()
        # Nothing left: one round trip says so.
        await inv.set_cursor("slow", 100)
        sent.clear()
        assert await inv.acquire("slow", files, max_count=10) is None
        assert len(sent) == 1


@pytest.mark.parametrize(
    ("caps", "where"),
    [
        ({"max_count": 7}, None),
        ({"max_weight": 5_000}, None),
        ({"max_weight": 3_000, "max_count": 4}, None),
        ({"max_weight": 1_500}, {"kind": "csv"}),
        ({"max_count": 9}, {"kind": ["csv", "xml"]}),
        ({}, None),
    ],
)
async def test_every_cut_is_the_transactions_cut(
    url: str, caps: dict[str, int], where: dict[str, Any] | None
) -> None:
    # Sizes ~1000 with two rows far over any cap: each goes out alone, flagged oversized.
    weights = [900 + (i * 37) % 400 for i in range(300)]
    weights[40] = weights[41] = 50_000
    await create_meta_table(url, rows=300, weights=weights)
    options: dict[str, Any] = {"weight": "size_in_bytes"}
    if where is not None:
        options["where"] = where
    files = pbi.MetaTable("files", **options)
    window = {"id_start": 5, "id_end": 260}
    cuts: dict[str, list[tuple[Any, ...]]] = {}
    async with pbi.Inventory(url) as fast, pbi.Inventory(url) as slow:
        _slow(slow)
        for name, inv in (("fast", fast), ("slow", slow)):
            cuts[name] = []
            while (batch := await inv.acquire(name, files, **caps, **window)) is not None:
                cuts[name].append(
                    (
                        batch.meta_id_start,
                        batch.meta_id_end,
                        batch.count,
                        batch.weight,
                        batch.oversized,
                    )
                )
                await batch.success()
    assert cuts["fast"] == cuts["slow"]
    assert cuts["fast"][0][0] == 5 and cuts["fast"][-1][1] <= 260
    rows = await attempts_of(url, "fast")
    assert [(r["meta_id_start"], r["meta_id_end"], r["count"]) for r in rows] == [
        c[:3] for c in cuts["fast"]
    ]


class _JobLock:
    """Another session holding a job's row lock (``SELECT ... FOR UPDATE``) until released."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.conn: Any = None

    async def hold(self, job: str) -> None:
        u = self.url
        sql = f"SELECT 1 FROM inventory_jobs WHERE name = '{job}' FOR UPDATE"
        if u.get_backend_name() == "postgresql":
            self.conn = await asyncpg.connect(
                host=u.host, port=u.port, user=u.username, database=u.database
            )
            await self.conn.execute("BEGIN")
            await self.conn.execute(sql)
        else:
            self.conn = await aiomysql.connect(
                host=u.host, port=u.port or 3306, user=u.username, db=u.database, autocommit=False
            )
            async with self.conn.cursor() as cursor:
                await cursor.execute(sql)

    async def release(self) -> None:
        if isinstance(self.conn, asyncpg.Connection):
            await self.conn.execute("COMMIT")
            await self.conn.close()
        else:
            await self.conn.commit()
            self.conn.close()


async def test_a_lease_granted_after_a_lock_wait_is_not_born_short(url: str) -> None:
    await create_meta_table(url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url, lease_ttl=5) as inv:
        first = await inv.acquire("wait", files, max_count=10)
        assert first is not None
        await first.success()
        lock = _JobLock(url)
        await lock.hold("wait")
        try:
            asked = datetime.now(UTC).replace(tzinfo=None)
            waiting = asyncio.ensure_future(inv.acquire("wait", files, max_count=10))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # serialised behind the lock
        finally:
            await lock.release()
        batch = await waiting
        assert batch is not None and batch.meta_id_start == 11
        row = await attempt_row(url, batch.id)
        life = (row["expires_at"] - row["processing_start"]).total_seconds()
        assert abs(life - 5) < 0.01
        # Granted after the wait (the database and this test share the machine's clock).
        assert row["processing_start"] >= asked + timedelta(seconds=0.9)
        await batch.success()


async def test_concurrent_workers_of_one_job_never_overlap(url: str) -> None:
    await create_meta_table(url, rows=2000)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    invs = [pbi.Inventory(url, owner=f"w{i}") for i in range(4)]

    async def work(inv: pbi.Inventory) -> None:
        while (batch := await inv.acquire("race", files, max_count=17)) is not None:
            await batch.success()

    try:
        await asyncio.gather(*(work(inv) for inv in invs))
    finally:
        for inv in invs:
            await inv.aclose()
    rows = await attempts_of(url, "race")
    ranges = sorted((r["meta_id_start"], r["meta_id_end"]) for r in rows)
    assert ranges[0][0] == 1 and ranges[-1][1] == 2000
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1  # contiguous: no overlap, no gap
    assert sum(r["count"] for r in rows) == 2000


@pytest.mark.postgres
@pytest.mark.parametrize(("n", "max_count"), [(10, 1), (7, 13), (50, 3)])
async def test_acquire_many_of_count_capped_ranges_is_one_statement(
    pg_url: str, sent: list[str], n: int, max_count: int
) -> None:
    await create_meta_table(pg_url, rows=400)
    odd = pbi.MetaTable("files", weight="size_in_bytes", where={"kind": "csv"})
    async with pbi.Inventory(pg_url) as fast, pbi.Inventory(pg_url) as slow:
        _slow(slow)
        cuts: dict[str, list[tuple[Any, ...]]] = {}
        for name, inv in (("fast", fast), ("slow", slow)):
            cuts[name] = []
            first = await inv.acquire(name, odd, max_count=max_count, id_start=3, id_end=390)
            assert first is not None
            await first.success()
            while True:
                sent.clear()
                batches = await inv.acquire_many(
                    name, odd, n, max_count=max_count, id_start=3, id_end=390
                )
                if name == "fast":
                    assert len(sent) == 1 and "BEGIN" not in sent, sent
                if not batches:
                    break
                assert [b.meta_id_start for b in batches] == sorted(
                    b.meta_id_start for b in batches
                )
                assert len({b.token for b in batches}) == len(batches)
                cuts[name] += [(b.meta_id_start, b.meta_id_end, b.count, b.weight) for b in batches]
                assert await inv.settle_many(batches) == []
        assert cuts["fast"] == cuts["slow"]
        ranges = cuts["fast"]
        for (_, end, _, _), (start, _, _, _) in itertools.pairwise(ranges):
            assert start == end + 1
        for start, end, count, weight in ranges:
            assert (count, weight) == await table_totals(pg_url, start, end, where="kind = 'csv'")
        rows = await attempts_of(pg_url, "fast")
        assert len({r["token"] for r in rows}) == len(rows)  # a fresh token per range
        assert all(r["status"] == "succeeded" and r["attempt"] == 1 for r in rows)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "caps",
    [
        {"max_count": 10},
        {"max_weight": 3_000},
        {"max_count": 25, "max_weight": 5_000},
        # ~100 rows a batch: pages of 64 rows and more are read as a head and a tail.
        {"max_weight": 50_000},
    ],
    ids=["count", "weight", "both", "weight-split"],
)
async def test_the_statement_keeps_one_generic_plan(pg_url: str, caps: dict[str, Any]) -> None:
    """PostgreSQL plans it once, not on every lease: the page's limit is written in.

    With ``LIMIT $n`` the server's generic plan assumed a tenth of the table and lost to a
    fresh custom plan on every execution (~0.5 ms of planning per lease).
    """
    await create_meta_table(pg_url, rows=4_000)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(pg_url) as inv:
        for _ in range(20):
            batch = await inv.acquire("plans", files, **caps)
            assert batch is not None
            await batch.success()
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        kept = await store._kept.take()  # the connection the leases ran on
        assert kept is not None
        driver: Any = kept.driver_connection
        found = await driver.fetch(
            "SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH locked AS%'"
        )
        plans = [(int(g), int(c)) for g, c, _ in found]
        split = any("pbi_head" in text for _, _, text in found)
        assert store._kept.keep(kept)
    assert plans, "the one-statement acquire was not prepared on this connection"
    generic = sum(g for g, _ in plans)
    custom = sum(c for _, c in plans)
    # Five custom plans per statement text before the server compares; after that, generic.
    assert generic >= 10 and custom <= 5 * len(plans), plans
    # A weighted page of 64 rows or more is read in two pieces (the job's very first page,
    # sized before any batch, is one of those whatever the cap); a count cap never is.
    if caps == {"max_weight": 50_000}:
        assert split, "the weighted pages were not split"
    if "max_weight" not in caps:
        assert not split


@pytest.fixture
def mysql_url(any_db_url_factory: DatabaseFactory) -> str:
    return any_db_url_factory("mysql")


@pytest.mark.mysql
async def test_a_connection_without_batches_takes_the_transaction(
    mysql_url: str, sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection without ``CLIENT.MULTI_STATEMENTS`` (another driver) gets the same ranges."""
    monkeypatch.setattr(mysql_adapter._AiomysqlSession, "can_batch", False)
    await create_meta_table(mysql_url, rows=50)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(mysql_url) as inv:
        ranges = []
        sent.clear()
        while (batch := await inv.acquire("plain", files, max_count=20)) is not None:
            ranges.append((batch.meta_id_start, batch.meta_id_end))
            await batch.success()
        batches = [sql for sql in sent if "@pybatchintory" in sql or "COMMIT" in sql]
        assert sent and not batches, batches
    assert ranges == [(1, 20), (21, 40), (41, 50)]


@pytest.mark.mysql
async def test_a_batch_that_fails_leaves_nothing_behind(mysql_url: str) -> None:
    """An error inside the batch stops it there; the caller's rollback undoes the rest."""
    await create_meta_table(mysql_url, rows=50)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(mysql_url) as inv:
        first = await inv.acquire("broken", files, max_count=10)
        assert first is not None
        await first.success()
        # The metadata column disappears: the batch's page read fails after the lock.
        await fetch_all(mysql_url, "ALTER TABLE files DROP COLUMN size_in_bytes")
        with pytest.raises(pbi.StoreError):
            await inv.acquire("broken", files, max_count=10)
        rows = await attempts_of(mysql_url, "broken")
        assert [(r["meta_id_start"], r["status"]) for r in rows] == [(1, "succeeded")]
        assert (await inv.status())[0].cursor == 10  # the cursor did not move
        # And the job row is not left locked: another session can take it at once.
        lock = _JobLock(mysql_url)
        await asyncio.wait_for(lock.hold("broken"), timeout=5)
        await lock.release()


@pytest.mark.mysql
async def test_a_transaction_of_reads_only_still_ends(mysql_url: str) -> None:
    """An acquire that only read (nothing left to hand out) commits and lets the row go.

    The server's status flags do not report a transaction of plain ``SELECT``s as open,
    so the session must not ask them whether to commit: a kept connection would hold the
    job's row lock until its next use, and every other worker would wait for it.
    """
    await create_meta_table(mysql_url, rows=30)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(mysql_url) as inv:
        batches = await inv.acquire_many("reads", files, 5, max_count=10)  # the transaction
        assert [b.meta_id_start for b in batches] == [1, 11, 21]
        assert await inv.settle_many(batches) == []
        assert await inv.acquire_many("reads", files, 5, max_count=10) == []  # reads only
        lock = _JobLock(mysql_url)
        await asyncio.wait_for(lock.hold("reads"), timeout=5)
        await lock.release()
