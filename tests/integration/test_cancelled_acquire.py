"""An acquire cancelled while its transaction runs gives back what it granted.

Seen in the soak (a worker task cancelled during ``acquire``): the transaction committed,
the caller never saw the grant, and the attempt stayed ``running`` until its lease ran out,
then counted as a failed attempt although nothing had failed. The transaction now finishes
shielded from the cancellation (a driver interrupted between a statement and its reply
can leave its connection in an unknown state) and its grants are released at once.
"""

from __future__ import annotations

import asyncio

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table, fetch_all, holding_job_lock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")


async def test_a_cancelled_acquire_releases_its_grant(db_url: str, backend: str) -> None:
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        first = await inv.acquire("cancelled", FILES, max_count=10)
        assert first is not None
        await first.success()
        async with holding_job_lock(db_url, backend, "cancelled"):
            waiting = asyncio.get_running_loop().create_task(
                inv.acquire("cancelled", FILES, max_count=10)
            )
            await asyncio.sleep(0.5)  # the acquire waits for the job lock
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        for _ in range(100):
            rows = await fetch_all(
                db_url, "SELECT status FROM inventory WHERE meta_id_start = 11 ORDER BY id"
            )
            if rows and rows[-1]["status"] != "running":
                break
            await asyncio.sleep(0.05)
        assert [r["status"] for r in rows] == ["released"]
        again = await inv.acquire("cancelled", FILES, max_count=10)
        assert again is not None
        assert (again.meta_id_start, again.attempt) == (11, 2)  # released: no failure counted
        await again.success()
