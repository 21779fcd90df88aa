"""Helpers shared by the leasing tests of the contract suite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pybatchintory as pbi

from tests.helpers import default_size

__all__ = ("drain", "new_rows")


def new_rows(start: int, end: int) -> list[dict[str, object]]:
    """Metadata rows ``start..end`` imported just now."""
    imported = datetime.now(UTC).replace(tzinfo=None)
    return [
        {"id": i, "size_in_bytes": default_size(i), "kind": "csv", "imported": imported}
        for i in range(start, end + 1)
    ]


async def drain(
    inv: pbi.Inventory, job: str, files: pbi.MetaTable, **limits: Any
) -> list[pbi.Batch]:
    """Lease and settle every range of ``job`` that is available now."""
    taken: list[pbi.Batch] = []
    while True:
        try:
            async with inv.lease(job, files, **limits) as batch:
                taken.append(batch)
        except pbi.NoBatchAvailable:
            return taken
