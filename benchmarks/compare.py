"""Benchmarks against other implementations and across processes (items 2, 4 and 5).

- ``seed``: pybatchintory 0.0.8 in its own venv, one worker interleaved with ours on the
  same table and caps; then four processes on one job each, counting duplicate ranges.
- ``scaling``: 1, 2, 4, 8 worker processes on one job and spread over 8 jobs.
- ``pgqueuer``: pgqueuer 1.6 dequeue + ack of no-op jobs against ``acquire_many``/``acquire``
  of one-row ranges on the same PostgreSQL server, interleaved.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pybatchintory as pbi

from benchmarks import _venvs
from benchmarks._db import Database, create_files

HERE = Path(__file__).parent


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0


def overlaps(ranges: list[tuple[int, int]]) -> tuple[int, int]:
    """(ranges that share an id with another range, ids handed out more than once)."""
    ordered = sorted((int(a), int(b)) for a, b in ranges)
    overlapping: set[int] = set()
    extra_ids = 0
    reach, reach_index = None, -1
    for i, (start, end) in enumerate(ordered):
        if reach is not None and start <= reach:
            overlapping.update((i, reach_index))
            extra_ids += min(end, reach) - start + 1
        if reach is None or end > reach:
            reach, reach_index = end, i
    return len(overlapping), extra_ids


class _Runner:
    """A long-lived subprocess speaking one JSON object per line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *argv: str) -> _Runner:
        # Its own venv only: a PYTHONPATH pointing at our sources would shadow the seed,
        # which has the same import name.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # the seed logs every query at INFO
        )
        runner = cls(proc)
        ready = await runner.read()
        assert ready.get("ready"), ready
        return runner

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"runner exited with {await self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return await self.read()

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def _workers(
    url: str, table: str, jobs: list[str], caps: dict[str, int], seconds: float, max_leases: int
) -> list[dict[str, Any]]:
    """One pybatchintory worker process per entry of ``jobs``, started together."""
    start_at = time.time() + 1.5 + 0.5 * len(jobs)  # imports and binds happen before
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._worker",
            url,
            table,
            job,
            json.dumps(caps),
            str(start_at),
            str(seconds),
            str(max_leases),
            stdout=asyncio.subprocess.PIPE,
            cwd=str(HERE.parent),
        )
        for job in jobs
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    results = []
    for proc, (out, _) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed with {proc.returncode}")
        result = json.loads(out)
        result["began"] = start_at
        results.append(result)
    return results


async def _record_jobs(url: str, table: str, jobs: list[str]) -> None:
    async with pbi.Inventory(url) as inv:
        source = pbi.MetaTable(table, weight="size_in_bytes")
        for job in set(jobs):
            await inv.set_cursor(job, 0, source=source)


# -- item 2: the seed ---------------------------------------------------------------------


SEED_CAPS = {
    "count": ({"max_count": 1000}, {"batch_count": 1000}),
    "weight": ({"max_weight": 500_000}, {"batch_weight": 500_000}),
}


async def seed(backend: str, db: Database, quick: bool) -> list[dict[str, Any]]:
    """Ours against pybatchintory 0.0.8, one worker, interleaved; then 4 processes."""
    python = _venvs.ensure("seed")
    rows = 100_000 if quick else 1_000_000
    await create_files(db.url, backend, rows, "files")
    runner = await _Runner.start(
        str(python), str(HERE / "_seed_runner.py"), _venvs.sync_url(db.url), "files", "seed"
    )
    out: list[dict[str, Any]] = []
    try:
        async with pbi.Inventory(db.url) as inv:
            source = pbi.MetaTable("files", weight="size_in_bytes")
            for mode, (ours_caps, seed_caps) in SEED_CAPS.items():
                rounds = 2 if quick else 5
                block, seconds = (10, 4.0) if mode == "count" else (3, 6.0 if quick else 10.0)
                mine: list[float] = []
                theirs: list[float] = []
                for _ in range(rounds):
                    answer = await runner.ask({"caps": seed_caps, "n": block, "seconds": seconds})
                    theirs += answer["lease"]
                    for _ in range(max(block, 10)):
                        start = time.perf_counter()
                        batch = await inv.acquire(f"seed-{mode}", source, **ours_caps)
                        assert batch is not None
                        await batch.success()
                        mine.append(time.perf_counter() - start)
                ours_rate = len(mine) / sum(mine)
                seed_rate = len(theirs) / sum(theirs) if theirs else 0.0
                out.append(
                    {
                        "backend": backend,
                        "measure": f"ours vs seed 0.0.8, {mode} cap, 1 worker",
                        "rows": f"{rows:,}",
                        "ours_per_s": round(ours_rate, 1),
                        "seed_per_s": round(seed_rate, 2),
                        "ours_over_seed": round(ours_rate / seed_rate, 1) if seed_rate else None,
                    }
                )
    finally:
        await runner.close()
    out.append(await _duplicates(backend, db, python, quick))
    return out


