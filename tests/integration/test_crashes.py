"""Crashed and frozen workers: leases expire by the database clock, late settles are fenced.

The lease (docs/architecture.md): token per attempt, expiry from the database clock; every
settle is fenced, a settle on a lost lease raises ``LeaseLost`` and changes nothing. In the
acquire order, expired leases are closed as ``expired`` and their range is retried first, as
a new attempt.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table
from tests.integration._harness import (  # noqa: F401 - the `workers` fixture
    WorkerPool,
    lease_expired,
    ledger,
    wait_lease_expired,
    workers_fixture,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FILES = pbi.MetaTable("files", weight="size_in_bytes")
TTL = 2.0


def _acquired(record: dict[str, Any]) -> bool:
    return "acquired" in record


def _by_id(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in rows}


async def test_a_sigkilled_worker_s_range_comes_back_as_attempt_two_after_the_ttl(
    db_url: str, backend: str, workers: WorkerPool
) -> None:
    await create_meta_table(db_url, rows=1000)
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        await inv.open()  # ready before the kill, so the first acquire below is immediate
        worker = workers.start(db_url, "killed", mode="hold", max_count=100, lease_ttl=TTL)
        held = await worker.wait_for(_acquired, timeout=60)
        worker.signal(signal.SIGKILL)
        assert await worker.wait_exit(timeout=10) == -signal.SIGKILL
        assert held["acquired"] == [1, 100] and held["attempt"] == 1

        # Immediately: the killed worker's lease is still live, so a new range comes.
        assert not await lease_expired(db_url, backend, held["id"]), "too slow: lease ran out"
        fresh = await inv.acquire("killed", FILES, max_count=100)
        assert fresh is not None
        assert (fresh.meta_id_start, fresh.meta_id_end, fresh.attempt) == (101, 200, 1)
        row = _by_id(await ledger(db_url, "killed"))[held["id"]]
        assert (row["status"], row["token"]) == ("running", held["token"])

        # Past the TTL (database clock): the same range, as attempt 2, before anything new.
        await wait_lease_expired(db_url, backend, held["id"], timeout=8)
        back = await inv.acquire("killed", FILES, max_count=100)
        assert back is not None
        assert (back.meta_id_start, back.meta_id_end, back.attempt) == (1, 100, 2)
        assert back.id != held["id"] and back.token != held["token"]
        assert back.count == 100

        attempts = _by_id(await ledger(db_url, "killed"))
        assert attempts[held["id"]]["status"] == "expired"
        assert attempts[back.id]["status"] == "running"
        assert attempts[back.id]["owner"] == inv.owner
        await back.success()
        await fresh.success()

    final = [
        (a["meta_id_start"], a["attempt"], a["status"]) for a in await ledger(db_url, "killed")
    ]
    assert final == [(1, 1, "expired"), (1, 2, "succeeded"), (101, 1, "succeeded")]


async def test_a_frozen_worker_loses_its_lease_to_a_takeover(
    db_url: str, backend: str, workers: WorkerPool
) -> None:
    await create_meta_table(db_url, rows=1000)
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        await inv.open()
        worker = workers.start(
            db_url,
            "frozen",
            mode="hold-then-succeed",
            max_count=100,
            lease_ttl=TTL,
            body_sleep=1.5,
        )
        held = await worker.wait_for(_acquired, timeout=60)
        worker.signal(signal.SIGSTOP)
        assert held["acquired"] == [1, 100]

        await wait_lease_expired(db_url, backend, held["id"], timeout=8)
        takeover = await inv.acquire("frozen", FILES, max_count=100)
        assert takeover is not None
        assert (takeover.meta_id_start, takeover.meta_id_end, takeover.attempt) == (1, 100, 2)

        worker.signal(signal.SIGCONT)
        assert await worker.wait_exit(timeout=30) == 0, worker.describe()
        records = worker.records()
        outcome = [r for r in records if "success" in r]
        assert outcome and outcome[0]["success"] == "LeaseLost", (
            f"the frozen worker's success() did not raise LeaseLost:\n{worker.describe()}"
        )

        attempts = _by_id(await ledger(db_url, "frozen"))
        assert attempts[held["id"]]["status"] == "expired", attempts
        assert attempts[takeover.id]["status"] == "running"
        assert attempts[takeover.id]["token"] == takeover.token
        assert not any(a["status"] == "succeeded" for a in attempts.values())

        await takeover.success()

    final = [(a["attempt"], a["status"]) for a in await ledger(db_url, "frozen")]
    assert final == [(1, "expired"), (2, "succeeded")]


async def test_a_frozen_worker_loses_its_lease_by_the_database_clock_alone(
    db_url: str, backend: str, workers: WorkerPool
) -> None:
    """Nobody takes the range over: the settle is still refused once the TTL has passed."""
    await create_meta_table(db_url, rows=1000)
    worker = workers.start(
        db_url, "lonely", mode="hold-then-succeed", max_count=100, lease_ttl=TTL, body_sleep=1.5
    )
    held = await worker.wait_for(_acquired, timeout=60)
    worker.signal(signal.SIGSTOP)

    await wait_lease_expired(db_url, backend, held["id"], timeout=8)
    worker.signal(signal.SIGCONT)
    assert await worker.wait_exit(timeout=30) == 0, worker.describe()
    outcome = [r for r in worker.records() if "success" in r]
    assert outcome and outcome[0]["success"] == "LeaseLost", (
        f"a success() after the lease ran out was accepted:\n{worker.describe()}"
    )

    # "A settle on a lost lease raises LeaseLost and changes nothing."
    (row,) = await ledger(db_url, "lonely")
    assert (row["id"], row["status"], row["token"]) == (held["id"], "running", held["token"])
    assert await lease_expired(db_url, backend, held["id"]), "the heartbeat revived the lease"

    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        again = await inv.acquire("lonely", FILES, max_count=100)
        assert again is not None
        assert (again.meta_id_start, again.meta_id_end, again.attempt) == (1, 100, 2)
        await again.success()

    final = [(a["attempt"], a["status"]) for a in await ledger(db_url, "lonely")]
    assert final == [(1, "expired"), (2, "succeeded")]
