"""One benchmark worker process on pybatchintory: leases until told to stop.

``python -m benchmarks._worker URL TABLE JOB CAPS_JSON START_AT SECONDS MAX_LEASES``
prints one JSON object: acquire latencies, lease (acquire + success) latencies, the
ranges it was handed, and errors. The job must exist already (the parent records it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pybatchintory as pbi


async def run(
    url: str,
    table: str,
    job: str,
    caps: dict[str, int],
    start_at: float,
    seconds: float,
    max_leases: int,
) -> dict[str, Any]:
    acquire: list[float] = []
    lease: list[float] = []
    ranges: list[tuple[int, int]] = []
    errors: list[str] = []
    async with pbi.Inventory(url) as inv:
        source = pbi.MetaTable(table, weight="size_in_bytes")
        await inv.plan(job, source, n=1, **caps)  # bind and warm up; writes nothing
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        deadline = began + seconds
        while time.perf_counter() < deadline and len(lease) < max_leases:
            t0 = time.perf_counter()
            try:
                batch = await inv.acquire(job, source, **caps)
                t1 = time.perf_counter()
                if batch is None:
                    break
                await batch.success()
            except pbi.PybatchintoryError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            t2 = time.perf_counter()
            acquire.append(t1 - t0)
            lease.append(t2 - t0)
            ranges.append((batch.meta_id_start, batch.meta_id_end))
        elapsed = time.perf_counter() - began
    return {
        "acquire": acquire,
        "lease": lease,
        "ranges": ranges,
        "errors": errors,
        "elapsed": elapsed,
    }


def main() -> None:
    url, table, job, caps, start_at, seconds, max_leases = sys.argv[1:8]
    result = asyncio.run(
        run(url, table, job, json.loads(caps), float(start_at), float(seconds), int(max_leases))
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
