"""Real OS processes on one job: disjoint, gap-free cover; crashes recovered; zombies fenced."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pybatchintory as pbi

from tests.helpers import create_meta_table, fetch_all

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts worker processes and always reaps them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, url: str, job: str, mode: str, max_count: int = 100, ttl: float = 60.0):
        out = self.tmp_path / f"worker-{len(self.procs)}.jsonl"
        out.touch()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.procs", url, job, mode, str(out),
             str(max_count), str(ttl)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc, out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


async def _wait_for_record(out: Path, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = _records(out)
        if records:
            return records[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the worker wrote nothing to {out} in {timeout} s")


async def _ledger(url: str, job: str) -> list[dict[str, object]]:
    return await fetch_all(
        url,
        "SELECT id, meta_id_start, meta_id_end, count, attempt, status, token "
        "FROM inventory WHERE job = :job ORDER BY meta_id_start, attempt",
        job=job,
    )


@pytest.mark.timeout(240)
async def test_six_processes_cover_60k_rows_exactly_once(db_url: str, workers: Workers) -> None:
    rows = 60_000
    await create_meta_table(db_url, rows=rows)
    async with pbi.Inventory(db_url) as inv:  # create the schema once, before the race
        await inv.plan("wide", pbi.MetaTable("files"), max_count=1)
    procs = [workers.start(db_url, "wide", "drain", max_count=700) for _ in range(6)]
    for proc, _ in procs:
        assert proc.wait(timeout=200) == 0, proc.stderr.read().decode() if proc.stderr else ""
    ledger = await _ledger(db_url, "wide")
    assert all(r["status"] == "succeeded" for r in ledger), "an attempt did not succeed"
    assert ledger[0]["meta_id_start"] == 1 and ledger[-1]["meta_id_end"] == rows
    for before, after in itertools.pairwise(ledger):
        assert after["meta_id_start"] == int(before["meta_id_end"]) + 1  # type: ignore[call-overload]
    assert sum(int(r["count"]) for r in ledger) == rows  # type: ignore[call-overload]
    reported = sorted(
        (int(r["start"]), int(r["end"]))  # type: ignore[call-overload]
        for _, out in procs
        for r in _records(out)
    )
    assert reported == [(int(r["meta_id_start"]), int(r["meta_id_end"])) for r in ledger]  # type: ignore[call-overload]
    assert len({r["pid"] for _, out in procs for r in _records(out)}) > 1


async def test_a_killed_worker_s_range_returns_as_attempt_two(
    db_url: str, workers: Workers
) -> None:
    await create_meta_table(db_url, rows=1000)
    proc, out = workers.start(db_url, "crash", "hold", max_count=100, ttl=2.0)
    held = await _wait_for_record(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        other = await inv.acquire("crash", files, max_count=100)
        assert other is not None and other.attempt == 1
        assert other.meta_id_start == held["acquired"][1] + 1  # type: ignore[index]
        await other.success()
        deadline = time.monotonic() + 10
        back = None
        while back is None and time.monotonic() < deadline:
            candidate = await inv.acquire("crash", files, max_count=100)
            if candidate is None:
                await asyncio.sleep(0.2)
            elif [candidate.meta_id_start, candidate.meta_id_end] == held["acquired"]:
                back = candidate
            else:
                # Before the TTL runs out, new ranges keep coming; the lost one must not.
                assert time.monotonic() < deadline
                await candidate.success()
                await asyncio.sleep(0.2)
        assert back is not None, "the killed worker's range never came back"
        assert back.attempt == 2
        await back.success()
    attempts = {int(r["id"]): r for r in await _ledger(db_url, "crash")}  # type: ignore[call-overload]
    assert attempts[int(held["id"])]["status"] == "expired"  # type: ignore[call-overload]


@pytest.mark.parametrize("taken_over", [True, False])
async def test_a_frozen_worker_s_late_success_is_fenced(
    db_url: str, workers: Workers, taken_over: bool
) -> None:
    await create_meta_table(db_url, rows=1000)
    proc, out = workers.start(db_url, "zombie", "late", max_count=100, ttl=2.0)
    held = await _wait_for_record(out)
    os.kill(proc.pid, signal.SIGSTOP)
    await asyncio.sleep(3.5)  # past the TTL by the database clock
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(db_url, lease_ttl=30) as inv:
        takeover = None
        if taken_over:
            takeover = await inv.acquire("zombie", files, max_count=100)
            assert takeover is not None and takeover.attempt == 2
            assert [takeover.meta_id_start, takeover.meta_id_end] == held["acquired"]
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=30) == 0
        settled = _records(out)[-1]
        assert settled["settled"] == "lease lost", settled
        ledger = await _ledger(db_url, "zombie")
        first = next(r for r in ledger if int(r["id"]) == held["id"])  # type: ignore[call-overload]
        assert first["status"] == ("expired" if taken_over else "running")
        if takeover is not None:
            second = next(r for r in ledger if int(r["attempt"]) == 2)  # type: ignore[call-overload]
            assert second["status"] == "running" and second["token"] == takeover.token
            await takeover.success()
        else:
            again = await inv.acquire("zombie", files, max_count=100)
            assert again is not None and again.attempt == 2
            await again.success()
    final = await _ledger(db_url, "zombie")
    assert [r["status"] for r in final] == ["expired", "succeeded"]
