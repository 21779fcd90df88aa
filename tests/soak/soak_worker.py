"""A soak worker process: leases ranges of several jobs and injects in-process faults.

Run by path with the test's interpreter (the soak controller starts six of these)::

    python tests/soak/soak_worker.py --url URL --slot N --generation G --seed S \
        --jobs JSON --control DIR --out FILE --lease-ttl T

Every decision (which job, which fault, how long the body takes) comes from a
``random.Random`` seeded with ``seed:slot:generation``, so a seed replays the same plan.
The body writes one row per processed id to ``soak_effects (job, meta_id, token)`` in the
metadata database, the side-effect log the checker compares with the ledger.

In-process faults, per iteration (none while ``DIR/calm`` exists, except permanent ones):

- ``transient``: the body raises ``TransientFailure`` (sometimes after writing effects);
- ``permanent``: a range picked by a hash of (seed, job, start) raises ``PermanentFailure``
  on every attempt until the operator lists it in ``soak_fixed`` and calls ``retry``;
  some ranges are never fixed and end dead;
- ``cancel_body``: an anyio cancel scope around the lease is cancelled from the body;
- ``cancel_task``: the task running the iteration is cancelled from outside, at a random
  moment (acquire, body or settle);
- ``slow``: a long body, so that SIGKILL and SIGSTOP find the worker mid-lease.

Events go to ``--out`` as JSON lines (flushed, not fsynced: SIGKILL keeps the page cache).
The worker stops after its current iteration once ``DIR/stop`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import pybatchintory as pbi
from pybatchintory._registry import adapter_for

FAULTS = ("none", "transient", "cancel_body", "cancel_task", "slow")
FAULT_WEIGHTS = (70, 8, 6, 6, 10)


class TransientFailure(RuntimeError):
    """A failure that goes away on the next attempt."""


class PermanentFailure(RuntimeError):
    """A failure of one range that stays until the operator fixes it."""


def range_hash(seed: int, job: str, start: int) -> int:
    digest = hashlib.sha256(f"{seed}:{job}:{start}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def is_broken(seed: int, job: str, start: int, permille: int) -> bool:
    """A range that fails permanently (until fixed); about ``permille``/1000 of ranges."""
    return range_hash(seed, job, start) % 1000 < permille


def is_unfixable(seed: int, job: str, start: int) -> bool:
    """A broken range the operator never fixes: it ends dead."""
    return (range_hash(seed, job, start) >> 12) % 3 == 0


class Events:
    def __init__(self, path: str) -> None:
        self._handle = open(path, "a", encoding="utf-8")

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"ev": event, "t": round(time.time(), 3), **fields}
        self._handle.write(json.dumps(record, default=str) + "\n")
        self._handle.flush()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--jobs", required=True, help="JSON list of job definitions")
    parser.add_argument("--control", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--broken-permille", type=int, default=15)
    return parser.parse_args(argv)


class Worker:
    def __init__(self, args: argparse.Namespace, inv: pbi.Inventory, effects: AsyncEngine):
        self.args = args
        self.inv = inv
        self.effects = effects
        self.rng = random.Random(f"{args.seed}:{args.slot}:{args.generation}")
        self.jobs: list[dict[str, Any]] = json.loads(args.jobs)
        self.source = pbi.MetaTable("files", weight="size_in_bytes")
        self.control = Path(args.control)
        self.ev = Events(args.out)
        self.in_body = asyncio.Event()
        self.current: str | None = None

    def calm(self) -> bool:
        return (self.control / "calm").exists()

    def stopping(self) -> bool:
        return (self.control / "stop").exists()

    async def write_effects(self, job: str, rows: list[Any], token: str) -> None:
        if not rows:
            return
        async with self.effects.connect() as conn:
            # SQLite: BEGIN IMMEDIATE, like the library's own writes. Cancelling an INSERT
            # of pysqlite's implicit (deferred) transaction while it waits for the write
            # lock left a connection holding that lock for 30 s and more (SQLAlchemy 2.1,
            # aiosqlite 0.22): it wedged whole runs. Ignored by the other adapters.
            await conn.execution_options(pybatchintory_write=True)
            await conn.begin()
            await conn.execute(
                sa.text("INSERT INTO soak_effects (job, meta_id, token) VALUES (:j, :m, :t)"),
                [{"j": job, "m": int(row["id"]), "t": token} for row in rows],
            )
            await conn.commit()

    async def fixed(self, job: str, start: int) -> bool:
        async with self.effects.connect() as conn:
            found = await conn.execute(
                sa.text("SELECT 1 FROM soak_fixed WHERE job = :j AND meta_id_start = :s"),
                {"j": job, "s": start},
            )
            return found.first() is not None

    async def iteration(self, job: dict[str, Any], fault: str, pause: float) -> None:
        name = job["name"]
        with anyio.CancelScope() as scope:
            async with self.inv.lease(
                name,
                self.source,
                max_count=job.get("max_count"),
                max_weight=job.get("max_weight"),
                id_start=job.get("id_start"),
                id_end=job.get("id_end"),
            ) as batch:
                token = self.current = batch.token
                self.ev(
                    "acquired",
                    job=name,
                    id=batch.id,
                    token=token,
                    attempt=batch.attempt,
                    start=batch.meta_id_start,
                    end=batch.meta_id_end,
                    fault=fault,
                )
                self.in_body.set()
                rows = list(await batch.items())
                await anyio.sleep(pause)
                start = batch.meta_id_start
                if is_broken(self.args.seed, name, start, self.args.broken_permille) and (
                    not await self.fixed(name, start)
                ):
                    self.ev("fault", kind="exc_permanent", job=name, token=token)
                    raise PermanentFailure(f"range {start} of {name} is broken")
                if fault == "transient":
                    self.ev("fault", kind="exc_transient", job=name, token=token)
                    if self.rng.random() < 0.5:
                        await self.write_effects(name, rows, token)
                    raise TransientFailure(f"flaky sink while writing range {start}")
                await self.write_effects(name, rows, token)
                if fault == "cancel_body":
                    self.ev("fault", kind="cancel_body", job=name, token=token)
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
            self.ev("succeeded", job=name, token=token)
            return
        self.ev("released", job=name, token=token, why="cancel scope")

    async def run_one(self, job: dict[str, Any], fault: str, pause: float) -> None:
        try:
            await self.iteration(job, fault, pause)
        except pbi.NoBatchAvailable:
            self.ev("idle", job=job["name"])
            await anyio.sleep(self.rng.uniform(0.05, 0.2))
        except (TransientFailure, PermanentFailure) as exc:
            self.ev("failed", job=job["name"], token=self.current, error=type(exc).__name__)
        except pbi.LeaseLost as exc:
            self.ev("lease_lost", job=job["name"], token=self.current, message=str(exc))
        except pbi.StoreError as exc:
            self.ev(
                "store_error",
                job=job["name"],
                token=self.current,
                error=f"{type(exc).__name__}: {exc}",
            )
            await anyio.sleep(self.rng.uniform(0.1, 0.4))
        except Exception as exc:  # a driver error in the body: recorded as a failed attempt
            self.ev(
                "error", job=job["name"], token=self.current, error=f"{type(exc).__name__}: {exc}"
            )
            await anyio.sleep(self.rng.uniform(0.05, 0.2))

    async def run(self) -> None:
        self.ev("ready", pid=os.getpid(), owner=self.inv.owner)
        done = 0
        while not self.stopping():
            job = self.rng.choice(self.jobs)
            fault = self.rng.choices(FAULTS, FAULT_WEIGHTS)[0]
            pause = self.rng.uniform(0.4, 1.5) if fault == "slow" else self.rng.uniform(0.0, 0.03)
            cancel_after = self.rng.uniform(0.0, 0.25)
            if self.calm() and fault != "slow":
                fault = "none"
            self.in_body.clear()
            self.current = None
            task = asyncio.create_task(self.run_one(job, fault, pause))
            if fault == "cancel_task":
                done_set, _ = await asyncio.wait({task}, timeout=cancel_after)
                if not done_set:
                    self.ev("fault", kind="cancel_task", in_body=self.in_body.is_set())
                    task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                self.ev("cancelled", job=job["name"], token=self.current)
            done += 1
        self.ev("stopped", iterations=done)


def dump_tasks() -> None:
    """SIGUSR1: print every task's stack (the controller asks when the run seems stuck)."""
    print(f"--- tasks of pid {os.getpid()} at {time.time():.3f}", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task!r}", file=sys.stderr)
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            frame = frame or getattr(coro, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    sys.stderr.flush()


async def main(args: argparse.Namespace) -> None:
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    owner = f"soak-{args.slot}-{args.generation}-{os.getpid()}"
    adapter, full_url = adapter_for(args.url)
    effects = adapter.create_engine(full_url)
    try:
        inv = pbi.Inventory(
            args.url,
            owner=owner,
            lease_ttl=args.lease_ttl,
            max_attempts=args.max_attempts,
            retry_delay=0.05,
        )
        for attempt in range(600):  # a replacement may start during an outage
            try:
                await inv.open()
                break
            except pbi.StoreError:
                if attempt == 599:
                    await inv.aclose()
                    raise
                await asyncio.sleep(0.2)
        async with inv:
            await Worker(args, inv, effects).run()
    finally:
        await effects.dispose()


if __name__ == "__main__":
    try:
        asyncio.run(main(parse(sys.argv[1:])))
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(0)
