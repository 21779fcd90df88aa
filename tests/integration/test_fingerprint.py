"""Failure fingerprints are stable across OS processes (the exit policy).

"Exception -> failed with type, message, bounded traceback, a stable fingerprint (hash of
normalised frames, equal across processes)". The same failure is raised by separate worker
processes (other pids, other hash seeds, so other messages) on one SQLite file; the ledger
must show one fingerprint for them, and another one for a failure raised elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table
from tests.integration._harness import (  # noqa: F401 - the `workers` fixture
    WORKER,
    WorkerPool,
    ledger,
    workers_fixture,
)

pytestmark = [pytest.mark.slow, pytest.mark.sqlite, pytest.mark.timeout(90)]


async def _fail_once(
    pool: WorkerPool, url: str, mode: str, seed: str, script: Path = WORKER
) -> dict[str, Any]:
    worker = pool.start(
        url, "fp", script=script, mode=mode, max_count=10, env={"PYTHONHASHSEED": seed}
    )
    assert await worker.wait_exit(timeout=60) == 0, worker.describe()
    (record,) = [r for r in worker.records() if "failed" in r]
    assert str(worker.pid) in record["message"]
    return record


async def test_the_same_failure_in_two_processes_has_one_fingerprint(
    tmp_path: Path, workers: WorkerPool
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fingerprint.db'}"
    await create_meta_table(url, rows=100)

    first = await _fail_once(workers, url, "fail", "1")
    second = await _fail_once(workers, url, "fail", "2")
    other = await _fail_once(workers, url, "fail-elsewhere", "3")
    assert first["message"] != second["message"]  # messages differ, frames do not

    attempts = {a["id"]: a for a in await ledger(url, "fp")}
    a, b, c = attempts[first["failed"]], attempts[second["failed"]], attempts[other["failed"]]
    # One range, retried: attempts 1, 2, 3 of [1, 10], all failed with a ValueError.
    assert [(x["meta_id_start"], x["meta_id_end"], x["attempt"]) for x in (a, b, c)] == [
        (1, 10, 1),
        (1, 10, 2),
        (1, 10, 3),
    ]
    assert {x["status"] for x in (a, b, c)} == {"failed"}
    assert {x["error_type"] for x in (a, b, c)} == {"ValueError"}
    assert a["fingerprint"] and len(a["fingerprint"]) >= 16
    assert a["fingerprint"] == b["fingerprint"], "one failure, two fingerprints across processes"
    assert c["fingerprint"] != a["fingerprint"], "a failure raised elsewhere shares the fingerprint"

    async with pbi.Inventory(url) as inv:
        groups = {g.fingerprint: g for g in await inv.errors("fp")}
    assert set(groups) == {a["fingerprint"], c["fingerprint"]}
    assert groups[a["fingerprint"]].count == 2
    assert sorted(groups[a["fingerprint"]].attempt_ids) == sorted([a["id"], b["id"]])
    assert groups[c["fingerprint"]].count == 1


async def test_the_same_failure_from_another_checkout_has_the_same_fingerprint(
    tmp_path: Path, workers: WorkerPool
) -> None:
    """Directories are normalised away: a copy of the code elsewhere hashes the same."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fingerprint.db'}"
    await create_meta_table(url, rows=100)
    checkout = tmp_path / "another" / "checkout"
    checkout.mkdir(parents=True)
    copy = checkout / "worker.py"
    shutil.copy(WORKER, copy)

    here = await _fail_once(workers, url, "fail", "1")
    there = await _fail_once(workers, url, "fail", "2", script=copy)
    attempts = {a["id"]: a for a in await ledger(url, "fp")}
    assert attempts[here["failed"]]["fingerprint"] == attempts[there["failed"]]["fingerprint"]
