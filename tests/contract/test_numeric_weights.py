"""Numeric weights: FLOAT, REAL and NUMERIC weight columns, and fractional ``max_weight``.

The ledger's ``weight`` keeps the exact sum for a ``NUMERIC`` column and the float sum
(to ten decimal places) otherwise; 0.0.8's own tests used a float ``size_in_mib``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi

from tests.helpers import fetch_all

ROWS = 10


async def _weighted_table(
    url: str, name: str, column: sa.types.TypeEngine[Any], sizes: Sequence[object]
) -> pbi.MetaTable:
    table = sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("file", sa.String(64)),
        sa.Column("size_in_mib", column),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(
                table.insert(),
                [
                    {"id": i + 1, "file": f"/data/{i + 1}.bin", "size_in_mib": size}
                    for i, size in enumerate(sizes)
                ],
            )
    finally:
        await engine.dispose()
    return pbi.MetaTable(name, weight="size_in_mib")


async def _ledger(url: str, job: str) -> list[tuple[int, int, int, float]]:
    rows = await fetch_all(
        url,
        "SELECT meta_id_start, meta_id_end, count, weight FROM inventory "
        "WHERE job = :job ORDER BY id",
        job=job,
    )
    return [
        (int(r["meta_id_start"]), int(r["meta_id_end"]), int(r["count"]), float(r["weight"]))
        for r in rows
    ]


async def _drain(inv: pbi.Inventory, job: str, source: pbi.MetaTable, **caps: Any) -> list[Any]:
    weights = []
    async for batch in inv.leases(job, source, **caps):
        async with batch:
            weights.append(batch.weight)
    return weights


async def test_a_float_column_with_a_fractional_cap(inventory: pbi.Inventory, db_url: str) -> None:
    files = await _weighted_table(db_url, "floats", sa.Double(), [0.4] * ROWS)
    weights = await _drain(inventory, "floats", files, max_weight=1.5)
    assert [round(float(w), 9) for w in weights] == [1.2, 1.2, 1.2, 0.4]
    assert all(isinstance(w, float) for w in weights)
    ledger = await _ledger(db_url, "floats")
    assert [(s, e, c) for s, e, c, _ in ledger] == [(1, 3, 3), (4, 6, 3), (7, 9, 3), (10, 10, 1)]
    assert [round(w, 9) for *_, w in ledger] == [1.2, 1.2, 1.2, 0.4]
    # What the ledger reads back agrees with what was handed out, and audit sees no change.
    attempts = sorted(await inventory.batches("floats"), key=lambda a: a.id)
    assert [round(float(a.weight), 9) for a in attempts] == [1.2, 1.2, 1.2, 0.4]
    assert await inventory.audit("floats") == []


async def test_a_numeric_column_keeps_the_exact_sum(inventory: pbi.Inventory, db_url: str) -> None:
    sizes = [Decimal("0.4")] * ROWS
    files = await _weighted_table(db_url, "decimals", sa.Numeric(10, 2), sizes)
    first = await inventory.acquire("decimals", files, max_weight=Decimal("1.5"))
    assert first is not None and (first.count, first.meta_id_end) == (3, 3)
    assert first.weight == Decimal("1.2") or first.weight == pytest.approx(1.2)
    await first.success()
    (attempt,) = await inventory.batches("decimals")
    # Exact where the database has decimals (PostgreSQL, MariaDB); SQLite stores reals.
    assert attempt.weight == Decimal("1.2") or attempt.weight == pytest.approx(1.2)
    backlog = await inventory.backlog("decimals")
    assert backlog.count == 7
    assert backlog.weight == Decimal("2.8") or backlog.weight == pytest.approx(2.8)
    rest = await _drain(inventory, "decimals", files, max_weight=1.5)
    assert len(rest) == 3
    assert await inventory.audit("decimals") == []


async def test_a_fractional_cap_on_an_integer_column(inventory: pbi.Inventory, db_url: str) -> None:
    files = await _weighted_table(db_url, "ints", sa.BigInteger(), [1] * ROWS)
    weights = await _drain(inventory, "ints", files, max_weight=2.5)
    assert weights == [2, 2, 2, 2, 2]
    assert all(type(w) is int for w in weights)  # whole weights stay integers


async def test_a_real_column_is_retried_with_its_weight(
    db_url: str,
) -> None:
    async with pbi.Inventory(db_url, max_attempts=2) as inv:
        files = await _weighted_table(db_url, "reals", sa.REAL(), [0.25] * 4)
        with pytest.raises(RuntimeError):
            async with inv.lease("reals", files, max_weight=0.6) as batch:
                assert (batch.count, batch.weight) == (2, 0.5)
                raise RuntimeError("once")
        async with inv.lease("reals", files, max_weight=0.6) as again:
            assert (again.meta_id_start, again.attempt, again.weight) == (1, 2, 0.5)
        backlog = await inv.backlog("reals")
        assert (backlog.count, backlog.weight) == (2, 0.5)


async def test_ten_rows_of_point_four_are_not_weighed_as_zero(
    inventory: pbi.Inventory, db_url: str
) -> None:
    """0.0.8's float sizes: a whole-number cap, fractional rows (was count=2 weight=0)."""
    files = await _weighted_table(db_url, "mib", sa.Double(), [0.4] * ROWS)
    batch = await inventory.acquire("mib", files, max_weight=2)
    assert batch is not None
    assert (batch.count, round(float(batch.weight), 9)) == (5, 2.0)
    await batch.success()
