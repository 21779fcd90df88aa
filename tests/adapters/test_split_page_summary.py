"""A weighted page read as a plain-sum head and a windowed tail says what the whole page says.

On PostgreSQL a weight cap's page summary sums the first three quarters of the page with
plain aggregates and runs the running sum (a window function) over the rest only, when every
head row fits (``BoundMetaTable._split_summary``). These tests compare it with the summary
written out in Python (``naive_summarize``) over pages that end before, inside and after the
head; caps hit in the head, in the tail and never; negative, zero and NULL weights; a filter.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import pybatchintory as pbi
from pybatchintory.protocols import BindContext, PageRequest, PageSummary, split_weighted_page
from pybatchintory.sources import BoundMetaTable

from tests.conftest import DatabaseFactory
from tests.unit.test_planning_properties import naive_summarize

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(any_db_url_factory: DatabaseFactory) -> str:
    return any_db_url_factory("postgres")


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(pg_url)
    yield engine
    await engine.dispose()


async def _table(engine: AsyncEngine, name: str, rows: list[tuple[int, int | None, str]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, size BIGINT, kind TEXT)")
        )
        await conn.execute(
            sa.text(f"INSERT INTO {name} (id, size, kind) VALUES (:id, :size, :kind)"),
            [{"id": i, "size": w, "kind": k} for i, w, k in rows],
        )


async def _bound(engine: AsyncEngine, source: pbi.MetaTable) -> BoundMetaTable:
    context = BindContext(
        store=None,  # type: ignore[arg-type]  # a MetaTable does not read the ledger
        inventory_engine=engine,
        engine_for=lambda url: engine,
    )
    return await source.bind(context)


def _scenario(seed: int) -> list[tuple[int, int | None, str]]:
    """Ids with gaps; weights mostly 1..1000, some zero, NULL or negative (seeded)."""
    rng = random.Random(seed)
    rows: list[tuple[int, int | None, str]] = []
    meta_id = 0
    for _ in range(3000):
        meta_id += rng.choice((1, 1, 1, 2, 7))
        roll = rng.random()
        weight: int | None
        if roll < 0.03:
            weight = None
        elif roll < 0.06:
            weight = 0
        elif roll < 0.07 and seed % 2:
            weight = -rng.randint(1, 400)
        else:
            weight = rng.randint(1, 1000)
        rows.append((meta_id, weight, rng.choice(("csv", "json"))))
    return rows


def _requests(rows: list[tuple[int, int | None, str]], seed: int) -> list[PageRequest]:
    rng = random.Random(seed)
    ids = [i for i, _, _ in rows]
    out: list[PageRequest] = []
    for _ in range(60):
        after = rng.choice(ids[:-50])
        limit = rng.choice((64, 100, 256, 1000, 1109, 2000))
        end = rng.choice((None, None, after + rng.randint(1, 3000)))
        # Caps around the head's sum (hit in the head or in the tail), tiny and huge ones.
        cap = rng.choice((1, 500, 50_000, 300 * limit, 375 * limit, 450 * limit, 10**12))
        out.append(PageRequest(after=after, end=end, limit=limit, max_weight=cap))
    return out


def _filtered(rows: list[tuple[int, int | None, str]], kind: str | None) -> list[tuple[int, int]]:
    return [(i, w or 0) for i, w, k in rows if kind is None or k == kind]


def _exact(page: PageSummary) -> PageSummary:
    """Weights as exact numbers: the database reads a BIGINT sum back as a ``Decimal``."""
    return PageSummary(
        rows=page.rows,
        first_id=page.first_id,
        first_weight=Decimal(page.first_weight),
        last_id=page.last_id,
        weight=Decimal(page.weight),
        fit_rows=page.fit_rows,
        fit_last_id=page.fit_last_id,
        fit_weight=Decimal(page.fit_weight),
    )


def _split_sql(source: BoundMetaTable, request: PageRequest) -> str:
    statement = source._page_query(*source._shape(request))
    return str(statement.compile(source.engine.sync_engine))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", [None, "csv"])
async def test_page_summaries_agree(engine: AsyncEngine, seed: int, kind: str | None) -> None:
    rows = _scenario(seed)
    await _table(engine, "pages", rows)
    where = None if kind is None else {"kind": kind}
    source = await _bound(engine, pbi.MetaTable("pages", weight="size", where=where))
    expected_rows = _filtered(rows, kind)
    for request in _requests(rows, seed):
        assert split_weighted_page(request.limit or 0) is not None
        assert "pbi_head" in _split_sql(source, request), "the split summary was not used"
        got = await source.summarize(request, None)
        want = naive_summarize(expected_rows, request)
        assert _exact(got) == _exact(want), request


async def test_the_head_alone_decides_nothing_it_cannot(engine: AsyncEngine) -> None:
    """Every way the head can fail to fit whole falls back to the whole page's running sum."""
    # Row weights: a negative one in the head, then a head whose sum is over the cap.
    rows: list[tuple[int, int | None, str]] = [
        (i, -5 if i == 10 else 10, "csv") for i in range(1, 401)
    ]
    await _table(engine, "edges", rows)
    source = await _bound(engine, pbi.MetaTable("edges", weight="size"))
    expected_rows = _filtered(rows, None)
    cases = [
        PageRequest(after=0, end=None, limit=200, max_weight=1000),  # negative weight in head
        PageRequest(after=100, end=None, limit=200, max_weight=1000),  # head sum 1500 > cap
        PageRequest(after=100, end=None, limit=200, max_weight=1500),  # head sum == cap
        PageRequest(after=100, end=None, limit=200, max_weight=1505),  # one more row fits
        PageRequest(after=390, end=None, limit=200, max_weight=1000),  # page ends in the head
        PageRequest(after=400, end=None, limit=200, max_weight=1000),  # empty page
        PageRequest(after=100, end=250, limit=200, max_weight=10**9),  # window ends in the tail
        PageRequest(after=100, end=160, limit=200, max_weight=10**9),  # window ends in the head
    ]
    for request in cases:
        got = await source.summarize(request, None)
        assert _exact(got) == _exact(naive_summarize(expected_rows, request)), request


async def test_small_and_unweighted_pages_stay_in_one_piece(engine: AsyncEngine) -> None:
    await _table(engine, "small", [(i, 1, "csv") for i in range(1, 11)])
    source = await _bound(engine, pbi.MetaTable("small", weight="size"))
    small = PageRequest(after=0, end=None, limit=63, max_weight=5)
    assert split_weighted_page(63) is None
    assert "pbi_head" not in _split_sql(source, small)
    assert "p_head_limit" not in source._params(small, source._shape(small))
    unweighted = PageRequest(after=0, end=None, limit=1000, max_weight=None)
    assert "pbi_head" not in _split_sql(source, unweighted)
    split = PageRequest(after=0, end=None, limit=1000, max_weight=5)
    params: dict[str, Any] = source._params(split, source._shape(split))
    assert (params["p_head_limit"], params["p_tail_limit"]) == (750, 250)
    # A first page's statement comes with every parameter but the cursor.
    found = source.first_page(engine, dataclasses.replace(split, after=None))
    assert found is not None
    assert (found[2]["p_head_limit"], found[2]["p_tail_limit"]) == (750, 250)
    assert "p_after" not in found[2]
