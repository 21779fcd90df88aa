"""Several OS processes on one job get a disjoint, gap-free cover; other jobs never wait.

Workers on one job never receive overlapping ranges and leave no
gap, on every backend, across processes. Different jobs never wait on each other.
"""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table, default_size, holding_job_lock
from tests.integration._harness import (  # noqa: F401 - the `workers` fixture
    WorkerPool,
    go,
    lease_expired,
    ledger,
    workers_fixture,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROWS = 60_000
PROCESSES = 6
FILES = pbi.MetaTable("files", weight="size_in_bytes")


def _weight(start: int, end: int) -> int:
    return sum(default_size(i) for i in range(start, end + 1))


def _assert_exact_cover(ranges: list[dict[str, Any]], first: int, last: int) -> None:
    """Sorted succeeded ranges cover ``first..last`` exactly: no overlap, no gap."""
    assert ranges, "nothing succeeded"
    assert ranges[0]["meta_id_start"] == first, ranges[0]
    assert ranges[-1]["meta_id_end"] == last, ranges[-1]
    for before, after in itertools.pairwise(ranges):
        assert after["meta_id_start"] <= after["meta_id_end"], after
        if after["meta_id_start"] <= before["meta_id_end"]:
            raise AssertionError(f"overlapping succeeded ranges: {before} and {after}")
        if after["meta_id_start"] != before["meta_id_end"] + 1:
            raise AssertionError(f"a gap between succeeded ranges: {before} and {after}")


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"max_count": 700}, id="count"),
        pytest.param({"max_weight": 350_000}, id="weight"),
    ],
)
async def test_six_processes_on_one_job_cover_every_id_exactly_once(
    db_url: str, workers: WorkerPool, tmp_path: Path, limits: dict[str, Any]
) -> None:
    await create_meta_table(db_url, rows=ROWS)
    start_file = tmp_path / "go"
    procs = [
        workers.start(db_url, "shared", go=start_file, lease_ttl=30, pause=0.02, **limits)
        for _ in range(PROCESSES)
    ]
    await workers.wait_all_ready(procs)  # every process has opened the inventory
    opened = go(start_file)
    for worker in procs:
        rc = await worker.wait_exit(timeout=120)
        assert rc == 0, worker.describe()
    elapsed = time.monotonic() - opened

    attempts = await ledger(db_url, "shared")
    statuses = sorted({a["status"] for a in attempts})
    assert statuses == ["succeeded"], (
        f"every attempt of an undisturbed run must succeed, found {statuses}: "
        f"{[a for a in attempts if a['status'] != 'succeeded'][:5]}"
    )
    assert all(a["attempt"] == 1 for a in attempts), "an undisturbed run retried a range"
    succeeded = [a for a in attempts if a["status"] == "succeeded"]
    _assert_exact_cover(succeeded, 1, ROWS)
    assert sum(a["count"] for a in succeeded) == ROWS

    for a in succeeded:
        # Ids are dense, so count = width; the weight is the metadata's own sum.
        assert a["count"] == a["meta_id_end"] - a["meta_id_start"] + 1, a
        assert a["weight"] == _weight(a["meta_id_start"], a["meta_id_end"]), a
        assert not a["oversized"], a
        if "max_count" in limits:
            assert a["count"] <= limits["max_count"], a
        if "max_weight" in limits:
            assert a["weight"] <= limits["max_weight"], a
    # Caps are met, not undershot: every range but the last one is full up to the cap.
    for a in succeeded[:-1]:
        if "max_count" in limits:
            assert a["count"] == limits["max_count"], a
        else:
            next_row = default_size(a["meta_id_end"] + 1)
            assert a["weight"] + next_row > limits["max_weight"], a

    # What the workers saw agrees with the ledger, line by line.
    lines = [(w.pid, r) for w in procs for r in w.ranges()]
    assert len(lines) == len(succeeded), "a worker reported a range the ledger does not show"
    by_id = {a["id"]: a for a in succeeded}
    for pid, line in lines:
        row = by_id.get(line["id"])
        assert row is not None, f"pid {pid} reported attempt {line} that is not succeeded"
        assert (line["start"], line["end"], line["count"], line["weight"], line["attempt"]) == (
            row["meta_id_start"],
            row["meta_id_end"],
            row["count"],
            row["weight"],
            row["attempt"],
        )
        assert line["pid"] == pid
        assert (line["items"], line["first"], line["last"]) == (
            row["count"],
            row["meta_id_start"],
            row["meta_id_end"],
        ), "items() disagrees with the leased range"
        assert line["item_weight"] == row["weight"]
    per_pid = {w.pid: len(w.ranges()) for w in procs}
    assert sum(1 for n in per_pid.values() if n) >= 2, f"no real concurrency: {per_pid}"
    for worker in procs:
        done = [r for r in worker.records() if "done" in r]
        assert done == [{"done": len(worker.ranges()), "pid": worker.pid}], worker.describe()
    print(f"{len(succeeded)} ranges by {per_pid} in {elapsed:.1f} s")


