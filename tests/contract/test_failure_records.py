"""What a failure stores survives any message: huge, non-ASCII, or with NUL characters.

PostgreSQL cannot store NUL in text or JSON; the same input must behave the same on every
store and never strand a lease behind a settle the database refused.
"""

from __future__ import annotations

import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempt_row
from tests.contract.conftest import MakeFiles


class ParseFailed(Exception):
    """A parser choked on binary input."""


@pytest.mark.parametrize(
    ("message", "stored"),
    [
        pytest.param("😀" * 50_000, "😀" * 100, id="huge-4-byte"),
        pytest.param("header \x00\x01 of file.bin", "header \\x00\x01 of file.bin", id="nul"),
        pytest.param("ünïcödé, 数据, \u2028", "ünïcödé, 数据, \u2028", id="unicode"),
    ],
)
async def test_a_failure_is_recorded_whatever_its_message(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str, message: str, stored: str
) -> None:
    files = await make_files(rows=10)
    with pytest.raises(ParseFailed):
        async with inventory.lease("parse", files, max_count=5) as batch:
            raise ParseFailed(message)
    row = await attempt_row(db_url, batch.id)
    assert row["status"] == "failed"
    assert row["error_type"].endswith("ParseFailed")
    assert row["error_message"].startswith(stored)
    assert len(row["error_message"]) < 4100
    assert stored[:50] in row["logging"]
    # The range is retried, not stuck behind a lease nobody holds.
    async with inventory.lease("parse", files, max_count=5) as again:
        assert (again.meta_id_start, again.attempt) == (1, 2)