async def _duplicates(backend: str, db: Database, python: Path, quick: bool) -> dict[str, Any]:
    """Four processes on one job, count cap 100: ranges handed out twice, each library."""
    seconds = 3.0 if quick else 6.0
    runners = [
        await _Runner.start(
            str(python), str(HERE / "_seed_runner.py"), _venvs.sync_url(db.url), "files", "dup"
        )
        for _ in range(4)
    ]
    try:
        start_at = time.time() + 0.5
        for runner in runners:
            runner.send(
                {"caps": {"batch_count": 100}, "n": 10**9, "seconds": seconds, "start_at": start_at}
            )
        answers = [await runner.read() for runner in runners]
    finally:
        for runner in runners:
            await runner.close()
    seed_ranges = [tuple(r) for a in answers for r in a["ranges"]]
    seed_errors = sum(a["error_count"] for a in answers)
    seed_dups, seed_ids = overlaps(seed_ranges)  # type: ignore[arg-type]
    await _record_jobs(db.url, "files", ["dup"])
    results = await _workers(db.url, "files", ["dup"] * 4, {"max_count": 100}, seconds, 10**9)
    ours_ranges = [tuple(r) for res in results for r in res["ranges"]]
    ours_dups, ours_ids = overlaps(ours_ranges)  # type: ignore[arg-type]

    return {
        "backend": backend,
        "measure": "4 processes, one job, count cap 100: duplicate ranges",
        "rows": f"{100_000 if quick else 1_000_000:,}",
        "ours_ranges": len(ours_ranges),
        "ours_duplicates": ours_dups,
        "ours_duplicate_ids": ours_ids,
        "ours_errors": sum(len(r["errors"]) for r in results),
        "seed_ranges": len(seed_ranges),
        "seed_duplicates": seed_dups,
        "seed_duplicate_ids": seed_ids,
        "seed_errors": seed_errors,
    }


# -- item 4: scaling ----------------------------------------------------------------------


async def scaling(backend: str, db: Database, quick: bool) -> list[dict[str, Any]]:
    """Useful leases/s and acquire latency with 1-8 processes, one job or eight jobs."""
    rows = 200_000 if quick else 1_000_000
    await create_files(db.url, backend, rows, "files")
    seconds = 2.0 if quick else 4.0
    counts = (1, 4) if quick else (1, 2, 4, 8)
    out = []
    for spread in (False, True):  # all on one job; a job each (8 jobs at most)
        for n in counts:
            if spread and n == 1:
                continue  # the same as one process on one job
            jobs = [f"scale-{spread:d}-{n}-{i % 8 if spread else 0}" for i in range(n)]
            await _record_jobs(db.url, "files", jobs)
            results = await _workers(db.url, "files", jobs, {"max_count": 100}, seconds, 10**9)
            by_job: dict[str, list[tuple[int, int]]] = {}
            for job, res in zip(jobs, results, strict=True):
                by_job.setdefault(job, []).extend(tuple(r) for r in res["ranges"])
            handed = sum(len(r) for r in by_job.values())
            duplicated = sum(overlaps(r)[0] for r in by_job.values())  # type: ignore[arg-type]
            window = max(res["elapsed"] for res in results)
            acquire = [s for res in results for s in res["acquire"]]
            out.append(
                {
                    "backend": backend,
                    "measure": f"{n} process{'es' if n > 1 else ''}, {len(set(jobs))} job"
                    + ("s" if len(set(jobs)) > 1 else ""),
                    "rows": f"{rows:,}",
                    "useful_per_s": round((handed - duplicated) / window, 1),
                    "duplicates": duplicated,
                    "errors": sum(len(res["errors"]) for res in results),
                    "acquire_p50_ms": _p(acquire, 0.5),
                    "acquire_p99_ms": _p(acquire, 0.99),
                }
            )
    return out


# -- item 5: pgqueuer ---------------------------------------------------------------------


async def pgqueuer(backend: str, db: Database, quick: bool) -> list[dict[str, Any]]:
    """pgqueuer dequeue + ack against one-row leases, batch 10 and batch 1, interleaved."""
    if backend != "postgres":
        return []
    python = _venvs.ensure("pgqueuer")
    jobs = 5_000 if quick else 20_000
    await create_files(db.url, backend, jobs * 2, "files")
    runner = await _Runner.start(
        str(python), str(HERE / "_pgqueuer_runner.py"), _venvs.plain_dsn(db.url)
    )
    out = []
    try:
        await runner.ask({"enqueue": jobs})
        async with pbi.Inventory(db.url) as inv:
            source = pbi.MetaTable("files", weight="size_in_bytes")
            # 80 % of the jobs at batch 10, the rest at batch 1 (one job per call is slow).
            plan = {10: (jobs * 8 // 10, 4), 1: (jobs // 5, 4)}
            for batch, (total, rounds) in plan.items():
                per_round = total // rounds
                theirs = [0.0, 0]
                mine = [0.0, 0]
                calls = [0, 0]
                for _ in range(rounds):
                    answer = await runner.ask({"batch": batch, "n": per_round})
                    theirs[0] += answer["elapsed"]
                    theirs[1] += answer["jobs"]
                    calls[1] += answer["calls"]
                    start = time.perf_counter()
                    got = 0
                    while got < per_round:
                        if batch == 1:
                            one = await inv.acquire("queue-1", source, max_count=1)
                            leased = [one] if one is not None else []
                            for b in leased:
                                await b.success()
                        else:
                            # The queue path: one acquire, one settle_many for all of them.
                            leased = await inv.acquire_many("queue-10", source, batch, max_count=1)
                            if leased:
                                await inv.settle_many(leased)
                        got += len(leased)
                        calls[0] += 1
                        if not leased:
                            break
                    mine[0] += time.perf_counter() - start
                    mine[1] += got
                ours_items, their_items = mine[1] / mine[0], theirs[1] / theirs[0]
                out.append(
                    {
                        "backend": backend,
                        "measure": f"one-row leases vs pgqueuer 1.6 dequeue+ack, batch {batch}",
                        "rows": f"{jobs:,} jobs",
                        "ours_items_per_s": round(ours_items, 1),
                        "ours_ops_per_s": round(calls[0] / mine[0], 1),
                        "pgqueuer_items_per_s": round(their_items, 1),
                        "pgqueuer_ops_per_s": round(calls[1] / theirs[0], 1),
                        "ours_over_pgqueuer": round(ours_items / their_items, 2),
                    }
                )
    finally:
        await runner.close()
    return out


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else 0.0
