"""``make demo`` runs the main job end to end; the same code, smaller, runs here."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
from rich.console import Console

from pybatchintory.demo import BACKFILL, INCREMENTAL, main, run_demo

from tests.helpers import fetch_all


async def test_the_demo_covers_every_file_once_and_retries_its_failure(tmp_path: Path) -> None:
    screen = io.StringIO()
    report = await run_demo(
        tmp_path, rows=20_000, workers=3, console=Console(file=screen, width=100)
    )
    assert report.failures == 1
    assert report.processed == {INCREMENTAL: 20_000, BACKFILL: 10_000}
    text = screen.getvalue()
    assert "status" in text and "history of file" in text and "InjectedFailure" in text

    url = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    rows = await fetch_all(
        url,
        "SELECT job, meta_id_start AS s, meta_id_end AS e, attempt, status FROM inventory "
        "ORDER BY job, meta_id_start, attempt",
    )
    for job, first, last in ((INCREMENTAL, 1, 22_500), (BACKFILL, 10_001, 20_000)):
        done = [r for r in rows if r["job"] == job and r["status"] == "succeeded"]
        assert done[0]["s"] == first and done[-1]["e"] == last
        assert all(a["e"] + 1 == b["s"] for a, b in itertools.pairwise(done))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and report.retried_range == (failed[0]["s"], failed[0]["e"])
    retried = [r for r in rows if r["s"] == failed[0]["s"] and r["job"] == INCREMENTAL]
    assert [(r["attempt"], r["status"]) for r in retried] == [(1, "failed"), (2, "succeeded")]


def test_the_demo_refuses_a_table_smaller_than_its_backfill_window() -> None:
    with pytest.raises(SystemExit):
        main(["--rows", "100"])
