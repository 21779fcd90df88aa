"""The main job of pybatchintory, end to end, on embedded SQLite (``make demo``).

It builds a metadata table of generated files, then runs, against one inventory file:

1. an incremental job drained by several concurrent async workers, with a progress bar and
   count and weight caps; one batch fails once (an injected error) and is retried;
2. a backfill of a bounded id window, in weight-capped chunks;
3. the status table, the backlog, the error groups and the lineage of one file.

Run it with ``python -m pybatchintory.demo [--rows N] [--workers N] [--dir PATH]``. It needs
``rich`` (``pip install 'pybatchintory[cli]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pybatchintory.errors import ConfigurationError, NoBatchAvailable
from pybatchintory.inventory import Inventory
from pybatchintory.models import Attempt, Status
from pybatchintory.sources import MetaTable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ("DemoReport", "main", "run_demo")

INCREMENTAL = "ingest"
BACKFILL = "backfill_2021"


class InjectedFailure(RuntimeError):
    """The demo's deliberate error: the first attempt of one batch fails."""


@dataclass
class DemoReport:
    """What the demo did, for the summary and for tests."""

    rows: int
    leases: int = 0
    failures: int = 0
    retried_range: tuple[int, int] | None = None
    latencies: list[float] = field(default_factory=list)
    acquire_latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    processed: dict[str, int] = field(default_factory=dict)

    @property
    def mean_latency_ms(self) -> float:
        """Mean time from asking for a lease to its settle being written, in milliseconds."""
        return statistics.fmean(self.latencies) * 1000 if self.latencies else 0.0


def _rich() -> tuple[Any, Any]:
    try:
        from rich import console, progress
    except ImportError as exc:  # pragma: no cover - rich comes with the cli extra
        raise ConfigurationError(
            "the demo renders with rich; install it with: pip install 'pybatchintory[cli]'"
        ) from exc
    return console, progress


async def build_metadata(url: str, rows: int, *, seed: int = 7) -> None:
    """Create the ``files`` table with ``rows`` generated files (ids 1..rows)."""
    rng = random.Random(seed)
    table = sa.Table(
        "files",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.String(200), nullable=False),
        sa.Column("size_in_bytes", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("imported", sa.DateTime, nullable=False),
    )
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
            await conn.run_sync(table.metadata.create_all)
        chunk = 10_000
        for offset in range(0, rows, chunk):
            values = []
            for meta_id in range(offset + 1, min(rows, offset + chunk) + 1):
                kind = "parquet" if meta_id % 10 else "csv"
                values.append(
                    {
                        "id": meta_id,
                        "path": f"s3://landing/2021/{meta_id // 1000:04d}/{meta_id}.{kind}",
                        # Mostly small files, now and then a large one.
                        "size_in_bytes": int(rng.lognormvariate(13, 1.2)),
                        "kind": kind,
                        "imported": start + timedelta(seconds=meta_id),
                    }
                )
            async with engine.begin() as conn:
                await conn.execute(table.insert(), values)
    finally:
        await engine.dispose()


async def _worker(
    inv: Inventory,
    files: MetaTable,
    report: DemoReport,
    progress: Progress,
    task: TaskID,
    fail_id: int,
) -> None:
    while True:
        asked = time.perf_counter()
        try:
            async with inv.lease(INCREMENTAL, files, max_count=1_000, max_weight=2**30) as batch:
                report.acquire_latencies.append(time.perf_counter() - asked)
                items = await batch.items()
                if batch.meta_id_start <= fail_id <= batch.meta_id_end and batch.attempt == 1:
                    raise InjectedFailure(f"could not read file {fail_id}: checksum mismatch")
                await asyncio.sleep(0.001)  # the "processing" of a real pipeline goes here
                size = sum(row["size_in_bytes"] for row in items)
                batch.result = {"files": len(items), "bytes": size}
        except NoBatchAvailable:
            return
        except InjectedFailure:
            report.latencies.append(time.perf_counter() - asked)
            report.failures += 1
            report.retried_range = (batch.meta_id_start, batch.meta_id_end)
            continue
        report.latencies.append(time.perf_counter() - asked)
        report.leases += 1
        report.processed[INCREMENTAL] = report.processed.get(INCREMENTAL, 0) + batch.count
        progress.advance(task, batch.count)


