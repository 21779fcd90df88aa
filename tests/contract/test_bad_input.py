"""Bad input: a clear exception naming the problem, raised before anything is
written. "Nothing written" is checked with plain SQL: no job row and no attempt row (the
schema's tables may exist).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import pybatchintory as pbi

from tests.contract._ledger import attempts_of, job_row, ledger_size
from tests.contract.conftest import MakeFiles
from tests.helpers import fetch_all

Call = Callable[[pbi.Inventory, str, pbi.MetaTable | str], Awaitable[object]]


def _entry_points(**options: Any) -> list[Call]:
    """The same request through every public way of leasing (and the dry run)."""

    async def lease(inv: pbi.Inventory, job: str, source: pbi.MetaTable | str) -> object:
        async with inv.lease(job, source, **options) as batch:
            pytest.fail(f"bad input was handed a batch: {batch!r}")
        return None

    async def acquire(inv: pbi.Inventory, job: str, source: pbi.MetaTable | str) -> object:
        return await inv.acquire(job, source, **options)

    async def acquire_many(inv: pbi.Inventory, job: str, source: pbi.MetaTable | str) -> object:
        return await inv.acquire_many(job, source, 3, **options)

    async def leases(inv: pbi.Inventory, job: str, source: pbi.MetaTable | str) -> object:
        return [batch async for batch in inv.leases(job, source, iterations=2, **options)]

    async def plan(inv: pbi.Inventory, job: str, source: pbi.MetaTable | str) -> object:
        return await inv.plan(job, source, n=2, **options)

    return [lease, acquire, acquire_many, leases, plan]


async def _nothing_written(db_url: str) -> None:
    assert await ledger_size(db_url) == (0, 0)


# -- the metadata table ------------------------------------------------------------------


async def test_an_unknown_table(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    await make_files(rows=10)
    for call in _entry_points(max_count=10):
        with pytest.raises(pbi.UnknownTable, match="'no_such_table' does not exist"):
            await call(inventory, "job", pbi.MetaTable("no_such_table"))
        with pytest.raises(pbi.UnknownTable, match="'no_such_table' does not exist"):
            await call(inventory, "job", "no_such_table")
    # A table name is an identifier, never spliced into SQL.
    with pytest.raises(pbi.UnknownTable, match="does not exist"):
        await inventory.acquire("job", pbi.MetaTable("files; DROP TABLE files"), max_count=5)
    (row,) = await fetch_all(db_url, "SELECT COUNT(*) AS n FROM files")
    assert row["n"] == 10
    await _nothing_written(db_url)


async def test_an_unknown_column(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    await make_files(rows=10)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"id": "file_id"}, "file_id", "id"),
        ({"weight": "bytes"}, "bytes", "weight"),
        ({"timestamp": "created"}, "created", "timestamp"),
        ({"where": {"flavour": "csv"}}, "flavour", "filter"),
        ({"where": sa.column("flavour") == "csv"}, "flavour", "filter"),
        ({"where": lambda table: sa.column("colour").in_(["red"])}, "colour", "filter"),
    ]
    for options, column, role in cases:
        files = pbi.MetaTable("files", **options)
        for call in _entry_points(max_count=10):
            with pytest.raises(
                pbi.UnknownColumn, match=rf"{role} column '{column}' not found"
            ) as raised:
                await call(inventory, "job", files)
            assert "'files'" in str(raised.value)
    await _nothing_written(db_url)


async def test_a_non_integer_id_column(inventory: pbi.Inventory, db_url: str) -> None:
    await fetch_all(
        db_url,
        "CREATE TABLE named_files (name VARCHAR(64) PRIMARY KEY, size_in_bytes BIGINT)",
    )
    await fetch_all(
        db_url, "INSERT INTO named_files (name, size_in_bytes) VALUES ('a.csv', 1), ('b.csv', 2)"
    )
    files = pbi.MetaTable("named_files", id="name", weight="size_in_bytes")
    with pytest.raises(pbi.InvalidColumn, match=r"id column 'name'.*integer"):
        await inventory.acquire("job", files, max_count=10)
    with pytest.raises(pbi.InvalidColumn, match="id column 'name'"):
        async with inventory.lease("job", files):
            pytest.fail("the body must not run")
    await _nothing_written(db_url)


async def test_a_non_numeric_weight_column(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10, weight="kind")
    with pytest.raises(pbi.InvalidColumn, match=r"weight column 'kind'.*numeric"):
        await inventory.acquire("job", files, max_weight=100)
    await _nothing_written(db_url)


# -- limits and windows ------------------------------------------------------------------


async def test_a_count_cap_that_is_not_a_positive_integer(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    for value in (0, -1, True, False, 1.5, 10.0, "10"):
        for call in _entry_points(max_count=value):
            with pytest.raises(pbi.InvalidArgument, match="max_count") as raised:
                await call(inventory, "job", files)
            assert repr(value) in str(raised.value) or str(value) in str(raised.value)
    await _nothing_written(db_url)


async def test_a_weight_cap_that_is_not_a_finite_number_above_zero(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    """Fractional caps are fine (see test_numeric_weights); NaN, infinities, <= 0 are not."""
    files = await make_files(rows=10)
    bad = (
        0,
        -1,
        -0.5,
        0.0,
        True,
        False,
        "10",
        float("nan"),
        float("inf"),
        float("-inf"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("0"),
    )
    for value in bad:
        for call in _entry_points(max_weight=value):
            with pytest.raises(pbi.InvalidArgument, match="max_weight") as raised:
                await call(inventory, "job", files)
            assert repr(value) in str(raised.value) or str(value) in str(raised.value)
    await _nothing_written(db_url)


async def test_id_start_after_id_end(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    for call in _entry_points(id_start=50, id_end=10, max_count=5):
        with pytest.raises(pbi.InvalidArgument, match=r"id_start \(50\).*id_end \(10\)"):
            await call(inventory, "job", files)
    await _nothing_written(db_url)


async def test_max_weight_without_a_weight_column(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10, weight=None)
    for call in _entry_points(max_weight=100):
        with pytest.raises(pbi.InvalidArgument, match="max_weight needs a weight column"):
            await call(inventory, "job", files)
    await _nothing_written(db_url)
    # max_count alone is fine without a weight column; weight is then 0.
    async with inventory.lease("job", files, max_count=4) as batch:
        assert (batch.count, batch.weight) == (4, 0)


# -- filters ---------------------------------------------------------------------------


def test_a_raw_string_filter_is_refused_at_once() -> None:
    for raw in ("kind = 'csv'", b"kind = 'csv'"):
        with pytest.raises(pbi.InvalidArgument, match="raw SQL string"):
            pbi.MetaTable("files", where=raw)  # type: ignore[arg-type]


async def test_a_callable_filter_returning_a_string_is_refused(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10, where=lambda table: "kind = 'csv'")
    with pytest.raises(pbi.InvalidArgument, match="raw SQL string"):
        await inventory.acquire("job", files, max_count=5)
    await _nothing_written(db_url)


async def test_a_filter_of_the_wrong_kind_is_refused(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    with pytest.raises(pbi.InvalidArgument, match="where="):
        pbi.MetaTable("files", where=42)  # type: ignore[arg-type]
    files = await make_files(rows=10, where=lambda table: 42)
    with pytest.raises(pbi.InvalidArgument, match="callable must return a SQLAlchemy expression"):
        await inventory.acquire("job", files, max_count=5)
    await _nothing_written(db_url)


async def test_a_nul_character_in_a_filter_is_refused(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    await make_files(rows=10)
    filters: list[Any] = [
        {"kind": "csv\x00"},
        {"kind": ["csv", "json\x00"]},
        lambda table: table.c.kind == "a\x00b",
        # A value SQL cannot spell inline: the description falls back to bound parameters.
        lambda table: sa.and_(
            table.c.kind == "a\x00b",
            table.c.size_in_bytes > sa.bindparam("age", timedelta(days=1), type_=sa.Interval()),
        ),
    ]
    for where in filters:
        files = pbi.MetaTable("files", weight="size_in_bytes", where=where)
        for call in _entry_points(max_count=5):
            with pytest.raises(pbi.InvalidArgument, match="NUL character"):
                await call(inventory, "job", files)
    await _nothing_written(db_url)


async def test_filter_values_and_job_names_are_bound_not_spliced(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10, where={"kind": "csv' OR '1'='1"})
    job = "nightly'; DROP TABLE files; --"
    assert await inventory.acquire(job, files, max_count=5) is None
    (row,) = await fetch_all(db_url, "SELECT COUNT(*) AS n FROM files")
    assert row["n"] == 10
    recorded = await job_row(db_url, job)
    assert recorded is not None and recorded["name"] == job


# -- jobs ------------------------------------------------------------------------------


async def test_a_job_reused_with_another_definition_conflicts(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    await make_files(rows=100, name="other_files")
    async with inventory.lease("job", files, max_count=10) as batch:
        assert batch.meta_id_end == 10
    recorded = await job_row(db_url, "job")
    attempts = await attempts_of(db_url, "job")
    conflicting: list[tuple[str, pbi.MetaTable, dict[str, Any]]] = [
        ("other_files", pbi.MetaTable("other_files", weight="size_in_bytes"), {}),
        ("filter", pbi.MetaTable("files", weight="size_in_bytes", where={"kind": "csv"}), {}),
        ("filter", pbi.MetaTable("files", weight="size_in_bytes", where={"kind": "json"}), {}),
        ("id_end", files, {"id_start": None, "id_end": 50}),
        ("id_start", files, {"id_start": 5}),
    ]
    for named, source, window in conflicting:
        with pytest.raises(pbi.JobConflict, match=rf"'job'.*{named}"):
            await inventory.acquire("job", source, max_count=10, **window)
        with pytest.raises(pbi.JobConflict):
            async with inventory.lease("job", source, max_count=10, **window):
                pytest.fail("the body must not run")
    # Another Inventory on the same database sees the same recorded definition.
    async with pbi.Inventory(db_url) as other:
        with pytest.raises(pbi.JobConflict):
            await other.acquire("job", pbi.MetaTable("other_files"), max_count=10)
    assert await job_row(db_url, "job") == recorded
    assert await attempts_of(db_url, "job") == attempts
    # The recorded definition with other limits is fine.
    async with inventory.lease("job", files, max_weight=5000) as batch:
        assert batch.meta_id_start == 11


async def test_a_backfill_window_is_part_of_the_job(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    async with inventory.lease("backfill", files, id_start=1, id_end=30, max_count=10):
        pass
    # A different window is refused; no window at all reuses the recorded one (see
    # test_seed_semantics).
    for window in ({"id_start": 1, "id_end": 31}, {"id_start": 2, "id_end": 30}, {"id_end": 30}):
        with pytest.raises(pbi.JobConflict, match="backfill"):
            await inventory.acquire("backfill", files, max_count=10, **window)
    assert len(await attempts_of(db_url, "backfill")) == 1


async def test_a_bad_job_name(inventory: pbi.Inventory, make_files: MakeFiles, db_url: str) -> None:
    files = await make_files(rows=10)
    for name in ("", "   ", "x" * 256, "nightly\x00"):
        for call in _entry_points(max_count=5):
            with pytest.raises(pbi.InvalidArgument, match="job must be a non-empty name"):
                await call(inventory, name, files)
        operator_calls = [
            inventory.batches(name),
            inventory.set_cursor(name, 5, source=files),
            inventory.mark_done(name, 1, 5, source=files),
            inventory.backlog(name),
        ]
        for operator_call in operator_calls:
            with pytest.raises(pbi.InvalidArgument, match="job must be a non-empty name"):
                await operator_call
    await _nothing_written(db_url)


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("oracle+cx_oracle://scott@localhost/xe", "no pybatchintory adapter for 'oracle'"),
        ("nosuchdb://somewhere/db", "no pybatchintory adapter for 'nosuchdb'"),
        ("not a url at all", "not a database URL"),
    ],
)
def test_an_unknown_url_scheme(url: str, match: str) -> None:
    with pytest.raises(pbi.UnsupportedURL, match=match):
        pbi.Inventory(url)


async def test_an_unknown_scheme_for_the_metadata_database(
    inventory: pbi.Inventory, db_url: str
) -> None:
    files = pbi.MetaTable("files", url="nosuchdb://somewhere/db")
    with pytest.raises(pbi.UnsupportedURL, match="nosuchdb"):
        await inventory.acquire("job", files, max_count=5)
    await _nothing_written(db_url)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"owner": "worker\x00"}, "owner", id="owner-nul"),
        pytest.param({"owner": "w" * 256}, "owner", id="owner-long"),
        pytest.param({"code_version": "abc\x00"}, "code_version", id="code-version-nul"),
        pytest.param({"code_version": "v" * 256}, "code_version", id="code-version-long"),
    ],
)
async def test_inventory_settings_no_store_can_record(
    make_files: MakeFiles, db_url: str, options: dict[str, Any], named: str
) -> None:
    files = await make_files(rows=10)
    with pytest.raises(pbi.InvalidArgument, match=named):
        async with pbi.Inventory(db_url, **options) as inv:
            # Were it accepted, some stores could not record this failure.
            with pytest.raises(ValueError):
                async with inv.lease("job", files, max_count=5):
                    raise ValueError("a failure records owner and code_version")
    await _nothing_written(db_url)


async def test_bad_call_options(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    for poll_interval in (0, -1, float("nan"), True):
        with pytest.raises(pbi.InvalidArgument, match="poll_interval"):
            inventory.lease("job", files, wait=True, poll_interval=poll_interval)
    for timeout in (0, -1.5, float("inf"), True):
        with pytest.raises(pbi.InvalidArgument, match="timeout"):
            await inventory.acquire("job", files, timeout=timeout)
        with pytest.raises(pbi.InvalidArgument, match="timeout"):
            async with inventory.lease("job", files, timeout=timeout):
                pytest.fail("the body must not run")
    for n in (0, -2, True, 1.5):
        with pytest.raises(pbi.InvalidArgument, match="n must be a positive integer"):
            await inventory.acquire_many("job", files, n)  # type: ignore[arg-type]
    for iterations in (0, True):
        with pytest.raises(pbi.InvalidArgument, match="iterations"):
            async for _ in inventory.leases("job", files, iterations=iterations):
                pytest.fail("nothing may be leased")
    await _nothing_written(db_url)
    batch = await inventory.acquire("job", files, max_count=5)
    assert batch is not None
    with pytest.raises(pbi.InvalidArgument, match="chunk_size"):
        batch.iter_items(chunk_size=0)
    await batch.success()
