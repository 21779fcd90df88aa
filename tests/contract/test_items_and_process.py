"""A batch's rows (``items``, ``iter_items``) and ``Batch.process`` (docs/concepts.md)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sqlalchemy as sa

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles, statements
from tests.helpers import fetch_all


async def _expected(url: str, start: int, end: int, where: str = "") -> list[dict[str, Any]]:
    return await fetch_all(
        url,
        f"SELECT * FROM files WHERE id BETWEEN :s AND :e {where} ORDER BY id",
        s=start,
        e=end,
    )


def _plain(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    return [(int(r["id"]), int(r["size_in_bytes"]), str(r["kind"])) for r in rows]


async def _collect(batch: pbi.Batch, chunk_size: int) -> list[Mapping[str, Any]]:
    return [row async for row in batch.iter_items(chunk_size=chunk_size)]


# -- items ----------------------------------------------------------------------------------


async def test_items_are_the_rows_of_the_range_in_id_order(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=200)
    await fetch_all(db_url, "DELETE FROM files WHERE id IN (55, 56, 90)")
    async with inventory.lease("it", files, max_count=60) as first:
        pass
    async with inventory.lease("it", files, max_count=60) as batch:
        rows = await batch.items()
        assert len(rows) == batch.count == 60
        assert _plain(rows) == _plain(await _expected(db_url, 63, 123))
        assert set(rows[0]) == {"id", "size_in_bytes", "kind", "imported"}
    assert (first.meta_id_end, batch.meta_id_start, batch.meta_id_end) == (62, 63, 123)


async def test_items_are_read_once_and_cached(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=50)
    async with inventory.lease("cache", files, max_count=20) as batch:
        rows = await batch.items()
        await fetch_all(db_url, "DELETE FROM files WHERE id <= 20")
        with statements(inventory) as seen:
            again = await batch.items()
        assert again is rows
        assert seen == []
        assert [r["id"] for r in again] == list(range(1, 21))


@pytest.mark.parametrize(
    ("where", "sql"),
    [
        ({"kind": "json"}, "AND kind = 'json'"),
        ({"kind": ["csv", "parquet"]}, "AND kind IN ('csv', 'parquet')"),
        (lambda t: t.c.size_in_bytes > 500, "AND size_in_bytes > 500"),
        (sa.column("size_in_bytes") <= 250, "AND size_in_bytes <= 250"),
    ],
    ids=["mapping", "mapping-of-list", "callable", "expression"],
)
async def test_items_pass_the_job_filter(
    inventory: pbi.Inventory,
    make_files: MakeFiles,
    db_url: str,
    where: object,
    sql: str,
) -> None:
    files = await make_files(rows=300, kinds=("csv", "json", "parquet"), where=where)
    seen: list[tuple[int, int, str]] = []
    while (batch := await inventory.acquire("filtered", files, max_count=40)) is not None:
        rows = await batch.items()
        assert len(rows) == batch.count
        assert _plain(rows) == _plain(
            await _expected(db_url, batch.meta_id_start, batch.meta_id_end, sql)
        )
        seen.extend(_plain(rows))
        await batch.success()
    assert seen == _plain(await _expected(db_url, 1, 300, sql))


# -- iter_items -------------------------------------------------------------------------------


async def test_iter_items_yields_the_same_rows_for_any_chunk_size(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=120, where={"kind": "csv"})  # odd ids: gaps between rows
    async with inventory.lease("iter", files, max_count=50) as batch:
        assert batch.count == 50
        listed = await batch.items()
        assert [r["id"] for r in listed] == list(range(1, 100, 2))
        for chunk_size in (1, 2, 7, 49, 50, 51, 1000):
            assert await _collect(batch, chunk_size) == listed, chunk_size


async def test_iter_items_reads_chunk_by_chunk(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    async with inventory.lease("chunks", files) as batch:
        with statements(inventory) as seen:
            rows = await _collect(batch, 30)
    assert len(rows) == 100
    on_files = [s for s in seen if "files" in s]
    assert len(on_files) == 4  # 30 + 30 + 30 + 10: the short chunk ends it


async def test_iter_items_of_a_downstream_batch(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    for _ in range(10):
        async with inventory.lease("up", files, max_count=10):
            pass
    async with inventory.lease("down", pbi.InventorySource("up")) as batch:
        listed = await batch.items()
        for chunk_size in (1, 3, 10, 11):
            assert await _collect(batch, chunk_size) == listed
    assert [r["id"] for r in listed] == list(range(1, 101, 10))


async def test_iter_items_rejects_a_bad_chunk_size(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)
    async with inventory.lease("bad", files) as batch:
        for size in (0, -5):
            with pytest.raises(pbi.InvalidArgument, match="chunk_size"):
                batch.iter_items(chunk_size=size)


# -- process ----------------------------------------------------------------------------------


async def test_process_runs_a_sync_function_in_a_thread_and_stores_its_result(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=100)
    loop_thread = threading.get_ident()
    calls: list[tuple[int, int, str]] = []

    def count(rows: list[Mapping[str, Any]], factor: int, *, label: str) -> dict[str, Any]:
        calls.append((threading.get_ident(), len(rows), label))
        return {"label": label, "bytes": factor * sum(int(r["size_in_bytes"]) for r in rows)}

    batch = await inventory.acquire("proc", files, max_count=40)
    assert batch is not None
    value = await batch.process(count, (2,), {"label": "sync"})
    ((thread, seen, label),) = calls
    assert thread != loop_thread
    assert (seen, label) == (40, "sync")
    (total,) = await fetch_all(db_url, "SELECT SUM(size_in_bytes) AS w FROM files WHERE id <= 40")
    assert value == {"label": "sync", "bytes": 2 * int(total["w"])}
    assert batch.status is pbi.Status.SUCCEEDED
    (attempt,) = await inventory.batches("proc")
    assert (attempt.status, attempt.result) == (pbi.Status.SUCCEEDED, value)


async def test_process_awaits_an_async_function(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=100)
    loop_thread = threading.get_ident()

    async def ids(rows: list[Mapping[str, Any]], offset: int = 0) -> list[int]:
        assert threading.get_ident() == loop_thread
        await anyio.lowlevel.checkpoint()
        return [int(r["id"]) + offset for r in rows]

    async with inventory.lease("aproc", files, max_count=5) as batch:
        assert await batch.process(ids, kwargs={"offset": 1000}) == [1001, 1002, 1003, 1004, 1005]
    (attempt,) = await inventory.batches("aproc")
    assert attempt.status is pbi.Status.SUCCEEDED
    assert attempt.result == [1001, 1002, 1003, 1004, 1005]


async def test_process_takes_the_seeds_args_and_kwargs(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    """``batch.process(func, (3,), {"label": "x"})`` calls ``func(items, 3, label="x")``."""
    files = await make_files(rows=20)

    def tag(rows: list[Mapping[str, Any]], factor: int, *, label: str) -> list[Any]:
        return [label, factor * len(rows)]

    batch = await inventory.acquire("seed_process", files, max_count=5)
    assert batch is not None
    assert await batch.process(tag, (3,), {"label": "x"}) == ["x", 15]
    (attempt,) = await inventory.batches("seed_process")
    assert (attempt.status, attempt.result) == (pbi.Status.SUCCEEDED, ["x", 15])


async def test_process_refuses_args_that_are_not_a_sequence(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    """The old ``process(func, *args, **kwargs)`` spelling fails before anything is written."""
    files = await make_files(rows=20)
    called: list[object] = []
    batch = await inventory.acquire("bad_process", files, max_count=5)
    assert batch is not None
    with pytest.raises(pbi.InvalidArgument, match="args must be a tuple or list"):
        await batch.process(called.append, 3)  # type: ignore[arg-type]
    with pytest.raises(pbi.InvalidArgument, match="kwargs must be a mapping"):
        await batch.process(called.append, (), ["label"])  # type: ignore[arg-type]
    assert called == []
    assert batch.status is pbi.Status.RUNNING
    (attempt,) = await inventory.batches("bad_process")
    assert attempt.status is pbi.Status.RUNNING
    await batch.release()


class Broken(Exception):
    """Raised by the functions under test."""


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_process_records_a_failure_and_re_raises_it(
    inventory: pbi.Inventory, make_files: MakeFiles, kind: str
) -> None:
    files = await make_files(rows=30)

    def sync_fail(rows: list[Mapping[str, Any]]) -> None:
        raise Broken(f"cannot handle {len(rows)} rows")

    async def async_fail(rows: list[Mapping[str, Any]]) -> None:
        raise Broken(f"cannot handle {len(rows)} rows")

    batch = await inventory.acquire("fproc", files, max_count=10)
    assert batch is not None
    with pytest.raises(Broken, match="cannot handle 10 rows"):
        await batch.process(sync_fail if kind == "sync" else async_fail)
    assert batch.status is pbi.Status.FAILED
    (attempt,) = await inventory.batches("fproc")
    assert attempt.status is pbi.Status.FAILED
    assert attempt.error_type is not None and attempt.error_type.endswith("Broken")
    assert attempt.error_message == "cannot handle 10 rows"
    assert attempt.traceback is not None and "_fail" in attempt.traceback
    retry = await inventory.acquire("fproc", files, max_count=10)
    assert retry is not None and (retry.meta_id_start, retry.attempt) == (1, 2)
    await retry.release()


async def test_process_keeps_a_result_that_is_not_json_out_of_the_ledger(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)
    marker = object()
    batch = await inventory.acquire("opaque", files)
    assert batch is not None
    assert await batch.process(lambda rows: marker) is marker
    (attempt,) = await inventory.batches("opaque")
    assert (attempt.status, attempt.result) == (pbi.Status.SUCCEEDED, None)


async def test_process_cancelled_releases_the_range(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)

    async def forever(rows: list[Mapping[str, Any]]) -> None:
        await anyio.sleep_forever()

    batch = await inventory.acquire("cancel", files)
    assert batch is not None
    with anyio.move_on_after(0.2):
        await batch.process(forever)
    assert batch.status is pbi.Status.RELEASED
    again = await inventory.acquire("cancel", files)
    assert again is not None and (again.meta_id_start, again.attempt) == (1, 2)
    await again.success()


async def test_process_of_a_settled_batch_does_not_run_the_function(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    files = await make_files(rows=10)
    calls: list[int] = []
    batch = await inventory.acquire("twice", files)
    assert batch is not None
    await batch.success()
    with pytest.raises(pbi.AlreadySettled):
        await batch.process(lambda rows: calls.append(len(rows)))
    assert calls == []
    (attempt,) = await inventory.batches("twice")
    assert attempt.status is pbi.Status.SUCCEEDED


async def test_process_awaits_an_async_callable_object(
    inventory: pbi.Inventory, make_files: MakeFiles
) -> None:
    """An object whose ``__call__`` is a coroutine function is awaited, not run in a thread."""

    class Sink:
        def __init__(self) -> None:
            self.threads: list[int] = []

        async def __call__(self, rows: list[Mapping[str, Any]]) -> int:
            self.threads.append(threading.get_ident())
            await anyio.lowlevel.checkpoint()
            return len(rows)

    files = await make_files(rows=10)
    sink = Sink()
    batch = await inventory.acquire("callable", files)
    assert batch is not None
    assert await batch.process(sink) == 10
    assert sink.threads == [threading.get_ident()]
    (attempt,) = await inventory.batches("callable")
    assert (attempt.status, attempt.result) == (pbi.Status.SUCCEEDED, 10)
