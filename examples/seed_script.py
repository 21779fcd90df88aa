"""A script in the seed's synchronous spelling, configured from ``PYBATCHINTORY_*`` / ``.env``.

Run it as a program (``python -m examples.seed_script``) with, for example, a ``.env``::

    PYBATCHINTORY_INVENTORY_URL=sqlite+aiosqlite:///inventory.db
    PYBATCHINTORY_META_TABLE=files
    PYBATCHINTORY_META_WEIGHT=size_in_bytes

It drains the job ``incremental_job`` in batches of at most 10,000 bytes: every batch is
processed by ``batch.process(func, args, kwargs)``, which records success with the function's
result, or the failure and re-raises it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pybatchintory import acquire_batch, acquire_batches


def summarise(items: list[Mapping[str, Any]], unit: int, *, label: str) -> dict[str, Any]:
    """What one batch did: its label, rows and size in ``unit``."""
    size = sum(int(item["size_in_bytes"]) for item in items)
    return {"label": label, "rows": len(items), "size": size // unit}


def main(iterations: int | None = None) -> int:
    """Process the next batch by hand, then the rest with ``process``; return how many."""
    batch = acquire_batch(job="incremental_job", weight=10_000)
    if batch is None:
        return 0
    try:
        summarise(batch.items, 1, label="first")
        batch.success()
    except Exception as exc:
        batch.error(exc)
        raise
    done = 1
    for batch in acquire_batches(job="incremental_job", weight=10_000, iterations=iterations):
        batch.process(summarise, (1024,), {"label": "kib"})
        done += 1
    return done


if __name__ == "__main__":
    print(f"processed {main()} batches")
