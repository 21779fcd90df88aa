"""A worker process for the multi-process, crash and fingerprint tests.

Run by path with the test's interpreter::

    python tests/integration/worker.py --url URL --job JOB --out OUT [options]

Every record goes to OUT as one JSON line, written with flush + fsync, so a test can read
it while the worker runs and after it was killed.

Modes:

- ``loop`` (default): lease and succeed until ``NoBatchAvailable`` (or ``--max-batches``),
  with small random pauses seeded by the pid; one line per *succeeded* range:
  ``{"start", "end", "count", "weight", "attempt", "id", "pid", "items", "first", "last"}``.
- ``hold``: lease one range, write ``{"acquired": [start, end], "token", "id", ...}`` and
  sleep forever inside the body (to be SIGKILLed or SIGSTOPped).
- ``hold-then-succeed``: lease one range, write the acquired line, sleep ``--body-sleep``
  seconds inside the body, then ``await batch.success()``; write ``{"success": "ok"}`` or
  ``{"success": "LeaseLost", ...}``. A ``LeaseLost`` raised by the ``async with`` itself
  is written as ``{"exit": "LeaseLost", ...}``.
- ``fail`` / ``fail-elsewhere``: lease one range and raise ``ValueError`` in the body (from
  two different places); write ``{"failed": id, ...}`` once the failure was recorded.

``--go FILE``: write ``{"ready": pid}`` after the inventory is open and wait until FILE
exists before the first lease (a start barrier, so the workers really race).

Exit status: 0 when the mode ran as designed; 1 (with a traceback on stderr) on any
other exception.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import pybatchintory as pbi


def write(out: str, record: dict[str, Any]) -> None:
    """Append one JSON line to ``out`` and make it durable before returning."""
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", default="files")
    parser.add_argument("--weight-column", default="size_in_bytes")
    parser.add_argument("--max-count", type=int, default=None)
    parser.add_argument("--max-weight", type=int, default=None)
    parser.add_argument("--id-start", type=int, default=None)
    parser.add_argument("--id-end", type=int, default=None)
    parser.add_argument("--lease-ttl", type=float, default=60.0)
    parser.add_argument(
        "--mode",
        default="loop",
        choices=["loop", "hold", "hold-then-succeed", "fail", "fail-elsewhere"],
    )
    parser.add_argument("--body-sleep", type=float, default=1.0)
    parser.add_argument("--pause", type=float, default=0.02, help="max random pause, seconds")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--go", default=None)
    return parser.parse_args(argv)


def explode(rows: list[Any]) -> None:
    """The failure of mode ``fail``: its message differs per process, its frames do not."""
    raise ValueError(f"row {rows[0]['id']} is broken (seen by pid {os.getpid()})")


def explode_elsewhere(rows: list[Any]) -> None:
    """The failure of mode ``fail-elsewhere``: same type, other frames."""
    bad = [row for row in rows if row is not None]
    raise ValueError(f"{len(bad)} rows are broken (seen by pid {os.getpid()})")


async def wait_for_go(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):  # noqa: ASYNC240 - one stat per 10 ms is fine
        if time.monotonic() > deadline:
            raise TimeoutError(f"the start file {path} never appeared")
        await asyncio.sleep(0.01)


async def loop(inv: pbi.Inventory, args: argparse.Namespace, source: pbi.MetaTable) -> None:
    rng = random.Random(os.getpid())
    done = 0
    while args.max_batches is None or done < args.max_batches:
        try:
            async with inv.lease(
                args.job,
                source,
                max_count=args.max_count,
                max_weight=args.max_weight,
                id_start=args.id_start,
                id_end=args.id_end,
            ) as batch:
                rows = await batch.items()
                await asyncio.sleep(rng.uniform(0, args.pause))
                record = {
                    "start": batch.meta_id_start,
                    "end": batch.meta_id_end,
                    "count": batch.count,
                    "weight": batch.weight,
                    "attempt": batch.attempt,
                    "id": batch.id,
                    "pid": os.getpid(),
                    "items": len(rows),
                    "first": rows[0]["id"] if rows else None,
                    "last": rows[-1]["id"] if rows else None,
                    "item_weight": sum(int(row[args.weight_column] or 0) for row in rows),
                }
        except pbi.NoBatchAvailable:
            break
        # Only here, after the exit policy recorded `succeeded` without raising.
        write(args.out, record)
        done += 1
        await asyncio.sleep(rng.uniform(0, args.pause / 2))
    write(args.out, {"done": done, "pid": os.getpid()})


def acquired_record(inv: pbi.Inventory, batch: pbi.Batch) -> dict[str, Any]:
    return {
        "acquired": [batch.meta_id_start, batch.meta_id_end],
        "token": batch.token,
        "id": batch.id,
        "attempt": batch.attempt,
        "owner": inv.owner,
        "expires_at": batch.expires_at.isoformat(),
        "pid": os.getpid(),
    }


async def hold(inv: pbi.Inventory, args: argparse.Namespace, source: pbi.MetaTable) -> None:
    lease = inv.lease(
        args.job,
        source,
        max_count=args.max_count,
        max_weight=args.max_weight,
        id_start=args.id_start,
        id_end=args.id_end,
    )
    if args.mode == "hold":
        async with lease as batch:
            write(args.out, acquired_record(inv, batch))
            await asyncio.Event().wait()  # forever: until SIGKILL
    try:
        async with lease as batch:
            # The body's deadline is fixed before the acquired line is written: a test sends
            # SIGSTOP as soon as it sees that line, possibly while write() is still in fsync.
            # Sleeping "body_sleep from now" after the write would then start the sleep only
            # after SIGCONT, and the heartbeat (started later still) could find the lease gone
            # while the body sleeps, instead of success() finding it gone.
            # Nor is it later than half a second before the lease runs out by the database
            # clock: a test resumes the worker only once the lease is gone, and the body
            # must be due by then. Timed from here alone, a slow return from the acquire
            # (a commit's fsync on a busy disk) could leave the body still asleep at the
            # resume while a heartbeat is due: the heartbeat then finds the lease gone first.
            loop = asyncio.get_running_loop()
            left = (batch.expires_at - datetime.now(UTC)).total_seconds()
            deadline = loop.time() + min(args.body_sleep, left - 0.5)
            write(args.out, acquired_record(inv, batch))
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            try:
                await batch.success()
            except pbi.LeaseLost as exc:
                write(
                    args.out,
                    {"success": "LeaseLost", "type": type(exc).__name__, "message": str(exc)},
                )
            else:
                write(args.out, {"success": "ok"})
    except pbi.LeaseLost as exc:
        write(args.out, {"exit": "LeaseLost", "type": type(exc).__name__, "message": str(exc)})


async def fail(inv: pbi.Inventory, args: argparse.Namespace, source: pbi.MetaTable) -> None:
    batch_id = None
    try:
        async with inv.lease(
            args.job, source, max_count=args.max_count, max_weight=args.max_weight
        ) as batch:
            batch_id = batch.id
            rows = await batch.items()
            if args.mode == "fail":
                explode(list(rows))
            else:
                explode_elsewhere(list(rows))
    except ValueError as exc:
        write(args.out, {"failed": batch_id, "message": str(exc), "pid": os.getpid()})
        return
    raise AssertionError("the body was supposed to fail")


async def main(args: argparse.Namespace) -> None:
    source = pbi.MetaTable(args.table, weight=args.weight_column)
    async with pbi.Inventory(args.url, lease_ttl=args.lease_ttl) as inv:
        if args.go is not None:
            write(args.out, {"ready": os.getpid()})
            await wait_for_go(args.go)
        if args.mode == "loop":
            await loop(inv, args, source)
        elif args.mode in ("hold", "hold-then-succeed"):
            await hold(inv, args, source)
        else:
            await fail(inv, args, source)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse(sys.argv[1:])))
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(0)
