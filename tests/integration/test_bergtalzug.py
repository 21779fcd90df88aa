"""The real bergtalzug 0.2.0 pipeline (examples/bergtalzug_pipeline.py), fed by leases.

It runs in a subprocess on Python 3.13 from ``.venv-bergtalzug``: 50k rows, the transform
stage failing the first attempt of every 10th batch, the first run cancelled after 20
items, the second run to the end. The ledger is checked with plain SQL after each.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import create_meta_table, fetch_all
from tests.integration.bergtalzug_env import bergtalzug_python, run_in_bergtalzug_venv
from tests.processes import ROOT

pytestmark = pytest.mark.slow

ROWS = 50_000
MAX_COUNT = 1000
SCRIPT = ROOT / "examples" / "bergtalzug_pipeline.py"


def _summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(str(r["status"]) for r in rows)
    return ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))


async def test_pipeline_with_failures_and_a_cancel(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bergtalzug_python()
    await create_meta_table(db_url, rows=ROWS)
    common = [db_url, "--job", "sizes", "--max-count", str(MAX_COUNT), "--fail-every", "10"]
    log = tmp_path / "pipeline.log"

    first = run_in_bergtalzug_venv(SCRIPT, [*common, "--cancel-after", "20"], log)
    counts = json.loads(first.stdout.splitlines()[-1])
    assert counts["succeeded"] + counts["failed"] >= 20
    assert counts["released"] >= 1, counts  # cancelled with items in the pipeline
    after_cancel = await fetch_all(
        db_url,
        "SELECT status, attempt, error_type FROM inventory WHERE job = 'sizes' ORDER BY id",
    )
    with capsys.disabled():
        print(f"\nbergtalzug, cancelled run: feeder {counts}; ledger: {_summary(after_cancel)}")
    assert [r for r in after_cancel if r["status"] == "running"] == []
    failed = [r for r in after_cancel if r["status"] == "failed"]
    assert failed, "the injected failure was not recorded"
    assert {(r["attempt"], r["error_type"]) for r in failed} == {(1, "ValueError")}
    # The feeder released what it held; an acquire cut by the cancel gave its range back too.
    assert sum(r["status"] == "released" for r in after_cancel) >= counts["released"]

    second = run_in_bergtalzug_venv(SCRIPT, common, log)
    assert json.loads(second.stdout.splitlines()[-1])["released"] == 0
    rows = await fetch_all(
        db_url,
        "SELECT meta_id_start, meta_id_end, status, attempt FROM inventory "
        "WHERE job = 'sizes' ORDER BY meta_id_start, id",
    )
    with capsys.disabled():
        print(f"bergtalzug, second run: ledger: {_summary(rows)}")
    assert [r for r in rows if r["status"] == "running"] == []
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    ranges = [(int(r["meta_id_start"]), int(r["meta_id_end"])) for r in succeeded]
    assert ranges[0][0] == 1
    assert ranges[-1][1] == ROWS
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1, "every id exactly once by a succeeded attempt"
    # Every 10th batch failed its attempt 1 (unless the cancel released that attempt first:
    # the injected failure hits attempt 1 only) and succeeded on a later attempt.
    first_attempts = {int(r["meta_id_start"]): r["status"] for r in rows if int(r["attempt"]) == 1}
    for start in range(1, ROWS, 10 * MAX_COUNT):
        assert first_attempts[start] in {"failed", "released"}, (start, first_attempts[start])
    failed_starts = {int(r["meta_id_start"]) for r in rows if r["status"] == "failed"}
    assert failed_starts <= set(range(1, ROWS, 10 * MAX_COUNT))
    for r in succeeded:
        if int(r["meta_id_start"]) in failed_starts:
            assert int(r["attempt"]) >= 2


@pytest.mark.sqlite
async def test_follow_mode_feeder_stop_and_pipeline_stop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}"
    await create_meta_table(url, rows=1000)
    done = run_in_bergtalzug_venv(
        ROOT / "tests" / "integration" / "bergtalzug_follow.py", [url], tmp_path / "follow.log"
    )
    report = json.loads(done.stdout.splitlines()[-1])
    # follow=True: drained, the pipeline kept waiting, took the 500 new rows, and ended
    # (all settled) on feeder.stop().
    assert report["follow"]["waited"] is True
    assert report["follow"]["succeeded"] == report["follow"]["results"] == 15
    rows = await fetch_all(
        url, "SELECT job, status, COUNT(*) AS n FROM inventory GROUP BY job, status"
    )
    ledger = {(r["job"], r["status"]): int(r["n"]) for r in rows}
    assert ledger[("follow", "succeeded")] == 15
    # pipeline.stop(): bergtalzug drops the items in flight without a callback; the feeder
    # released them (and an acquire the stop cancelled gave its ranges back), and nothing
    # is left running.
    assert ledger[("stopped", "released")] >= report["stopped"]["released"] >= 1
    assert ledger[("stopped", "succeeded")] == report["stopped"]["succeeded"]
    assert not any(status == "running" for _, status in ledger)
