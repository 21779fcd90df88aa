"""examples/asyncio_service.py, run as a real program and stopped with real signals.

After a SIGTERM the batches in hand are finished and recorded, the program exits 0, and
nothing is left ``running``; after a double SIGINT they are ``released`` instead. Run
again, the service goes on where it stopped and every id ends up covered exactly once by
a succeeded attempt.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import anyio
import pytest

from tests.contract._ledger import wait_until
from tests.helpers import create_meta_table, fetch_all

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = 200
JOB = "thumbnails"


async def _start(url: str, seconds_per_batch: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.asyncio_service",
        url,
        "--seconds-per-batch",
        str(seconds_per_batch),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    with anyio.fail_after(30):
        line = await process.stdout.readline()
    assert line.startswith(b"consuming"), line
    return process


async def _statuses(url: str) -> dict[str, int]:
    rows = await fetch_all(
        url, "SELECT status, COUNT(*) AS n FROM inventory WHERE job = :job GROUP BY status", job=JOB
    )
    return {str(r["status"]): int(r["n"]) for r in rows}


async def _wait_for(url: str, status: str, at_least: int) -> None:
    async def reached() -> bool:
        return (await _statuses(url)).get(status, 0) >= at_least

    await wait_until(reached, deadline=60, every=0.05)


async def _stop(process: asyncio.subprocess.Process, *signals: signal.Signals) -> bytes:
    for signum in signals:
        process.send_signal(signum)
    with anyio.fail_after(30):
        out, _ = await process.communicate()
    return out


async def _covered_once(url: str) -> list[int]:
    rows = await fetch_all(
        url,
        "SELECT meta_id_start, meta_id_end FROM inventory "
        "WHERE job = :job AND status = 'succeeded' ORDER BY meta_id_start",
        job=JOB,
    )
    ids: list[int] = []
    for row in rows:
        ids.extend(range(int(row["meta_id_start"]), int(row["meta_id_end"]) + 1))
    return ids


async def test_sigterm_finishes_the_batches_in_hand_and_a_restart_goes_on(db_url: str) -> None:
    await create_meta_table(db_url, rows=ROWS)
    process = await _start(db_url, seconds_per_batch=0.3)
    await _wait_for(db_url, "succeeded", 2)
    out = await _stop(process, signal.SIGTERM)
    assert process.returncode == 0, out
    report = json.loads(out.splitlines()[-1])
    after_stop = await _statuses(db_url)
    assert "running" not in after_stop and "released" not in after_stop, after_stop
    assert after_stop["succeeded"] == report["succeeded"] < ROWS // 10

    process = await _start(db_url, seconds_per_batch=0.01)
    await _wait_for(db_url, "succeeded", ROWS // 10)
    out = await _stop(process, signal.SIGTERM)
    assert process.returncode == 0, out
    assert await _covered_once(db_url) == list(range(1, ROWS + 1))
    assert set(await _statuses(db_url)) == {"succeeded"}


async def test_a_second_sigint_releases_the_batches_in_hand(db_url: str) -> None:
    await create_meta_table(db_url, rows=ROWS)
    process = await _start(db_url, seconds_per_batch=2.0)
    await _wait_for(db_url, "running", 2)
    process.send_signal(signal.SIGINT)
    await asyncio.sleep(0.2)
    await _stop(process, signal.SIGINT)
    assert process.returncode == -signal.SIGINT  # ended as an interrupted Python does
    statuses = await _statuses(db_url)
    assert statuses == {"released": 2}, statuses
