"""The ledger's hot queries are index lookups, not scans, with a large ledger.

The statements are the store's own (compiled with literal values), explained by the
server after 200k attempts of one job were written, so the planner sees a big table.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

import pybatchintory as pbi
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

from tests.helpers import create_meta_table

ATTEMPTS = 200_000

FILL = {
    "postgres": """
        INSERT INTO inventory (meta_table, job, meta_id_start, meta_id_end, weight, count,
                               attempt, status, failures, dead, oversized, owner, token)
        SELECT 'files', 'big', g * 10, g * 10 + 9, 10, 10, 1, 'succeeded', 0, false, false,
               'someone', md5(g::text)
        FROM generate_series(1, {n}) AS g
    """,
    "mysql": """
        INSERT INTO inventory (meta_table, job, meta_id_start, meta_id_end, weight, count,
                               attempt, status, failures, dead, oversized, owner, token)
        WITH RECURSIVE seq (g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {n})
        SELECT 'files', 'big', g * 10, g * 10 + 9, 10, 10, 1, 'succeeded', 0, false, false,
               'someone', md5(g)
        FROM seq
    """,
}
ANALYZE = {"postgres": "ANALYZE inventory", "mysql": "ANALYZE TABLE inventory"}


def _sql(conn: AsyncConnection, statement: Any, params: dict[str, Any]) -> str:
    def fill(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in params:
            value = sa.bindparam(
                element.key,
                params[element.key],
                type_=element.type,
                expanding=element.expanding,
            )
            # A literal timestamp renders as a string: cast it, as the driver would type it.
            return sa.cast(value, element.type) if isinstance(element.type, sa.DateTime) else value
        return None

    bound = visitors.replacement_traverse(statement, {}, fill)
    return str(bound.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


async def _plan(conn: AsyncConnection, backend: str, sql: str) -> str:
    rows = (await conn.execute(sa.text(f"EXPLAIN {sql}"))).all()
    if backend == "postgres":
        return "\n".join(str(r[0]) for r in rows)
    return "\n".join(" | ".join(f"{k}={v}" for k, v in r._mapping.items()) for r in rows)


def _assert_indexed(backend: str, plan: str, what: str) -> None:
    # The ledger under any alias; the jobs table (``inventory_jobs``) is small and may be
    # read whole (one line per job is what ``status`` asks for).
    if backend == "postgres":
        scan = re.search(r"Seq Scan on inventory(\s|$)", plan)
        assert scan is None, f"{what} scans the ledger:\n{plan}"
    else:
        for line in plan.splitlines():
            if re.search(r"table=(inventory|newest|inventory_\d+)( |$)", line):
                assert "type=ALL" not in line, f"{what} scans the ledger:\n{plan}"


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
@pytest.mark.timeout(300)
async def test_hot_queries_use_indexes(db_url: str, backend: str) -> None:
    await create_meta_table(db_url, rows=10)
    files = pbi.MetaTable("files")
    async with pbi.Inventory(db_url) as inv:
        # Records the job and creates the tables; settled, or it would be a leaked lease.
        first = await inv.acquire("big", files, max_count=5)
        assert first is not None
        await first.success()
        store = inv.store
        assert isinstance(store, SQLAlchemyStore)
        st = store.statements
        now = datetime.now(UTC).replace(tzinfo=None)
        async with inv.engine.begin() as conn:
            if backend == "mysql":
                await conn.execute(sa.text("SET SESSION max_recursive_iterations = 1000000"))
            await conn.execute(sa.text(FILL[backend].format(n=ATTEMPTS)))
        async with inv.engine.connect() as conn:
            await conn.execute(sa.text(ANALYZE[backend]))
            reads = store.reads
            checks = {
                "job lock and due probes": _sql(conn, st.lock_job, {"p_job": "big"}),
                "retry selection": _sql(
                    conn, st.due_retries, {"p_job": "big", "p_now": now, "p_n": 1}
                ),
                "lease expiry": _sql(
                    conn, st.expire, {"p_job": "big", "p_now": now, "p_max_attempts": 3}
                ),
                "heartbeat": _sql(
                    conn,
                    st.renew,
                    {"p_owner": "someone", "p_tokens": ["abc", "def"], "p_ttl": 60.0},
                ),
                "history": _sql(
                    conn,
                    reads.history,
                    {"p_meta_table": "files", "p_meta_id": 1_000_000, "p_max_attempts": 3},
                ),
                "status of every job": _sql(conn, reads.job_statuses, {"p_max_attempts": 3}),
                "backlog counts": _sql(
                    conn, reads.ledger_summary, {"p_job": "big", "p_max_attempts": 3}
                ),
                "running attempts, as seen now": _sql(
                    conn,
                    reads.attempts(frozenset({"running"}), False, True),
                    {"p_job": "big", "p_max_attempts": 3, "p_limit": 10},
                ),
                "error groups": _sql(conn, reads.error_groups, {"p_job": "big"}),
                "recursion horizon": _sql(conn, reads.oldest_open, {"p_job": "big"}),
            }
            for what, sql in checks.items():
                _assert_indexed(backend, await _plan(conn, backend, sql), what)