async def run_demo(
    directory: Path,
    *,
    rows: int = 100_000,
    workers: int = 4,
    console: Console | None = None,
) -> DemoReport:
    """Run the demo in ``directory`` (two SQLite files are created there)."""
    console_mod, progress_mod = _rich()
    out: Console = console or console_mod.Console()
    url = f"sqlite+aiosqlite:///{directory / 'demo.db'}"
    report = DemoReport(rows=rows)

    out.rule("[bold]pybatchintory demo")
    out.print(f"metadata and inventory: [cyan]{directory / 'demo.db'}[/]")
    began = time.perf_counter()
    await build_metadata(url, rows)
    out.print(f"generated [bold]{rows:,}[/] files in {time.perf_counter() - began:.1f}s")

    files = MetaTable("files", weight="size_in_bytes", timestamp="imported")
    fail_id = rows // 2 + 17
    async with Inventory(url, lease_ttl=30, max_attempts=3) as inv:
        out.print(
            f"\n[bold]1. incremental job[/] {INCREMENTAL!r}: {workers} concurrent workers, "
            "at most 1,000 files and 1 GiB per batch; "
            f"the first batch holding file {fail_id} fails once"
        )
        began = time.perf_counter()
        columns = (
            progress_mod.TextColumn("{task.description}"),
            progress_mod.BarColumn(),
            progress_mod.MofNCompleteColumn(),
            progress_mod.TimeElapsedColumn(),
        )
        with progress_mod.Progress(*columns, console=out) as progress:
            task = progress.add_task(INCREMENTAL, total=rows)
            await asyncio.gather(
                *(_worker(inv, files, report, progress, task, fail_id) for _ in range(workers))
            )
        report.wall = time.perf_counter() - began
        out.print(
            f"{report.leases} leases in {report.wall:.2f}s: "
            f"{report.leases / report.wall:.0f} leases/s, "
            f"{report.mean_latency_ms:.1f} ms per lease from asking to settled "
            f"(acquire alone: median {statistics.median(report.acquire_latencies) * 1000:.1f} ms), "
            f"{report.failures} injected failure, retried as attempt 2"
        )

        out.print(
            f"\n[bold]2. backfill[/] {BACKFILL!r}: ids 10,001..20,000 in chunks of at most 256 MiB"
        )
        chunks = 0
        async for batch in inv.leases(
            BACKFILL, files, id_start=10_001, id_end=20_000, max_weight=256 * 2**20
        ):
            async with batch:
                chunks += 1
                report.processed[BACKFILL] = report.processed.get(BACKFILL, 0) + batch.count
        out.print(f"{chunks} chunks, {report.processed.get(BACKFILL, 0):,} files")

        # More files land; the incremental job picks up only those.
        await _append(url, rows, 2_500)
        async with inv.lease(INCREMENTAL, files, max_count=5_000) as batch:
            out.print(
                f"\n2,500 new files arrived: the next lease is [{batch.meta_id_start:,}, "
                f"{batch.meta_id_end:,}] ({batch.count:,} files), nothing seen before"
            )

        await _render_status(inv, files, out, fail_id)
    return report


async def _append(url: str, after: int, n: int) -> None:
    engine = create_async_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO files (id, path, size_in_bytes, kind, imported) "
                    "VALUES (:id, :path, :size, 'parquet', :imported)"
                    # Bound as a DateTime: SQLAlchemy renders it, not sqlite3's default
                    # adapter (deprecated since Python 3.12).
                ).bindparams(sa.bindparam("imported", type_=sa.DateTime())),
                [
                    {"id": i, "path": f"s3://new/{i}.parquet", "size": 4096, "imported": now}
                    for i in range(after + 1, after + n + 1)
                ],
            )
    finally:
        await engine.dispose()


def _when(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S") if value else "-"


async def _render_status(inv: Inventory, files: MetaTable, out: Console, file_id: int) -> None:
    from rich import box
    from rich.table import Table

    status = Table(title="status", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("job", "window", "cursor", "ok", "failed", "backlog", "last ok"):
        status.add_column(
            name, justify="left" if name == "job" else "right", no_wrap=True, min_width=len(name)
        )
    for line in await inv.status():
        backlog = await inv.backlog(line.job)
        succeeded = len(await inv.batches(line.job, status=Status.SUCCEEDED))
        failed = len(await inv.batches(line.job, status=Status.FAILED))
        window = f"{line.id_start or '-'}..{line.id_end or '-'}"
        status.add_row(
            line.job,
            window,
            f"{line.cursor:,}" if line.cursor is not None else "-",
            str(succeeded),
            str(failed),
            f"{backlog.count:,}",
            _when(line.last_success),
        )
    out.print()
    out.print(status)

    for group in await inv.errors(INCREMENTAL):
        out.print(
            f"errors of {INCREMENTAL!r}: {group.count} x {group.error_type}: "
            f"{group.error_message} (fingerprint {group.fingerprint})"
        )

    lineage = Table(
        title=f"history of file {file_id:,}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name in ("job", "attempt", "range", "status", "owner", "ended"):
        lineage.add_column(name)
    attempts: Sequence[Attempt] = await inv.history(files, file_id)
    for attempt in sorted(attempts, key=lambda a: (a.job, a.attempt)):
        lineage.add_row(
            attempt.job,
            str(attempt.attempt),
            f"{attempt.meta_id_start:,}..{attempt.meta_id_end:,}",
            str(attempt.status),
            attempt.owner or "-",
            _when(attempt.processing_end),
        )
    out.print(lineage)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m pybatchintory.demo``."""
    parser = argparse.ArgumentParser(prog="python -m pybatchintory.demo", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="files to generate")
    parser.add_argument("--workers", type=int, default=4, help="concurrent async workers")
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep the SQLite files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.rows < 20_000:
        parser.error("--rows must be at least 20000 (the backfill window is ids 10,001..20,000)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            (args.dir / f"demo.db{suffix}").unlink(missing_ok=True)
        asyncio.run(run_demo(args.dir, rows=args.rows, workers=args.workers))
        return 0
    with tempfile.TemporaryDirectory(prefix="pybatchintory-demo-") as tmp:
        asyncio.run(run_demo(Path(tmp), rows=args.rows, workers=args.workers))
    return 0


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so error types are named
    # pybatchintory.demo.InjectedFailure in the ledger.
    from pybatchintory.demo import main as _main

    raise SystemExit(_main())
