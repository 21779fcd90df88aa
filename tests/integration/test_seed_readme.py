"""The seed's 0.0.8 README runs verbatim.

``data/seed_readme_0_0_8.md`` is the README of pybatchintory 0.0.8 as published (the
description in its wheel's METADATA). Its Python snippets are cut out of that text unchanged
and run as programs in a subprocess, each after a prelude that defines only the names the
README leaves to the reader (``process_func``, ``func``, ``args``, ``kwargs``), configured the
way a 0.0.8 user configured it: ``PYBATCHINTORY_INVENTORY_CONN`` and ``PYBATCHINTORY_META_CONN``
in a ``.env`` in the working directory. The ledger is then checked with plain SQL.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import fetch_all

README = Path(__file__).parent / "data" / "seed_readme_0_0_8.md"
README_SHA256 = "7f1d1f345f4df76c32a935d0e1711af0014aa844f3e44da22acaec2b6eb7c350"
"""Of the description in ``pybatchintory-0.0.8-py3-none-any.whl``'s METADATA, as published."""
ROWS = 300

PRELUDE = """\
# The names the README leaves to the reader; the snippet follows unchanged.
import hashlib
import itertools
import json
import os


def process_func(items):
    if os.environ.get("SEED_FAIL"):
        raise RuntimeError("boom: the processing failed")
    assert isinstance(items, list) and items, items
    print(json.dumps({"items": len(items), "first": items[0]}, default=str))


def func(items, factor, label):
    return {"label": label, "size": factor * len(items)}


args = (3,)
kwargs = {"label": "x"}

"""


def snippets() -> dict[str, str]:
    """The README's ``python`` blocks, by the heading above each, exactly as written."""
    found: dict[str, str] = {}
    heading = ""
    for match in re.finditer(
        r"^(#{2,4}) (?P<title>[^\n]+)$|^```python\n(?P<code>.*?)^```$",
        README.read_text(encoding="utf-8"),
        flags=re.M | re.S,
    ):
        if match["title"] is not None:
            heading = match["title"].strip()
        else:
            found[heading] = match["code"]
    return found


def size(meta_id: int) -> float:
    """``size_in_mib`` of a row: 1.5 to 3.0, fractional (0.0.8's tests used float sizes)."""
    return 1.5 + (meta_id % 4) * 0.5


