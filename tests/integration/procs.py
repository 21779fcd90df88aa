"""A worker process for the multi-process and crash tests.

``python -m tests.integration.procs URL JOB MODE OUT [MAX_COUNT] [TTL]``:

- ``drain``: lease and succeed until nothing is left, with small random pauses; one JSON
  line per succeeded range in OUT.
- ``hold``: lease one range, report it, then sleep forever inside the body.
- ``late``: lease one range, report it, sleep 1 s, then ``success()``; report whether the
  settle raised ``LeaseLost``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys

import pybatchintory as pbi


def _write(out: str, record: dict[str, object]) -> None:
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


async def main(url: str, job: str, mode: str, out: str, max_count: int, ttl: float) -> None:
    files = pbi.MetaTable("files", weight="size_in_bytes")
    rng = random.Random(os.getpid())
    async with pbi.Inventory(url, lease_ttl=ttl) as inv:
        if mode == "drain":
            while True:
                try:
                    async with inv.lease(job, files, max_count=max_count) as batch:
                        await asyncio.sleep(rng.uniform(0, 0.01))
                        record = {
                            "start": batch.meta_id_start,
                            "end": batch.meta_id_end,
                            "count": batch.count,
                            "pid": os.getpid(),
                        }
                except pbi.NoBatchAvailable:
                    return
                _write(out, record)
                await asyncio.sleep(rng.uniform(0, 0.005))
        async with inv.lease(job, files, max_count=max_count) as batch:
            _write(out, {"acquired": [batch.meta_id_start, batch.meta_id_end], "id": batch.id})
            if mode == "hold":
                await asyncio.sleep(3600)
            await asyncio.sleep(1.0)
            try:
                await batch.success()
                _write(out, {"settled": "succeeded"})
            except pbi.LeaseLost as exc:
                _write(out, {"settled": "lease lost", "message": str(exc)})


if __name__ == "__main__":
    url, job, mode, out = sys.argv[1:5]
    max_count = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    ttl = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
    asyncio.run(main(url, job, mode, out, max_count, ttl))
