"""The soak controller: workers, a growing table, an operator, faults, drain, check.

One run: create the metadata table, start ``config.workers`` worker processes, and for
``config.seconds`` grow the table, revive dead ranges like an operator would
(``inv.retry``), and inject the plan's faults (SIGKILL mid-lease with a replacement
worker, SIGSTOP past the TTL then SIGCONT, dropped connections, a PostgreSQL restart).
Then calm down, drain, stop the workers, and check the ledger with plain SQL.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

import pybatchintory as pbi
from pybatchintory._registry import adapter_for

from tests.helpers import create_meta_table, default_size, meta_table
from tests.soak._checker import check_ledger
from tests.soak._faults import ConnectionKiller
from tests.soak._inject import Injector
from tests.soak._plan import Plan, SoakConfig, make_plan
from tests.soak._pool import SoakPool
from tests.soak._report import Report
from tests.soak.soak_worker import is_broken, is_unfixable

__all__ = ("Report", "run_soak")

HEAVY = 60_000  # heavier than every job's weight cap: handed out alone, oversized
MAX_ATTEMPTS = 3
BROKEN_PERMILLE = 15
DRAIN_TIMEOUT = 60.0
_OPS = (
    "acquired",
    "idle",
    "succeeded",
    "failed",
    "released",
    "cancelled",
    "lease_lost",
    "store_error",
    "error",
)


def _tracked_engine(url: str, backend: str, protected: set[int]) -> AsyncEngine:
    """An engine made by the library's adapter whose server-side ids are recorded."""
    adapter, full = adapter_for(url)
    engine = adapter.create_engine(full)
    query = {"postgres": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}.get(backend)
    if query is not None:

        @event.listens_for(engine.sync_engine, "connect")
        def _remember(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(query)
            protected.add(int(cursor.fetchone()[0]))
            cursor.close()

    return engine


class Controller(Injector):
    def __init__(
        self, backend: str, url: str, server_url: str, config: SoakConfig, directory: Path
    ) -> None:
        self.backend = backend
        self.url = url
        self.config = config
        self.plan: Plan = make_plan(config, backend)
        self.directory = directory
        self.protected: set[int] = set()
        self.engine = _tracked_engine(url, backend, self.protected)
        self.faults: Counter[str] = Counter()
        self.problems: list[str] = []
        self.fenced: dict[str, dict[str, Any]] = {}
        self.frozen: set[int] = set()  # pids SIGSTOPped right now
        self.killer = (
            ConnectionKiller(backend, url, server_url, lambda: self.protected)
            if backend != "sqlite"
            else None
        )
        common = [
            "--url",
            url,
            "--seed",
            str(config.seed),
            "--jobs",
            json.dumps(self.plan.jobs),
            "--control",
            str(directory),
            "--lease-ttl",
            str(config.lease_ttl),
            "--max-attempts",
            str(MAX_ATTEMPTS),
            "--broken-permille",
            str(BROKEN_PERMILLE),
        ]
        self.pool = SoakPool(directory, common)
        self.next_id = self.plan.initial_rows + 1
        self.growing = True
        self.stopping = False
        self.operator_calls = 0
        self.t0 = 0.0
        self.phases: dict[str, float] = {}
        self.phase_start = time.monotonic()

    # -- plumbing -------------------------------------------------------------------------

    async def sql(self, text: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.text(text), params)
            rows = [dict(r) for r in result.mappings()] if result.returns_rows else []
            await conn.commit()
            return rows

    async def patient(self, text: str, **params: Any) -> list[dict[str, Any]]:
        """``sql`` that rides out a restart or a dropped connection."""
        for attempt in range(300):
            try:
                return await self.sql(text, **params)
            except (sa.exc.DBAPIError, OSError):
                if attempt == 299:
                    raise
                await anyio.sleep(0.2)
        raise AssertionError("unreachable")

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = now - self.phase_start
        self.phase_start = now

    async def setup(self) -> None:
        await create_meta_table(self.url, rows=self.plan.initial_rows)
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "CREATE TABLE soak_effects (job VARCHAR(64) NOT NULL, meta_id BIGINT NOT NULL, "
                    "token VARCHAR(64) NOT NULL)"
                )
            )
            await conn.execute(
                sa.text(
                    "CREATE TABLE soak_fixed (job VARCHAR(64) NOT NULL, "
                    "meta_id_start BIGINT NOT NULL)"
                )
            )

    # -- background tasks -----------------------------------------------------------------

    async def grow(self) -> None:
        table = meta_table("files")
        for at, rows, gap, heavy in self.plan.growth:
            await self.until(at)
            first = self.next_id + gap
            values = [
                {
                    "id": first + i,
                    "size_in_bytes": HEAVY if i in heavy else default_size(first + i),
                    "kind": "csv",
                    "imported": None,
                }
                for i in range(rows)
            ]
            while True:
                try:
                    async with self.engine.begin() as conn:
                        await conn.execute(table.insert(), values)
                    break
                except (sa.exc.DBAPIError, OSError):
                    await anyio.sleep(0.2)
                    top = (await self.patient("SELECT MAX(id) AS m FROM files"))[0]["m"]
                    if int(top) >= first + rows - 1:
                        break  # the commit went through before the connection dropped
            self.next_id = first + rows
            self.faults["rows_added"] += rows
        self.growing = False

    async def operate(self, operator: pbi.Inventory) -> None:
        """Revive dead ranges the way an operator would; broken ones once 'fixed'."""
        while True:
            await anyio.sleep(1.0)
            try:
                await self.revive(operator)
            except (pbi.StoreError, sa.exc.DBAPIError, OSError):
                pass  # the server is restarting: next round

    async def revive(self, operator: pbi.Inventory) -> int:
        dead = await self.sql(
            "SELECT id, job, meta_id_start FROM inventory WHERE dead = :t ORDER BY id", t=True
        )
        revived = 0
        for job in sorted({str(d["job"]) for d in dead}):
            ids = []
            for d in (d for d in dead if d["job"] == job):
                start = int(d["meta_id_start"])
                if is_broken(self.config.seed, job, start, BROKEN_PERMILLE):
                    if is_unfixable(self.config.seed, job, start):
                        continue
                    await self.sql(
                        "INSERT INTO soak_fixed (job, meta_id_start) VALUES (:j, :s)",
                        j=job,
                        s=start,
                    )
                ids.append(int(d["id"]))
            if ids:
                self.operator_calls += 1
                revived += await operator.retry(job, batch_ids=ids)
        self.faults["revived"] += revived
        return revived

    def last_event(self) -> float:
        return max(
            (p.out.stat().st_mtime for p in self.pool.processes if p.out.exists()),
            default=time.time(),
        )

    def dump_stuck(self) -> None:
        """No worker wrote anything for a while: ask every worker for its stacks."""
        self.faults["stuck"] += 1
        locks = Path("/proc/locks").read_text() if Path("/proc/locks").exists() else ""
        (self.directory / f"stuck-{self.faults['stuck']}.txt").write_text(
            f"at {time.time():.3f}\n{locks}\n"
            + "\n".join(f"{p.owner} pid {p.pid}" for p in self.pool.live())
        )
        for process in self.pool.live():
            if process.stopped():
                continue
            for signum in (signal.SIGUSR1, signal.SIGUSR2):
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    async def supervise(self) -> None:
        """A worker that exits on its own is a finding; a replacement keeps the run going."""
        dumped = 0.0
        while True:
            await anyio.sleep(0.2)
            quiet = time.time() - self.last_event()
            if quiet > 6 and time.time() - dumped > 30 and not self.stopping:
                dumped = time.time()
                self.dump_stuck()
            for process in list(self.pool.processes):
                rc = process.proc.poll()
                if rc is None or process.expected_exit or self.stopping:
                    continue
                process.expected_exit = True
                self.problems.append(
                    f"worker {process.owner} exited by itself (rc={rc}):\n{process.log_tail()}"
                )
                self.pool.start(process.slot, process.generation + 1)

    # -- faults ---------------------------------------------------------------------------

    async def drained(self) -> bool:
        jobs = sa.table("inventory_jobs", sa.column("name"), sa.column("cursor"))
        async with self.engine.connect() as conn:
            cursors = {
                r[0]: r[1] for r in await conn.execute(sa.select(jobs.c.name, jobs.c.cursor))
            }
        top = int((await self.sql("SELECT MAX(id) AS m FROM files"))[0]["m"])
        for job in self.plan.jobs:
            end = top if job.get("id_end") is None else min(top, job["id_end"])
            if cursors.get(job["name"]) is None or int(cursors[job["name"]]) < end:
                return False
        busy = await self.sql(
            "SELECT COUNT(*) AS n FROM inventory "
            "WHERE status = 'running' OR retry_after IS NOT NULL"
        )
        if int(busy[0]["n"]):
            return False
        dead = await self.sql("SELECT job, meta_id_start FROM inventory WHERE dead = :t", t=True)
        seed = self.config.seed
        return all(
            is_broken(seed, d["job"], int(d["meta_id_start"]), BROKEN_PERMILLE)
            and is_unfixable(seed, d["job"], int(d["meta_id_start"]))
            for d in dead
        )

    async def drain(self) -> None:
        (self.directory / "calm").write_text("calm")
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            try:
                if await self.drained():
                    return
            except (sa.exc.DBAPIError, OSError):
                pass
            if time.monotonic() > deadline:
                running = await self.patient(
                    "SELECT id, job, owner, meta_id_start, attempt, expires_at FROM inventory "
                    "WHERE status = 'running' OR retry_after IS NOT NULL"
                )
                self.problems.append(f"the run did not drain in {DRAIN_TIMEOUT} s: {running[:10]}")
                return
            await anyio.sleep(0.25)

    async def stop(self) -> None:
        self.stopping = True
        (self.directory / "stop").write_text("stop")
        deadline = time.monotonic() + 30
        while self.pool.live() and time.monotonic() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.1)
        for process in self.pool.processes:
            rc = process.proc.poll()
            if process.expected_exit:
                continue
            if rc is None:
                self.problems.append(f"worker {process.owner} did not stop:\n{process.log_tail()}")
            elif rc != 0:
                self.problems.append(
                    f"worker {process.owner} failed (rc={rc}):\n{process.log_tail()}"
                )

    async def run(self) -> Report:
        started = time.monotonic()
        await self.setup()
        self.phase("setup")
        try:
            async with pbi.Inventory(
                self.url, engine=self.engine, owner="soak-operator", max_attempts=MAX_ATTEMPTS
            ) as operator:
                try:
                    for slot in range(self.config.workers):
                        self.pool.start(slot, 0)
                    await self.wait_ready()
                    self.phase("start")
                    self.t0 = time.monotonic()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self.grow)
                        tg.start_soon(self.operate, operator)
                        tg.start_soon(self.supervise)
                        await self.inject_all()
                        while self.growing:  # noqa: ASYNC110 - a flag set by grow()
                            await anyio.sleep(0.1)
                        self.phase("faults")
                        await self.drain()
                        self.phase("drain")
                        await self.stop()
                        self.phase("stop")
                        tg.cancel_scope.cancel()
                finally:
                    self.pool.close()
                    if self.killer is not None:
                        await self.killer.aclose()
            # Connections pooled before a restart or an outage are dead: start afresh.
            await self.engine.dispose()
            findings = await check_ledger(self.engine, self.plan.jobs, self.fenced)
            self.phase("check")
        finally:
            await self.engine.dispose()
        events = self.pool.events()
        kinds = Counter(e["ev"] for e in events)
        self.faults.update(Counter(e["kind"] for e in events if e["ev"] == "fault"))
        self.faults["lease_lost_seen"] += kinds["lease_lost"]
        fenced_seen = {e.get("token") for e in events if e["ev"] in ("lease_lost", "cancelled")}
        self.faults["zombie_saw_lease_lost"] += sum(1 for t in self.fenced if t in fenced_seen)
        # How each fenced zombie's lease ended in its own eyes. A release on cancellation
        # (cancel_body) is fenced silently: the cancellation, not LeaseLost, propagates.
        ended = {
            e.get("token"): e["ev"]
            for e in events
            if e["ev"] not in ("acquired", "fault") and e.get("token") in self.fenced
        }
        for token in self.fenced:
            self.faults[f"zombie_ended_{ended.get(token, 'unrecorded')}"] += 1
        ops = sum(kinds[k] for k in _OPS) + self.operator_calls
        return Report(
            self.backend,
            self.config,
            findings,
            self.faults,
            ops,
            time.monotonic() - started,
            self.problems,
            self.phases,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for process in self.pool.processes:
            while not any(e["ev"] == "ready" for e in process.events()):
                if process.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"worker {process.owner} never got ready:\n{process.log_tail()}"
                    )
                await anyio.sleep(0.05)


async def run_soak(
    backend: str, url: str, server_url: str, config: SoakConfig, directory: Path
) -> Report:
    """One soak run on a fresh database ``url``; see the module docstring."""
    return await Controller(backend, url, server_url, config, directory).run()
