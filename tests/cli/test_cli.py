"""The installed ``pybatchintory`` command, run as a subprocess, on every backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pybatchintory as pbi

from tests.helpers import create_meta_table, fetch_all

SCRIPT = Path(sys.executable).with_name("pybatchintory")


class Bad(ValueError):
    pass


def run(
    tmp_path: Path, url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYBATCHINTORY_")}
    environment.update({"PYBATCHINTORY_INVENTORY_URL": url, "COLUMNS": "120"}, **(env or {}))
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=tmp_path,  # no stray .env
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], *hidden: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for secret in hidden:
        assert secret not in result.stderr + result.stdout
    return lines[0]


async def ledger(url: str) -> None:
    """Job ``parse`` (incremental, a dead range over id 42) and ``backfill`` (ids 1..50)."""
    await create_meta_table(url, rows=100)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url, max_attempts=1) as inv:
        for _ in range(4):
            try:
                async with inv.lease("parse", files, max_count=25) as batch:
                    if batch.meta_id_start <= 42 <= batch.meta_id_end:
                        raise Bad("bad magic bytes in file 42")
            except Bad:
                pass
        async with inv.lease("backfill", files, id_start=1, id_end=50, max_count=25):
            pass


async def test_every_command_on_a_real_ledger(backend: str, db_url: str, tmp_path: Path) -> None:
    await ledger(db_url)

    status = ok(run(tmp_path, db_url, "status", "--json"))
    assert [s["job"] for s in status] == ["backfill", "parse"]
    backfill, parse = status
    assert backfill["progress"] == 0.5 and backfill["backlog"]["count"] == 25
    assert parse["progress"] is None and parse["dead"] == 1 and parse["cursor"] == 100
    assert parse["last_success"].endswith("+00:00")
    assert run(tmp_path, db_url, "status").returncode == 0  # rich rendering

    (group,) = ok(run(tmp_path, db_url, "errors", "parse", "--json"))
    assert group["count"] == 1 and group["error_type"].endswith("Bad")
    assert "bad magic bytes" in group["traceback"] and group["first_seen"]

    attempts = ok(run(tmp_path, db_url, "history", "42", "--json"))["attempts"]
    assert [(a["job"], a["status"], a["meta_id_start"]) for a in attempts] == [
        ("parse", "failed", 26)
    ]
    assert "token" not in attempts[0] and isinstance(attempts[0]["duration"], float)

    # A write without --yes and with nobody to answer changes nothing.
    refused = run(tmp_path, db_url, "retry", "parse")
    assert refused.returncode == 1 and "nothing changed" in refused.stderr
    revive = ("retry", "parse", "--batch-id", str(group["attempt_ids"][0]), "--yes", "--json")
    assert ok(run(tmp_path, db_url, *revive)) == {"job": "parse", "revived": 1}
    again = run(tmp_path, db_url, "retry", "parse", "--fingerprint", group["fingerprint"][:12])
    assert again.returncode == 0 and "nothing to revive" in again.stdout  # no prompt
    planned = ok(run(tmp_path, db_url, "plan", "parse", "--max-count", "10", "-n", "2", "--json"))
    assert planned == [
        {
            "meta_id_start": 26,
            "meta_id_end": 50,
            "count": 25,
            "weight": planned[0]["weight"],
            "oversized": False,
            "attempt": 2,
        }
    ]
    backlog = ok(run(tmp_path, db_url, "backlog", "parse", "--json"))
    assert backlog["retry_due"] == 1 and backlog["dead"] == 0 and backlog["count"] == 25
    failed = ok(run(tmp_path, db_url, "batches", "parse", "--status", "failed", "--json"))
    assert [a["meta_id_start"] for a in failed] == [26]
    assert ok(run(tmp_path, db_url, "audit", "parse", "--json")) == []

    moved = ok(run(tmp_path, db_url, "set-cursor", "backfill", "30", "--yes", "--json"))
    assert moved == {"job": "backfill", "cursor_before": 25, "cursor": 30}
    done = ok(run(tmp_path, db_url, "mark-done", "backfill", "31", "50", "--yes", "--json"))
    assert (done["cursor_before"], done["cursor"]) == (30, 50)
    rows = await fetch_all(
        db_url, "SELECT status, count FROM inventory WHERE id = :id", id=done["attempt_id"]
    )
    assert rows == [{"status": "succeeded", "count": 20}]

    created = run(
        tmp_path,
        db_url,
        "set-cursor",
        "late",
        "60",
        "--yes",
        "--json",
        env={"PYBATCHINTORY_META_TABLE": "files", "PYBATCHINTORY_META_WEIGHT": "size_in_bytes"},
    )
    assert ok(created) == {"job": "late", "cursor_before": None, "cursor": 60}
    unknown = one_line_error(run(tmp_path, db_url, "backlog", "nosuchjob"), db_url)
    assert "nosuchjob" in unknown
    assert run(tmp_path, db_url, "batches").returncode == 2  # usage
    assert "up to date" in run(tmp_path, db_url, "migrate", "--dry-run").stdout


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://operator:s3cretpw@127.0.0.1:9/ledger"
    line = one_line_error(run(tmp_path, url, "status"), "s3cretpw", url)
    assert "s3cretpw" not in line
    # --url overrides the settings, and is hidden the same way.
    one_line_error(run(tmp_path, "sqlite+aiosqlite:///x.db", "--url", url, "errors", "j"), url)
    assert not (tmp_path / "x.db").exists()


def test_python_dash_m_is_the_same_program(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pybatchintory", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    for command in ("status", "history", "retry", "set-cursor", "mark-done", "migrate", "demo"):
        assert command in result.stdout
