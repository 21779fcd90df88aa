"""Profile the lease hot path: statements and round trips per lease, and where time goes.

Usage: ``python -m benchmarks.profile_lease [--backend sqlite] [--caps count] [--n 300]
[--cprofile] [--floor [--one-statement]] [--timing] [--canned] [--server]``. Prints statements per
lease (grouped by their first words), with ``--floor`` ours against the floor
(``--one-statement``: the PostgreSQL one-statement floor too), with ``--timing`` the wall
time of acquire and settle and of each statement inside them, with ``--canned`` our
Python alone (every driver call answered from a recording), with ``--server``
(PostgreSQL) our acquire statement against the floor's on a raw connection, and, with
``--cprofile``, the top functions by cumulative and own time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
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


def _time_direct(spent: dict[str, list[float]]) -> None:
    """Time every statement (and batch) the direct hot path sends, by its first words."""
    from pybatchintory_adapters._sqlalchemy import driver_path as direct

    for name in ("all", "_run", "batch", "commit"):
        original = getattr(direct.DirectConnection, name)

        async def timed(self: Any, *args: Any, _original: Any = original, _name: str = name) -> Any:
            if _name == "batch":
                label = "batch: " + " ".join(self._get(args[0][1]).sql.split()[:2])
            elif _name == "commit":
                label = "COMMIT"
            else:
                label = " ".join(self._get(args[0]).sql.split()[:2])
            started = time.perf_counter()
            try:
                return await _original(self, *args)
            finally:
                spent.setdefault(label, []).append(time.perf_counter() - started)

        setattr(direct.DirectConnection, name, timed)


async def timing(inv: pbi.Inventory, source: pbi.MetaTable, caps: Any, n: int) -> None:
    """Wall time per lease: acquire, settle, and the driver calls inside them."""
    spent: dict[str, list[float]] = {}
    _time_direct(spent)
    acquire = settle = 0.0
    for i in range(n):
        if i % 40 == 39:
            await inv.set_cursor("p", 0)
        started = time.perf_counter()
        b = await inv.acquire("p", source, **caps)
        assert b is not None
        middle = time.perf_counter()
        await b.success()
        acquire, settle = acquire + middle - started, settle + time.perf_counter() - middle
    print(
        f"[timing] per lease: acquire {acquire / n * 1e6:.0f} us, settle {settle / n * 1e6:.0f} us"
    )
    for label, times in spent.items():
        print(f"  {len(times) / n:5.2f} x {sum(times) / len(times) * 1e6:6.0f} us  {label}")


async def canned(inv: pbi.Inventory, source: pbi.MetaTable, caps: Any, n: int) -> None:
    """Our Python alone: every driver call answered from a recording of the last real one.

    The same statement gets the same answer (the same grant, the same row count), so the
    loop measures everything but the driver and the database: the library's own CPU per
    lease (event-loop hops of its tasks included).
    """
    from pybatchintory_adapters import mysql, postgres, sqlite

    sessions = (postgres._AsyncpgSession, mysql._AiomysqlSession, sqlite._AiosqliteSession)
    recorded: dict[str, Any] = {}
    replaying = [False]
    saved = [
        (cls, name, getattr(cls, name))
        for cls in sessions
        for name in ("rows", "run", "batch")
        if hasattr(cls, name)
    ]
    for cls, name, original in saved:

        async def answer(self: Any, sql: str, args: Any, _original: Any = original) -> Any:
            if replaying[0] and sql in recorded:
                return recorded[sql]
            recorded[sql] = await _original(self, sql, args)
            return recorded[sql]

        setattr(cls, name, answer)
    if hasattr(sqlite._AiosqliteSession, "in_thread"):
        saved.append((sqlite._AiosqliteSession, "in_thread", sqlite._AiosqliteSession.in_thread))
        del sqlite._AiosqliteSession.in_thread  # statement by statement, so they are replayed
    try:
        for _ in range(5):
            b = await inv.acquire("p", source, **caps)
            assert b is not None
            await b.success()
        replaying[0] = True
        started = time.process_time()
        for _ in range(n):
            b = await inv.acquire("p", source, **caps)
            assert b is not None
            await b.success()
        cpu = (time.process_time() - started) / n
        print(f"[canned] our Python alone, driver replies replayed: {cpu * 1e6:.0f} us per lease")
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


async def server_side(inv: pbi.Inventory, source: pbi.MetaTable, url: str, n: int) -> None:
    """PostgreSQL: our acquire statement against the one-statement floor's.

    Both on one raw asyncpg connection (prepared, autocommit, alternating): the
    database's share of a lease alone.
    """
    import secrets

    import asyncpg
    from sqlalchemy.engine import make_url

    from pybatchintory_adapters import postgres

    from benchmarks.floor import _ONE_STATEMENT

    captured: dict[str, Any] = {}
    session = postgres._AsyncpgSession
    original = session.rows

    async def capture(self: Any, sql: str, args: Any) -> Any:
        if sql.startswith("WITH locked"):
            captured["sql"], captured["args"] = sql, list(args)
        return await original(self, sql, args)

    session.rows = capture
    try:
        await inv.set_cursor("p", 0)
        b = await inv.acquire("p", source, max_count=1000)
        assert b is not None and "sql" in captured
        await b.success()
    finally:
        session.rows = original
    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user=u.username, database=u.database)
    floor = Floor("postgres", url, 1000, one_statement=True)
    await conn.execute(f"DROP TABLE IF EXISTS {floor.prefix}jobs, {floor.prefix}attempts")
    await floor.open()
    try:
        ours = await conn.prepare(captured["sql"])
        theirs = await conn.prepare(_ONE_STATEMENT.format(prefix=floor.prefix))
        token = captured["args"].index(next(a for a in captured["args"] if a == b.token))
        spent = [0.0, 0.0]
        for i in range(n):
            if i % 150 == 0:
                await conn.execute("UPDATE inventory_jobs SET cursor = 0 WHERE name = 'p'")
                await conn.execute(f"UPDATE {floor.prefix}jobs SET cursor_id = 0")
            args = list(captured["args"])
            args[token] = secrets.token_hex(16)
            started = time.perf_counter()
            (row,) = await ours.fetch(*args)
            middle = time.perf_counter()
            attempt = await theirs.fetchval(1000, secrets.token_hex(16))
            spent[0] += middle - started
            spent[1] += time.perf_counter() - middle
            # Settled, untimed, as a lease would be: running attempts do not pile up.
            await conn.execute("UPDATE inventory SET status = 'succeeded' WHERE id = $1", row[4])
            await conn.execute(
                f"UPDATE {floor.prefix}attempts SET status = 'succeeded' WHERE id = $1", attempt
            )
        print(
            f"[server] one acquire statement on a raw connection: ours "
            f"{spent[0] / n * 1e6:.0f} us, one-statement floor {spent[1] / n * 1e6:.0f} us"
        )
    finally:
        await conn.close()
        await floor.close()


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
    parser.add_argument(
        "--timing", action="store_true", help="wall time of acquire, settle and each statement"
    )
    parser.add_argument(
        "--canned", action="store_true", help="our Python alone (driver replies replayed)"
    )
    parser.add_argument(
        "--server",
        action="store_true",
        help="PostgreSQL: our acquire statement vs the floor's on a raw connection",
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
                if args.timing:
                    await timing(inv, source, caps, args.n)
                if args.canned:
                    await canned(inv, source, caps, args.n)
                if args.server and args.backend == "postgres":
                    await server_side(inv, source, db.url, args.n)
                if profiler:
                    stats = pstats.Stats(profiler)
                    stats.sort_stats("cumulative").print_stats(35)
                    stats.sort_stats("tottime").print_stats(25)
                    if os.environ.get("PBI_CALLERS"):
                        stats.print_callers(os.environ["PBI_CALLERS"])
        finally:
            await db.drop()


if __name__ == "__main__":
    asyncio.run(main())
