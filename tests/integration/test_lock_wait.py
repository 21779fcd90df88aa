"""A lease granted after waiting for the job lock lives its full TTL (found by the soak).

The acquire's clock used to be read in the statement that locks the job row. MySQL's
``UTC_TIMESTAMP`` is the time that statement started, and PostgreSQL evaluated it before
waiting for the lock, so a worker that waited longer than the TTL behind another one (a
frozen worker, a slow planner) was handed a lease that had already expired: its settle
was fenced, and the attempt counted as a failure although nothing failed.
"""

from __future__ import annotations

import asyncio

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table, holding_job_lock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")
TTL = 1.5
HOLD = 2.5  # longer than the TTL


async def test_a_lease_granted_after_a_lock_wait_is_not_born_expired(
    db_url: str, backend: str
) -> None:
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url, lease_ttl=TTL) as inv:
        first = await inv.acquire("waits", FILES, max_count=10)
        assert first is not None
        await first.success()
        async with holding_job_lock(db_url, backend, "waits"):
            waiting = asyncio.get_running_loop().create_task(
                inv.acquire("waits", FILES, max_count=10)
            )
            await asyncio.sleep(HOLD)
            assert not waiting.done(), "the acquire did not wait for the job lock"
        batch = await waiting
        assert batch is not None
        await batch.success()  # raised LeaseLost: the lease had expired before it was handed out
        assert batch.status == pbi.Status.SUCCEEDED
