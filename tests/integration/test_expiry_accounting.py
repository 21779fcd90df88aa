"""An expired attempt that leaves attempts is due again, not dead (found by the soak).

MySQL evaluates an UPDATE's assignments left to right, each seeing the columns assigned
before it. The expiry incremented ``failures`` before computing ``dead`` and
``retry_after`` from it, so on MySQL/MariaDB an expiry one short of ``max_attempts``
left the range both due for a retry and dead: it was retried, and when an operator
revived the "dead" range it was handed out a second time: two succeeded attempts, the
same ids processed twice.
"""

from __future__ import annotations

from datetime import datetime

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table, fetch_all

pytestmark = [pytest.mark.timeout(60)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")


async def test_an_expiry_short_of_max_attempts_leaves_the_range_due_not_dead(
    db_url: str,
) -> None:
    await create_meta_table(db_url, rows=100)
    async with pbi.Inventory(db_url, lease_ttl=30, max_attempts=3) as inv:
        first = await inv.acquire("expiry", FILES, max_count=10)
        assert first is not None
        await first.error(RuntimeError("failure 1 of 3"))
        second = await inv.acquire("expiry", FILES, max_count=10)
        assert second is not None and second.attempt == 2
        # The worker holding attempt 2 vanished: its lease is over (failure 2 of 3).
        await fetch_all(
            db_url,
            "UPDATE inventory SET expires_at = :past WHERE id = :id",
            past=datetime(2000, 1, 1),
            id=second.id,
        )
        third = await inv.acquire("expiry", FILES, max_count=10)
        assert third is not None
        assert (third.meta_id_start, third.attempt) == (1, 3)
        rows = await fetch_all(
            db_url, "SELECT failures, dead, retry_after FROM inventory WHERE id = :id", id=second.id
        )
        assert int(rows[0]["failures"]) == 2
        assert not rows[0]["dead"], "an expiry with an attempt left marked the range dead"
        assert await inv.retry("expiry") == 0  # nothing dead to revive
        fourth = await inv.acquire("expiry", FILES, max_count=10)
        assert fourth is not None
        assert fourth.meta_id_start == 11, "the range was handed out twice"
        await third.success()
        await fourth.success()
    succeeded = await fetch_all(
        db_url, "SELECT meta_id_start FROM inventory WHERE status = 'succeeded' ORDER BY id"
    )
    assert [int(r["meta_id_start"]) for r in succeeded] == [1, 11]
