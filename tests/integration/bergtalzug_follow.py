"""Run in the bergtalzug venv by test_bergtalzug.py: follow mode, ``stop()``, ``pipeline.stop()``.

``python tests/integration/bergtalzug_follow.py URL`` prints one JSON line with the
feeders' counts; the test reads the ledger with plain SQL.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory as pbi
from pybatchintory.integrations.bergtalzug import BatchFeeder, import_bergtalzug

bergtalzug = import_bergtalzug()


def _pipeline(feeder: BatchFeeder, seconds: float) -> Any:
    base: Any = bergtalzug.ETLPipeline  # bergtalzug is untyped here

    class Pipeline(base):  # type: ignore[misc]
        async def refill_queue(self, count: int) -> list[Any]:
            return await feeder.refill_queue(count)

    async def work(item: Any) -> Any:
        await asyncio.sleep(seconds)
        return item

    config = bergtalzug.ETLPipelineConfig(
        stages=[bergtalzug.StageConfig(name="work", workers=2, queue_size=8)],
        queue_refresh_rate=0.01,
        stats_interval_seconds=0,
    )
    pipeline = Pipeline(config)
    pipeline.register_stage_handler("work", work)
    return pipeline


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def follow(inv: pbi.Inventory, url: str, files: pbi.MetaTable) -> dict[str, Any]:
    """Drain 1,000 rows, keep waiting, take 500 new rows, end on ``feeder.stop()``."""
    feeder = BatchFeeder(
        inv, "follow", files, max_count=100, max_outstanding=4, follow=True, poll_interval=0.05
    )
    run = asyncio.ensure_future(feeder.run(_pipeline(feeder, 0.001)))
    await _until(lambda: feeder.counts["succeeded"] == 10)
    await asyncio.sleep(0.3)
    waited = not run.done()  # drained, yet the pipeline goes on in follow mode
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO files (id, size_in_bytes, kind) VALUES (:id, 1, 'csv')"),
            [{"id": i} for i in range(1001, 1501)],
        )
    await engine.dispose()
    await _until(lambda: feeder.counts["succeeded"] == 15)
    feeder.stop()
    results = await asyncio.wait_for(run, 10)
    return {"waited": waited, "results": len(results), **feeder.counts}


async def pipeline_stop(inv: pbi.Inventory, files: pbi.MetaTable) -> dict[str, Any]:
    """``pipeline.stop()`` mid-run: the items it drops are released."""
    feeder = BatchFeeder(inv, "stopped", files, max_count=100, max_outstanding=4)
    pipeline = _pipeline(feeder, 0.2)
    run = asyncio.ensure_future(feeder.run(pipeline))
    await _until(lambda: feeder.counts["succeeded"] >= 2)
    await pipeline.stop()
    try:
        await asyncio.wait_for(run, 10)
    except asyncio.CancelledError:
        pass  # bergtalzug's run() re-raises the cancelled refill task
    return dict(feeder.counts)


async def main(url: str) -> dict[str, Any]:
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url, lease_ttl=30) as inv:
        return {
            "follow": await follow(inv, url, files),
            "stopped": await pipeline_stop(inv, files),
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
