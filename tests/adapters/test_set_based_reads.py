"""``status``, ``history`` and ``errors`` cost a fixed number of statements.

Before, each ran one query per job (``status``, ``history``) or per fingerprint
(``errors``); with a few dozen jobs that was a few dozen round trips. The statements are
counted on the engine as the server sees them, with enough jobs and fingerprints that a
per-row query could not hide.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

import pybatchintory as pbi

from tests.helpers import create_meta_table

pytestmark = pytest.mark.sqlite

JOBS = 12


@contextmanager
def _counting(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_status_history_and_errors_run_one_statement_each(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inv.db'}"
    await create_meta_table(url, rows=200)
    files = pbi.MetaTable("files")
    async with pbi.Inventory(url, max_attempts=5) as inv:
        for j in range(JOBS):
            async with inv.lease(f"job-{j:02}", files, max_count=50):
                pass
        failing = await inv.acquire_many("failing", files, 6, max_count=5)
        kinds = (KeyError, ValueError, TypeError)
        for i, batch in enumerate(failing):  # six failures, three fingerprints
            await batch.error(kinds[i % 3](f"failure {i}"))

        with _counting(inv.engine) as seen:
            status = await inv.status()
        assert len(status) == JOBS + 1
        assert [s.job for s in status] == sorted(s.job for s in status)
        assert all(s.last_success is not None for s in status if s.job != "failing")
        assert len(seen) == 1, seen

        with _counting(inv.engine) as seen:
            covering = await inv.history(files, 30)
        assert [a.job for a in covering] == sorted(
            ["failing", *(f"job-{j:02}" for j in range(JOBS))]
        )
        assert len(seen) == 1, seen

        with _counting(inv.engine) as seen:
            groups = await inv.errors("failing")
        assert sum(g.count for g in groups) == 6
        assert sorted(len(g.attempt_ids) for g in groups) == [2, 2, 2]
        assert len(seen) == 2, seen  # the job's record, then the groups
