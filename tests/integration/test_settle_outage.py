"""A settle rides out a database outage shorter than the lease (found by the soak).

A settle that met a dropped or refused connection used to fail at once (after the store's
sub-second retries), and the batch stayed in the ``Inventory``'s held leases: its heartbeat
renewed a lease nobody would ever settle, so the range stayed ``running`` for as long as
the worker process lived. Now the settle is retried while the lease lasts, and a settle
that still fails stops being renewed, so the lease runs out and the range comes back.

The outage is one database's, not the server's (``ALLOW_CONNECTIONS false`` and its
connections dropped): other tests share the server.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import make_url

import pybatchintory as pbi

from tests.conftest import _pg_execute
from tests.helpers import create_meta_table, fetch_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")


async def _outage(url: str) -> None:
    name = make_url(url).database
    await _pg_execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    await _pg_execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )


async def _back(url: str, after: float) -> None:
    await asyncio.sleep(after)
    await _pg_execute(f'ALTER DATABASE "{make_url(url).database}" WITH ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_settle_waits_out_an_outage_shorter_than_the_lease(db_url: str) -> None:
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url, lease_ttl=6) as inv:
        async with inv.lease("outage", FILES, max_count=10) as batch:
            await _outage(db_url)
            back = asyncio.get_running_loop().create_task(_back(db_url, 1.5))
        await back
        assert batch.status == pbi.Status.SUCCEEDED
    rows = await fetch_all(db_url, "SELECT status, attempt FROM inventory")
    assert rows == [{"status": "succeeded", "attempt": 1}]


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_settle_that_outlives_the_lease_lets_the_range_come_back(db_url: str) -> None:
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url, lease_ttl=1.5) as inv:
        with pytest.raises(pbi.StoreError):
            async with inv.lease("outage", FILES, max_count=10):
                await _outage(db_url)
        await _back(db_url, 0.0)
        # No heartbeat keeps the unsettled lease alive: it runs out, and the range is
        # handed out again, as attempt 2, before anything new.
        await asyncio.sleep(2.0)
        again = await inv.acquire("outage", FILES, max_count=10)
        assert again is not None
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 10, 2)
        await again.success()
    rows = await fetch_all(db_url, "SELECT status, attempt FROM inventory ORDER BY id")
    assert rows == [
        {"status": "expired", "attempt": 1},
        {"status": "succeeded", "attempt": 2},
    ]


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_leases_go_on_after_every_pooled_connection_died(db_url: str) -> None:
    # As after a server restart: the pool holds only dead connections. The first
    # statement of an acquire (BEGIN) fails on each; none may go back to the pool.
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url) as inv:
        held = await inv.acquire_many("restart", FILES, 4, max_count=5)
        for batch in held:
            await batch.success()
        name = make_url(db_url).database
        await _pg_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        for n in range(6):
            async with inv.lease("restart", FILES, max_count=5) as batch:
                assert batch.meta_id_start == 21 + 5 * n
    rows = await fetch_all(db_url, "SELECT count(*) AS n FROM inventory WHERE status = 'succeeded'")
    assert rows == [{"n": 10}]