async def test_a_held_lease_of_one_job_does_not_slow_another_job(
    db_url: str, backend: str, workers: WorkerPool, tmp_path: Path
) -> None:
    await create_meta_table(db_url, rows=5000)
    holder = workers.start(db_url, "job_a", mode="hold", max_count=100, lease_ttl=3)
    held = await holder.wait_for(lambda r: "acquired" in r, timeout=60)

    start_file = tmp_path / "go-b"
    runner = workers.start(
        db_url, "job_b", go=start_file, max_count=100, id_start=1, id_end=2000, pause=0.01
    )
    await runner.wait_for(lambda r: "ready" in r, timeout=60)
    opened = go(start_file)
    rc = await runner.wait_exit(timeout=60)
    took = time.monotonic() - opened
    assert rc == 0, runner.describe()
    assert took < 10, f"job B needed {took:.1f} s for 20 batches next to a held lease of job A"

    b = await ledger(db_url, "job_b")
    assert [(a["meta_id_start"], a["meta_id_end"], a["status"]) for a in b] == [
        (start, start + 99, "succeeded") for start in range(1, 2001, 100)
    ]
    assert len(runner.ranges()) == 20

    # Job A's lease is untouched: still running, same token, still live by the database
    # clock (its own heartbeat renews it every second; the TTL is 3 s).
    assert holder.proc.poll() is None, holder.describe()
    a = await ledger(db_url, "job_a")
    assert [(r["id"], r["status"], r["token"]) for r in a] == [
        (held["id"], "running", held["token"])
    ]
    assert not await lease_expired(db_url, backend, held["id"])
    holder.signal(signal.SIGKILL)


async def test_a_locked_job_row_does_not_block_another_job(
    db_url: str, backend: str, workers: WorkerPool, tmp_path: Path
) -> None:
    """The stronger form: job A's row is locked by an open transaction, as an acquire does.

    A worker of job A must wait for the lock (proof that the lock is real), while a worker
    of job B runs 20 batches to completion.
    """
    if backend == "sqlite":
        pytest.skip("SQLite serialises every writer by design (BEGIN IMMEDIATE): no row locks")
    await create_meta_table(db_url, rows=5000)
    async with pbi.Inventory(db_url) as inv:  # record both jobs and the schema
        async with inv.lease("job_a", FILES, max_count=100):
            pass
        async with inv.lease("job_b", FILES, max_count=100, id_start=1, id_end=2000):
            pass

    start_file = tmp_path / "go"
    blocked = workers.start(db_url, "job_a", go=start_file, max_count=100, max_batches=1)
    runner = workers.start(
        db_url, "job_b", go=start_file, max_count=100, id_start=1, id_end=2000, pause=0.01
    )
    await workers.wait_all_ready([blocked, runner])

    async with holding_job_lock(db_url, backend, "job_a"):
        opened = go(start_file)
        rc = await runner.wait_exit(timeout=30)
        took = time.monotonic() - opened
        assert rc == 0, runner.describe()
        assert took < 10, f"job B needed {took:.1f} s while job A's row was locked"
        assert blocked.proc.poll() is None and blocked.ranges() == [], (
            "job A's worker got a batch while its job row was locked: "
            f"the lock test proves nothing\n{blocked.describe()}"
        )
    rc = await blocked.wait_exit(timeout=30)
    assert rc == 0, blocked.describe()

    assert len(blocked.ranges()) == 1
    b = await ledger(db_url, "job_b")
    assert len(b) == 20 and {r["status"] for r in b} == {"succeeded"}
    assert len(runner.ranges()) == 19  # the 20th was leased above, before the lock
