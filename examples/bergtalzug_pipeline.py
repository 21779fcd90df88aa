"""A bergtalzug 0.2.0 pipeline fed by pybatchintory: fetch -> transform -> store.

Each work item is one leased batch of the ``files`` table; the pipeline's completion
callback records it (``succeeded``, or ``failed`` with the stage's exception). Run it on
Python >= 3.13 with bergtalzug installed (``make venv-bergtalzug``)::

    .venv-bergtalzug/bin/python examples/bergtalzug_pipeline.py \
        sqlite+aiosqlite:///inventory.db --job sizes --max-count 1000

``--fail-every N`` makes the transform stage fail the first attempt of every N-th batch
(they are retried); ``--cancel-after N`` cancels the run after N items ended (what no
callback settled is released). It prints the feeder's counts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import pybatchintory as pbi
from pybatchintory.integrations.bergtalzug import BatchFeeder, import_bergtalzug

bergtalzug = import_bergtalzug()


def build_pipeline(feeder: BatchFeeder, *, max_count: int, fail_every: int | None) -> Any:
    """The three-stage pipeline, its first queue refilled by ``feeder``."""
    base: Any = bergtalzug.ETLPipeline  # bergtalzug is untyped here

    class SizesPipeline(base):  # type: ignore[misc]
        async def refill_queue(self, count: int) -> list[Any]:
            return await feeder.refill_queue(count)

    async def fetch(item: Any) -> Any:
        batch: pbi.Batch = item.data
        rows = await batch.items()
        item.data = {
            "start": batch.meta_id_start,
            "attempt": batch.attempt,
            "sizes": [row["size_in_bytes"] for row in rows],
        }
        return item

    def transform(item: Any) -> Any:  # runs in a thread
        data = item.data
        position = (data["start"] - 1) // max_count
        if fail_every and data["attempt"] == 1 and position % fail_every == 0:
            raise ValueError(f"transform failed on the batch starting at {data['start']}")
        data["total"] = sum(data["sizes"])
        return item

    async def store(item: Any) -> Any:
        await asyncio.sleep(0.001)  # a real pipeline writes item.data["total"] somewhere
        return item

    config = bergtalzug.ETLPipelineConfig(
        pipeline_name="sizes",
        stages=[
            bergtalzug.StageConfig(name="fetch", workers=4, queue_size=16),
            bergtalzug.StageConfig(
                name="transform",
                execution_type=bergtalzug.ExecutionType.THREAD,
                workers=2,
                queue_size=16,
            ),
            bergtalzug.StageConfig(name="store", workers=2, queue_size=16),
        ],
        queue_refresh_rate=0.01,
        stats_interval_seconds=0,
    )
    pipeline = SizesPipeline(config)
    pipeline.register_stage_handler("fetch", fetch)
    pipeline.register_stage_handler("transform", transform)
    pipeline.register_stage_handler("store", store)
    return pipeline


async def main(
    url: str,
    job: str,
    *,
    max_count: int = 1000,
    fail_every: int | None = None,
    cancel_after: int | None = None,
    lease_ttl: float = 30.0,
) -> dict[str, int]:
    """Run the pipeline over ``job`` until drained (or cancelled); the feeder's counts."""
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url, lease_ttl=lease_ttl, max_attempts=3) as inv:
        feeder = BatchFeeder(
            inv, job, files, max_count=max_count, max_outstanding=8, poll_interval=0.05
        )
        pipeline = build_pipeline(feeder, max_count=max_count, fail_every=fail_every)
        run = asyncio.ensure_future(feeder.run(pipeline))
        if cancel_after is not None:
            while not run.done():
                ended = feeder.counts["succeeded"] + feeder.counts["failed"]
                if ended >= cancel_after and feeder.outstanding:  # with items in flight
                    run.cancel()
                    break
                await asyncio.sleep(0.005)
        try:
            await run
        except asyncio.CancelledError:
            if not run.cancelled():
                raise
        return dict(feeder.counts)


def cli() -> None:
    """``python examples/bergtalzug_pipeline.py URL [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--job", default="sizes")
    parser.add_argument("--max-count", type=int, default=1000)
    parser.add_argument("--fail-every", type=int)
    parser.add_argument("--cancel-after", type=int)
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    args = parser.parse_args()
    counts = asyncio.run(
        main(
            args.url,
            args.job,
            max_count=args.max_count,
            fail_every=args.fail_every,
            cancel_after=args.cancel_after,
            lease_ttl=args.lease_ttl,
        )
    )
    print(json.dumps(counts))


if __name__ == "__main__":
    cli()
