"""A FastAPI app on pybatchintory: a consumer, per-request leases, a stream, backfills.

Run it (the metadata table ``files`` lives in the inventory database here)::

    export PBI_EXAMPLE_URL=sqlite+aiosqlite:///inventory.db
    uvicorn examples.fastapi_app:app --timeout-graceful-shutdown 5

- a consumer works through job ``thumbnails`` in the background, one batch at a time;
- ``POST /work`` leases a batch of job ``requests`` for the request (200 means recorded);
- ``GET /stream`` streams the rows of a batch of job ``exports``;
- ``POST /backfills/{name}?id_start=..&id_end=..`` records a backfill and runs it after
  the response (409 when ``name`` exists with another window, 422 for a bad window);
- ``/inventory/jobs``, ``/inventory/jobs/{job}/backlog``, ``.../errors``: the ledger.

``PBI_EXAMPLE_WORK_SECONDS`` is how long each batch takes (default 0.2 s).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from fastapi.responses import StreamingResponse

import pybatchintory as pbi
from pybatchintory.integrations import fastapi as pbi_fastapi

URL = os.environ.get("PBI_EXAMPLE_URL", "sqlite+aiosqlite:///pybatchintory.db")
WORK_SECONDS = float(os.environ.get("PBI_EXAMPLE_WORK_SECONDS", "0.2"))
LEASE_TTL = float(os.environ.get("PBI_EXAMPLE_LEASE_TTL", "30"))

files = pbi.MetaTable("files", weight="size_in_bytes")


async def make_thumbnails(batch: pbi.Batch) -> dict[str, int]:
    """The consumer's work on one batch (here: pretend, and count the rows)."""
    rows = await batch.items()
    await asyncio.sleep(WORK_SECONDS)
    return {"thumbnails": len(rows)}


async def reindex(batch: pbi.Batch) -> dict[str, int]:
    """A backfill's work on one batch."""
    await asyncio.sleep(WORK_SECONDS)
    return {"reindexed": batch.count}


app = FastAPI(
    title="pybatchintory example",
    lifespan=pbi_fastapi.inventory_lifespan(
        URL,
        lease_ttl=LEASE_TTL,
        consumers=[pbi_fastapi.Consumer("thumbnails", files, make_thumbnails, max_count=50)],
        backfills={"reindex-": pbi_fastapi.Backfill(files, reindex, max_count=100)},
        resume_backfills=True,
        grace=2.0,
    ),
)
pbi_fastapi.install_exception_handlers(app)
app.include_router(pbi_fastapi.status_router(enable_retry=True), prefix="/inventory")

RequestBatch = Annotated[
    pbi.Batch,
    Depends(pbi_fastapi.lease_dependency("requests", files, max_count=20), scope="function"),
]


@app.post("/work")
async def work(
    batch: RequestBatch, seconds: float = WORK_SECONDS, reject: bool = False
) -> dict[str, Any]:
    """Process one batch in ``seconds``; ``?reject=true`` gives it back with a 400."""
    if reject:
        raise HTTPException(400, "rejected: the batch goes back, no attempt used")
    await asyncio.sleep(seconds)
    batch.result = {"rows": batch.count}
    return {"batch": batch.id, "start": batch.meta_id_start, "end": batch.meta_id_end}


@app.get("/stream")
async def stream(inv: pbi_fastapi.InventoryDep) -> StreamingResponse:
    """Stream the rows of one batch of ``exports``; a client gone mid-stream releases it."""
    batch = await inv.acquire("exports", files, max_count=20)
    if batch is None:
        raise HTTPException(404, "nothing to export")

    async def rows() -> AsyncIterator[bytes]:
        async with batch:  # the stream owns the batch: done -> succeeded, cut -> released
            async for row in batch.iter_items(chunk_size=5):
                yield f"{row['id']},{row['size_in_bytes']}\n".encode()
                await asyncio.sleep(WORK_SECONDS / 10)

    return StreamingResponse(rows(), media_type="text/csv")


@app.post("/backfills/{name}", status_code=202)
async def backfill(
    name: str,
    id_start: int,
    id_end: int,
    background_tasks: BackgroundTasks,
    inv: pbi_fastapi.InventoryDep,
) -> pbi_fastapi.BackfillStarted:
    """Record the backfill ``reindex-{name}`` of ``[id_start, id_end]`` and start it."""
    return await pbi_fastapi.schedule_backfill(
        background_tasks,
        inv,
        f"reindex-{name}",
        pbi_fastapi.Backfill(files, reindex, max_count=100),
        id_start=id_start,
        id_end=id_end,
    )