async def _meta_table(url: str) -> None:
    table = sa.Table(
        "meta_table",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("file", sa.String(255)),
        sa.Column("size_in_mib", sa.Double()),
        sa.Column("imported", sa.DateTime()),
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(
                table.insert(),
                [
                    {"id": i, "file": f"/path/to/file/{i}", "size_in_mib": size(i)}
                    for i in range(1, ROWS + 1)
                ],
            )
    finally:
        await engine.dispose()


class Runner:
    """Writes each snippet to a file and runs it in ``workdir`` (where the ``.env`` is)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}

    def run(self, name: str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        program = self.workdir / f"{name}.py"
        program.write_text(PRELUDE + code, encoding="utf-8")
        return subprocess.run(
            [sys.executable, program.name],
            cwd=self.workdir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def _ok(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _ledger(url: str, job: str) -> list[dict[str, Any]]:
    return await fetch_all(
        url,
        "SELECT meta_table, meta_id_start, meta_id_end, count, weight, attempt, status, "
        "job_result, error_type, error_message, logging FROM inventory WHERE job = :job "
        "ORDER BY id",
        job=job,
    )


def _weight(first: int, last: int) -> float:
    return sum(size(i) for i in range(first, last + 1))


def test_the_readme_has_the_four_invocation_snippets() -> None:
    # Verbatim: the published text, byte for byte (ruff must not reformat its code blocks).
    assert hashlib.sha256(README.read_bytes()).hexdigest() == README_SHA256
    found = snippets()
    for heading in (
        "Incremental with predictable workload",
        "Backfill with predictable workload",
        "Multiple batches",
        "Error handling",
    ):
        assert heading in found and "from pybatchintory import acquire_batch" in found[heading]
    assert "version 1 - manual error handling" in found["Error handling"]
    assert "batch.process(func, args, kwargs)" in found["Error handling"]


async def test_the_seed_readme_runs_verbatim(db_url: str, meta_db_url: str, tmp_path: Path) -> None:
    await _meta_table(meta_db_url)
    (tmp_path / ".env").write_text(
        f"PYBATCHINTORY_INVENTORY_CONN={db_url}\n"
        f"PYBATCHINTORY_META_CONN={meta_db_url}\n"
        "PYBATCHINTORY_META_WEIGHT=size_in_mib\n",
        encoding="utf-8",
    )
    code = snippets()
    runner = Runner(tmp_path)

    # Incremental: items are the `item` column's values; weight at most 100 MiB.
    (printed,) = _ok(runner.run("incremental", code["Incremental with predictable workload"]))
    assert printed["first"] == "/path/to/file/1"
    (first,) = await _ledger(db_url, "incremental_job")
    assert (first["meta_table"], first["meta_id_start"], first["status"]) == (
        "meta_table",
        1,
        "succeeded",
    )
    end = int(first["meta_id_end"])
    assert printed["items"] == int(first["count"]) == end
    assert _weight(1, end) <= 100 < _weight(1, end + 1)
    assert float(first["weight"]) == pytest.approx(_weight(1, end))

    # Backfill: ids 20 to 80, as much as 100 MiB allows.
    _ok(runner.run("backfill", code["Backfill with predictable workload"]))
    (backfill,) = await _ledger(db_url, "backfill_job")
    assert (backfill["meta_id_start"], backfill["status"]) == (20, "succeeded")
    last = int(backfill["meta_id_end"])
    assert last < 80 and _weight(20, last) <= 100 < _weight(20, last + 1)

    # Multiple batches: five more of the incremental job, 10 MiB each at most.
    assert len(_ok(runner.run("multiple", code["Multiple batches"]))) == 5
    rows = await _ledger(db_url, "incremental_job")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"succeeded"}
    for before, after in itertools.pairwise(rows):
        assert int(after["meta_id_start"]) == int(before["meta_id_end"]) + 1
    for row in rows[1:]:
        assert _weight(int(row["meta_id_start"]), int(row["meta_id_end"])) <= 10

    # Error handling, both versions, when the processing works.
    _ok(runner.run("errors", code["Error handling"]))
    rows = await _ledger(db_url, "incremental_job")
    assert [r["status"] for r in rows[6:]] == ["succeeded", "succeeded"]
    result = rows[7]["job_result"]
    assert (json.loads(result) if isinstance(result, str) else result) == {
        "label": "x",
        "size": 3 * int(rows[7]["count"]),
    }

    # ... and when it fails: version 1 records the failure and re-raises it.
    failed = runner.run("errors_failing", code["Error handling"], SEED_FAIL="1")
    assert failed.returncode == 1 and "boom: the processing failed" in failed.stderr
    rows = await _ledger(db_url, "incremental_job")
    assert (rows[-1]["status"], rows[-1]["error_type"], rows[-1]["error_message"]) == (
        "failed",
        "RuntimeError",
        "boom: the processing failed",
    )
    assert "Traceback" in rows[-1]["logging"]
    # The next run retries that range first, as attempt 2.
    _ok(runner.run("errors_again", code["Error handling"]))
    rows = await _ledger(db_url, "incremental_job")
    retried = rows[-2]
    assert (retried["status"], retried["attempt"]) == ("succeeded", 2)
    assert retried["meta_id_start"] == rows[-3]["meta_id_start"]


async def test_the_configure_snippet_with_its_placeholders_filled(
    db_url: str, tmp_path: Path
) -> None:
    """The "Programmatically" snippet: a dot-env file and explicit settings."""
    await _meta_table(db_url)
    dot_env = tmp_path / "settings.env"
    dot_env.write_text("PYBATCHINTORY_META_WEIGHT=size_in_mib\n", encoding="utf-8")
    snippet = snippets()["Programmatically"]
    filled = snippet.replace("PATH_TO_DOT_ENV_FILE", str(dot_env)).replace("CONN_STRING", db_url)
    assert filled != snippet
    code = (
        filled
        + "\nfrom pybatchintory import acquire_batch\n"
        + 'batch = acquire_batch(meta_table_name="meta_table", job="configured", batch_weight=5)\n'
        + "process_func(batch.items)\nbatch.succeeded()\n"
    )
    _ok(Runner(tmp_path).run("configured", code))
    (row,) = await _ledger(db_url, "configured")
    assert (row["status"], row["meta_id_start"]) == ("succeeded", 1)
    assert _weight(1, int(row["meta_id_end"])) <= 5
