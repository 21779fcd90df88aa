"""The smallest round trip of the contract: lease one range and read it back."""

from __future__ import annotations

import pybatchintory as pbi

from tests.contract.conftest import MakeFiles


async def test_a_lease_round_trip(inventory: pbi.Inventory, make_files: MakeFiles) -> None:
    files = await make_files(rows=100)
    async with inventory.lease("smoke", files, max_count=40) as batch:
        assert (batch.meta_id_start, batch.meta_id_end, batch.count) == (1, 40, 40)
        assert [row["id"] for row in await batch.items()] == list(range(1, 41))
    (attempt,) = await inventory.batches("smoke")
    assert attempt.status == pbi.Status.SUCCEEDED
