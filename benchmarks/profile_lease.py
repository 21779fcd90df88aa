"""Profile the lease hot path: statements and round trips per lease, and where time goes.

Usage: ``python -m benchmarks.profile_lease [--backend sqlite] [--caps count] [--n 300]
[--cprofile] [--floor [--one-statement]]``. Prints statements per lease (grouped by their
first words), with ``--floor`` ours against the floor (``--one-statement``: the PostgreSQL
one-statement floor too) and, with ``--cprofile``, the top functions by cumulative and own
time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import pstats
import tempfile
import time
from typing import Any

from sqlalchemy import event

import pybatchintory as pbi

from benchmarks._db import create_files, fresh_database
from benchmarks.floor import Floor
from benchmarks.run import CAPS


def _count_direct(count: Any) -> None:
    """Statements of the direct hot path do not pass SQLAlchemy's cursor events."""
    from pybatchintory_adapters._sqlalchemy import driver_path as direct

    for name in ("all", "_run"):
        original = getattr(direct.DirectConnection, name)
        if getattr(original, "_counted", False):
            continue

        def wrapper(self: Any, statement: Any, params: Any, _original: Any = original) -> Any:
            count(None, None, self._get(statement).sql)
            return _original(self, statement, params)

        wrapper._counted = True  # type: ignore[attr-defined]
        setattr(direct.DirectConnection, name, wrapper)


def _count_socket_writes() -> list[int]:
    """Count writes to server sockets from here on (one per round trip, roughly)."""
    from asyncio import selector_events

    counter = [1]
    transport = selector_events._SelectorSocketTransport
    original = transport.write
    if getattr(original, "_counted", False):
        original = original.__wrapped__  # type: ignore[attr-defined]

    def write(self: Any, data: Any) -> None:
        counter[0] += 1
        original(self, data)

    write._counted = True  # type: ignore[attr-defined]
    write.__wrapped__ = original  # type: ignore[attr-defined]
    transport.write = write  # type: ignore[method-assign]
    return counter


async def versus_floor(
    inv: pbi.Inventory,
    source: pbi.MetaTable,
    url: str,
    backend: str,
    caps: Any,
    n: int,
    one_statement: bool = False,
) -> None:
    """Ours against the floor (or the one-statement floor), interleaved in blocks of 20."""
    floor = Floor(backend, url, 1000, one_statement=one_statement)
    await floor.open()
    ours: list[float] = []
    theirs: list[float] = []
    cpu = [0.0, 0.0]
    writes = _count_socket_writes()
    sent = [0, 0]
    try:
        for _ in range(max(1, n // 20)):
            await inv.set_cursor("p", 0)
            await floor.rewind()
            start, started, before = time.perf_counter(), time.process_time(), writes[0]
            for _ in range(20):
                b = await inv.acquire("p", source, **caps)
                assert b is not None
                await b.success()
            ours.append(time.perf_counter() - start)
            cpu[0] += time.process_time() - started
            sent[0] += writes[0] - before
            start, started, before = time.perf_counter(), time.process_time(), writes[0]
            for _ in range(20):
                await floor.lease()
            theirs.append(time.perf_counter() - start)
            cpu[1] += time.process_time() - started
            sent[1] += writes[0] - before
    finally:
        await floor.close()
    name = "one-statement floor" if one_statement else "two-transaction floor"
    print(
        f"[{name}] "
        f"ours {20 * len(ours) / sum(ours):.0f}/s, floor {20 * len(theirs) / sum(theirs):.0f}/s, "
        f"overhead {sum(ours) / sum(theirs):.2f}x; client CPU per lease: ours "
        f"{cpu[0] / len(ours) / 20 * 1e6:.0f} us, floor {cpu[1] / len(theirs) / 20 * 1e6:.0f} us; "
        f"socket writes per lease: ours {sent[0] / len(ours) / 20:.2f}, "
        f"floor {sent[1] / len(theirs) / 20:.2f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--caps", default="count")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--floor", action="store_true", help="also time the raw-SQL floor")
    parser.add_argument(
        "--one-statement",
        action="store_true",
        help="with --floor on PostgreSQL: the one-statement floor too",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db = await fresh_database(args.backend, workdir)
        try:
            await create_files(db.url, args.backend, args.rows, "files")
            async with pbi.Inventory(db.url) as inv:
                source = pbi.MetaTable("files", weight="size_in_bytes")
                caps = CAPS[args.caps]
                for _ in range(5):
                    b = await inv.acquire("p", source, **caps)
                    assert b is not None
                    await b.success()
                seen: collections.Counter[str] = collections.Counter()

                counting = [True]

                def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
                    if counting[0]:
                        seen[" ".join(statement.split()[:3])[:60]] += 1

                event.listen(inv.engine.sync_engine, "before_cursor_execute", count)
                _count_direct(count)
                writes = _count_socket_writes()
                profiler = cProfile.Profile(time.process_time) if args.cprofile else None
                start = time.perf_counter()
                if profiler:
                    profiler.enable()
                for i in range(args.n):
                    if i % 40 == 39:  # rewind so the table never runs dry
                        counting[0] = False
                        await inv.set_cursor("p", 0)
                        counting[0] = True
                    b = await inv.acquire("p", source, **caps)
                    assert b is not None
                    await b.success()
                if profiler:
                    profiler.disable()
                elapsed = time.perf_counter() - start
                event.remove(inv.engine.sync_engine, "before_cursor_execute", count)
                total = sum(seen.values())
                round_trips = writes[0] - 1  # minus the first count

                print(
                    f"{args.backend} {args.caps}: {args.n / elapsed:.0f} leases/s, "
                    f"{total / args.n:.2f} statements per lease, "
                    f"{round_trips / args.n:.2f} socket writes per lease (round trips; "
                    "0 on SQLite: its driver runs in a thread)"
                )
                for text, k in seen.most_common():
                    print(f"  {k / args.n:5.2f}  {text}")
                if args.floor:
                    await versus_floor(inv, source, db.url, args.backend, caps, args.n)
                    if args.one_statement:
                        await versus_floor(
                            inv, source, db.url, args.backend, caps, args.n, one_statement=True
                        )
                if profiler:
                    stats = pstats.Stats(profiler)
                    stats.sort_stats("cumulative").print_stats(35)
                    stats.sort_stats("tottime").print_stats(25)
        finally:
            await db.drop()


if __name__ == "__main__":
    asyncio.run(main())
