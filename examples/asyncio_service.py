"""A plain asyncio service: consume a job until SIGTERM (or Ctrl-C), then exit cleanly.

Run it against an inventory database that holds a ``files`` table (the demo makes one)::

    python -m examples.asyncio_service sqlite+aiosqlite:///inventory.db

The first SIGTERM or SIGINT lets the batches in hand finish and be recorded, then the
program prints what it did and exits 0; a second one cancels them (they are recorded
``released``, due again at once) and exits like that signal would. Run it again and it
goes on where it stopped. ``tests/integration/test_service_example.py`` does all of that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pybatchintory as pbi

FILES = pbi.MetaTable("files", weight="size_in_bytes")
JOB = "thumbnails"


def make_thumbnail(row: Mapping[str, Any]) -> int:
    """The work for one file (here: a size, computed)."""
    return int(row["size_in_bytes"]) // 10


async def serve(stop: asyncio.Event, url: str, *, seconds_per_batch: float) -> pbi.ConsumeReport:
    """Consume ``JOB`` until ``stop`` is set; what the run did."""

    async def handle(batch: pbi.Batch) -> dict[str, int]:
        rows = await batch.items()
        await asyncio.sleep(seconds_per_batch)  # the I/O a real service would wait for
        sizes = [make_thumbnail(row) for row in rows]
        return {"files": len(rows), "bytes": sum(sizes)}

    async with pbi.Inventory(url, lease_ttl=10) as inv:
        print(f"consuming {JOB!r}", flush=True)
        return await inv.consume(
            JOB, FILES, handle, max_count=10, concurrency=2, poll_interval=0.2, stop=stop
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the service until it is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the inventory database (SQLAlchemy URL)")
    parser.add_argument("--seconds-per-batch", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def service(stop: asyncio.Event) -> pbi.ConsumeReport:
        return await serve(stop, args.url, seconds_per_batch=args.seconds_per_batch)

    report = pbi.run_service(service)
    print(json.dumps({"succeeded": report.succeeded, "failed": report.failed}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
