"""PostgreSQL: a weight cap's page summary in two pieces against one, and the count cap's.

``python -m benchmarks.page_summary [--rows 200000] [--n 1500] [--limit 1109] [--explain]``

Each summary is prepared once on a raw asyncpg connection, with its limits written into the
SQL as the one-statement acquire writes them (``in_one.page_around``), and run ``--n`` times
after a cursor that moves through the table; prints microseconds per run, three rounds,
interleaved. The weight cap (500,000) is hit after ~1,000 rows of the ``--limit``-row page
(1,109: the page a first page sized from a batch of ~1,000 rows gets). ``--explain`` prints
``EXPLAIN ANALYZE`` of the two-piece summary.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi
from pybatchintory.protocols import BindContext, PageRequest
from pybatchintory.sources import BoundMetaTable
from pybatchintory_adapters._sqlalchemy.in_one import page_around

from benchmarks._db import create_files, fresh_database

CAP = 500_000


def _prepared(
    source: BoundMetaTable, request: PageRequest, split: bool
) -> tuple[str, list[Any], int]:
    """The summary's SQL (limits written in), its arguments, and where ``p_after`` is."""
    key = (*source._shape(request)[:4], split)
    cursor = sa.bindparam("p_after", type_=sa.BigInteger())
    query = page_around(source._page_query(*key), cursor, request.limit)
    compiled = query.compile(dialect=postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    params = {**compiled.params, **source._params(request, key)}
    names = list(compiled.positiontup or ())
    return str(compiled), [params[name] for name in names], names.index("p_after")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--n", type=int, default=1_500)
    parser.add_argument("--limit", type=int, default=1_109)
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db = await fresh_database("postgres", workdir)
        try:
            await create_files(db.url, "postgres", args.rows)
            engine = create_async_engine(db.url)
            context = BindContext(
                store=None,  # type: ignore[arg-type]  # a MetaTable does not read the ledger
                inventory_engine=engine,
                engine_for=lambda url: engine,
            )
            source = await pbi.MetaTable("files", weight="size_in_bytes").bind(context)
            weighted = PageRequest(after=0, end=None, limit=args.limit, max_weight=CAP)
            counted = PageRequest(after=0, end=None, limit=1_000, max_weight=None)
            shapes = {
                "weight cap, two pieces": _prepared(source, weighted, True),
                "weight cap, one piece": _prepared(source, weighted, False),
                "count cap": _prepared(source, counted, False),
            }
            raw = make_url(db.url).set(drivername="postgresql").render_as_string(False)
            conn = await asyncpg.connect(raw)
            try:
                statements = {
                    name: (await conn.prepare(sql), arguments, at)
                    for name, (sql, arguments, at) in shapes.items()
                }
                span = args.rows - 2 * args.limit
                for round_ in range(3):
                    for name, (statement, arguments, at) in statements.items():
                        started = time.perf_counter()
                        for i in range(args.n):
                            arguments[at] = (i * 7_919) % span
                            await statement.fetchrow(*arguments)
                        took = (time.perf_counter() - started) / args.n * 1e6
                        print(f"round {round_ + 1}  {name:24} {took:6.0f} us")
                if args.explain:
                    sql, arguments, _ = shapes["weight cap, two pieces"]
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE) {sql}", *arguments)
                    print("\n".join(row[0] for row in plan))
            finally:
                await conn.close()
                await engine.dispose()
        finally:
            await db.drop()


if __name__ == "__main__":
    asyncio.run(main())
