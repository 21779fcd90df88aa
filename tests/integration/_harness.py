"""Worker processes for the integration tests: start, watch, signal, and always reap.

``WorkerPool`` starts ``worker.py`` with the test's interpreter; every worker writes JSON
lines to its own file under ``tmp_path`` and its stdout/stderr to a log file next to it (no
pipes, so a chatty worker can never block). ``close()`` SIGCONTs and SIGKILLs whatever is
still running and waits for it: only the pool's own children, by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fetch_all
from tests.processes import reap, spawn

WORKER = Path(__file__).resolve().with_name("worker.py")


@dataclass
class Worker:
    """One worker process and its files."""

    proc: subprocess.Popen[bytes]
    out: Path
    log: Path
    args: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def ranges(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "start" in r]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def describe(self) -> str:
        return (
            f"worker pid {self.pid} (rc={self.proc.poll()}) args={self.args}\n"
            f"--- records ---\n{self.records()}\n--- log ---\n{self.log_text()}"
        )

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first record matching ``predicate``; fails if the worker dies or times out."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if predicate(record):
                    return record
            if self.proc.poll() is not None:
                # One last look: the record may have landed just before the exit.
                for record in self.records():
                    if predicate(record):
                        return record
                raise AssertionError(f"the worker exited first:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching record within {timeout} s:\n{self.describe()}")
            await asyncio.sleep(0.02)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait (without blocking the event loop) for the exit status."""
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the worker is still running after {timeout} s:\n{self.describe()}"
                )
            await asyncio.sleep(0.02)
        return rc

    def signal(self, signum: int) -> None:
        assert self.proc.poll() is None, f"the worker already exited:\n{self.describe()}"
        os.kill(self.proc.pid, signum)


@dataclass
class WorkerPool:
    """Starts workers under ``tmp_path`` and reaps them all in ``close()``."""

    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self, url: str, job: str, *, script: Path = WORKER, **options: Any) -> Worker:
        n = len(self.workers)
        out = self.tmp_path / f"worker-{n}.jsonl"
        log = self.tmp_path / f"worker-{n}.log"
        extra_env = options.pop("env", None) or {}
        args = ["--url", url, "--job", job, "--out", str(out)]
        for key, value in options.items():
            if value is None:
                continue
            args += [f"--{key.replace('_', '-')}", str(value)]
        proc = spawn(script, args, log, extra_env)
        worker = Worker(proc=proc, out=out, log=log, args=args)
        self.workers.append(worker)
        return worker

    async def wait_all_ready(self, workers: Sequence[Worker], timeout: float = 60.0) -> None:
        for worker in workers:
            await worker.wait_for(lambda r: "ready" in r, timeout=timeout)

    def close(self) -> None:
        reap(worker.proc for worker in self.workers)


@pytest.fixture(name="workers")
def workers_fixture(tmp_path: Path) -> Iterator[WorkerPool]:
    """A pool of worker processes, all reaped at teardown."""
    pool = WorkerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def go(path: Path) -> float:
    """Open the start barrier; returns the monotonic time it was opened."""
    path.write_text("go")
    return time.monotonic()


async def ledger(url: str, job: str) -> list[dict[str, Any]]:
    """Every attempt of ``job``, by range and attempt."""
    rows = await fetch_all(
        url,
        "SELECT id, meta_id_start, meta_id_end, count, weight, attempt, status, token, owner, "
        "oversized, error_type, fingerprint FROM inventory WHERE job = :job "
        "ORDER BY meta_id_start, attempt, id",
        job=job,
    )
    for row in rows:
        for key in ("id", "meta_id_start", "meta_id_end", "count", "weight", "attempt"):
            row[key] = int(row[key])
    return rows


_NOW_SQL = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
    "postgres": "(clock_timestamp() AT TIME ZONE 'UTC')",
    "mysql": "UTC_TIMESTAMP(6)",
}


async def lease_expired(url: str, backend: str, attempt_id: int) -> bool:
    """Whether the attempt's lease ran out by the *database* clock."""
    rows = await fetch_all(
        url,
        f"SELECT COUNT(*) AS n FROM inventory WHERE id = :id AND expires_at < {_NOW_SQL[backend]}",
        id=attempt_id,
    )
    return int(rows[0]["n"]) == 1


async def wait_lease_expired(
    url: str, backend: str, attempt_id: int, timeout: float = 8.0
) -> float:
    """Poll until the lease ran out by the database clock; returns the seconds waited."""
    started = time.monotonic()
    while not await lease_expired(url, backend, attempt_id):
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"the lease of attempt {attempt_id} did not run out within {timeout} s"
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - started
