"""A lease that ran out reads as expired at once, in every read (issue 13, bug 2).

Only an acquire of the job writes an expiry. Before, a lease whose worker died counted as
running in ``backlog()`` and ``status()`` until then, and its rows were missing from
``backlog().count``. Every read now sees the ledger as the next acquire would leave it.
"""

from __future__ import annotations

from typing import Any

import pybatchintory as pbi

from tests.contract._ledger import attempt_row, expire_lease
from tests.contract.conftest import MakeFiles


async def _leave_two_leases_run_out(
    inv: pbi.Inventory, files: pbi.MetaTable
) -> tuple[pbi.Batch, pbi.Batch, pbi.Batch]:
    """Three ranges of 10 rows: one lease runs out with an attempt left, one on its last
    attempt (max_attempts=2), one still held. Returns them in that order."""
    first, second = await inv.acquire_many("expiry", files, 2, max_count=10)
    await second.error(RuntimeError("attempt 1 of 2"))
    last = await inv.acquire("expiry", files, max_count=10)
    assert last is not None and (last.meta_id_start, last.attempt) == (11, 2)
    held = await inv.acquire("expiry", files, max_count=10)
    assert held is not None and held.meta_id_start == 21
    return first, last, held


def _reads_of(attempts: list[pbi.Attempt]) -> list[tuple[Any, ...]]:
    return [(a.id, a.status, a.dead, a.error_type) for a in attempts]


async def test_every_read_sees_a_lease_that_ran_out_as_expired_at_once(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, lease_ttl=30, max_attempts=2) as inv:
        first, last, held = await _leave_two_leases_run_out(inv, files)
        for batch in (first, last):
            await expire_lease(db_url, batch.id)
        # Nothing acquired since: the ledger still says running.
        assert (await attempt_row(db_url, first.id))["status"] == "running"

        backlog = await inv.backlog("expiry")
        assert (backlog.running, backlog.retry_due, backlog.dead) == (1, 1, 1)
        assert backlog.count == 10  # the first range's rows are due again
        (line,) = await inv.status()
        assert dict(line.counts) == {"running": 1, "retry": 1, "dead": 1}
        assert [a.id for a in await inv.batches("expiry", "running")] == [held.id]
        expired = await inv.batches("expiry", pbi.Status.EXPIRED)
        assert sorted(a.id for a in expired) == sorted([first.id, last.id])
        seen = {a.id: a for a in await inv.batches("expiry")}
        assert seen[first.id].status == pbi.Status.EXPIRED
        assert not seen[first.id].dead and seen[first.id].retry_after is not None
        assert seen[first.id].error_type == "LeaseExpired"
        assert seen[last.id].dead and seen[last.id].retry_after is None
        assert seen[held.id].status == pbi.Status.RUNNING
        (covering,) = await inv.history(files, 5)
        assert covering.status == pbi.Status.EXPIRED
        before = (
            _reads_of(await inv.batches("expiry")),
            _reads_of(await inv.history(files, 15)),
            backlog,
            dict(line.counts),
        )

        # The next acquire writes the expiries (and retries the first range, released
        # again here): the reads do not change.
        retried = await inv.acquire("expiry", files, max_count=10)
        assert retried is not None and retried.meta_id_start == 1
        await retried.release()
        assert (await attempt_row(db_url, first.id))["status"] == "expired"
        (line,) = await inv.status()
        after = (
            _reads_of([a for a in await inv.batches("expiry") if a.id != retried.id]),
            _reads_of(await inv.history(files, 15)),
            await inv.backlog("expiry"),
            dict(line.counts),
        )
        assert after == before


async def test_retry_revives_a_range_whose_last_lease_ran_out(
    db_url: str, make_files: MakeFiles
) -> None:
    files = await make_files(rows=30)
    async with pbi.Inventory(db_url, lease_ttl=30, max_attempts=2) as inv:
        first, last, held = await _leave_two_leases_run_out(inv, files)
        await first.success()
        await expire_lease(db_url, last.id)
        assert (await inv.backlog("expiry")).dead == 1
        assert await inv.retry("expiry") == 1
        backlog = await inv.backlog("expiry")
        assert (backlog.dead, backlog.retry_due, backlog.running) == (0, 1, 1)
        revived = await inv.acquire("expiry", files, max_count=10)
        assert revived is not None and revived.meta_id_start == 11
        await revived.success()
        await held.success()
