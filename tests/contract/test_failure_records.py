"""What a failure stores survives any message: huge, non-ASCII, or with NUL characters.

PostgreSQL cannot store NUL in text or JSON, and neither it nor MariaDB takes NaN as JSON;
the same input must behave the same on every store and never strand a lease behind a
settle the database refused.
"""

from __future__ import annotations

import pytest

import pybatchintory as pbi

from tests.contract._ledger import attempt_row
from tests.contract.conftest import MakeFiles


class ParseFailed(Exception):
    """A parser choked on binary input."""


async def test_a_failure_is_recorded_whatever_its_message(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    cases = {
        "huge-4-byte": ("😀" * 50_000, "😀" * 100),
        "nul": ("header \x00\x01 of file.bin", "header \\x00\x01 of file.bin"),
        "unicode": ("ünïcödé, 数据, \u2028", "ünïcödé, 数据, \u2028"),
    }
    for job, (message, stored) in cases.items():
        with pytest.raises(ParseFailed):
            async with inventory.lease(job, files, max_count=5) as batch:
                raise ParseFailed(message)
        row = await attempt_row(db_url, batch.id)
        assert row["status"] == "failed", job
        assert row["error_type"].endswith("ParseFailed")
        assert row["error_message"].startswith(stored), job
        assert len(row["error_message"]) < 4100
        assert stored[:50] in row["logging"]
        # The range is retried, not stuck behind a lease nobody holds.
        async with inventory.lease(job, files, max_count=5) as again:
            assert (again.meta_id_start, again.attempt) == (1, 2)


async def test_a_result_no_store_can_hold_fails_the_attempt_on_every_store(
    inventory: pbi.Inventory, make_files: MakeFiles, db_url: str
) -> None:
    files = await make_files(rows=10)
    results: dict[str, object] = {
        "nul-in-value": {"magic": "PK\x03\x04\x00\x00"},
        "nul-in-key": {"a\x00b": 1},
        "nan": {"ratio": float("nan")},
        "infinity": [1.0, float("inf")],
    }
    for job, result in results.items():
        handle = await inventory.acquire(job, files, max_count=5)
        assert handle is not None
        with pytest.raises(pbi.InvalidArgument, match="result"):
            await handle.success(result)
        assert (await attempt_row(db_url, handle.id))["status"] == "running"  # nothing written
        await handle.release()
        with pytest.raises(pbi.InvalidArgument, match="result"):
            async with inventory.lease(job, files, max_count=5) as batch:
                batch.result = result
        row = await attempt_row(db_url, batch.id)
        assert (row["status"], row["error_type"]) == (
            "failed",
            "pybatchintory.errors.InvalidArgument",
        ), job
        assert row["job_result"] is None
