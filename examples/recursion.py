"""Recursive processing: ingest -> transform -> publish, each job fed by the one before.

``InventorySource("ingest")`` hands ``transform`` the ingest job's *succeeded* attempts,
in id order, and never passes an ingest range that is still running or waiting for a retry.
"""

from __future__ import annotations

import pybatchintory as pbi


async def run_chain(url: str) -> dict[str, int]:
    """Drain the three jobs in turn; return how many batches each processed."""
    files = pbi.MetaTable("files", weight="size_in_bytes")
    transform_source = pbi.InventorySource("ingest")
    publish_source = pbi.InventorySource("transform")
    done = {"ingest": 0, "transform": 0, "publish": 0}
    async with pbi.Inventory(url) as inv:
        async for batch in inv.leases("ingest", files, max_count=1000):
            async with batch:
                batch.result = {"files": len(await batch.items())}
            done["ingest"] += 1
        async for batch in inv.leases("transform", transform_source, max_count=3):
            async with batch:
                upstream = await batch.items()
                batch.result = {"files": sum(item["count"] for item in upstream)}
            done["transform"] += 1
        async for batch in inv.leases("publish", publish_source, max_weight=5_000):
            async with batch:
                batch.result = {"transform_batches": len(await batch.items())}
            done["publish"] += 1
    return done
