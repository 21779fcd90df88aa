"""What the command line prints: JSON documents with stable keys, and rich tables.

JSON: times are ISO-8601 in UTC (``2026-12-02T17:05:52.123456+00:00``), durations are
seconds, statuses their names; lease tokens are never printed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pybatchintory.models import Attempt, Backlog, ErrorGroup, JobStatus, PlannedRange

__all__ = (
    "attempt_doc",
    "backlog_doc",
    "dump",
    "error_doc",
    "planned_doc",
    "render_attempts",
    "render_errors",
    "render_history",
    "render_status",
    "status_doc",
)

_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "expired": "yellow",
    "released": "cyan",
    "running": "blue",
}


def iso(value: datetime | None) -> str | None:
    """``value`` as ISO-8601; the ledger's naive timestamps are UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def seconds(value: timedelta | None) -> float | None:
    """``value`` in seconds."""
    return None if value is None else value.total_seconds()


def number(value: Any) -> int | float:
    """A count or weight as a JSON number (an exact ``NUMERIC`` sum stays exact when whole)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (int, float)):
        return value
    return float(value)


def dump(document: Any) -> str:
    """The JSON text of ``document``."""
    return json.dumps(document, indent=2, sort_keys=False, default=str)


def attempt_doc(a: Attempt) -> dict[str, Any]:
    """One attempt, for ``--json`` (every field but the lease token)."""
    duration = None
    if a.processing_start is not None and a.processing_end is not None:
        duration = (a.processing_end - a.processing_start).total_seconds()
    return {
        "id": a.id,
        "job": a.job,
        "meta_table": a.meta_table,
        "meta_id_start": a.meta_id_start,
        "meta_id_end": a.meta_id_end,
        "count": a.count,
        "weight": number(a.weight),
        "attempt": a.attempt,
        "status": a.status.value,
        "oversized": a.oversized,
        "dead": a.dead,
        "owner": a.owner,
        "processing_start": iso(a.processing_start),
        "processing_end": iso(a.processing_end),
        "duration": duration,
        "expires_at": iso(a.expires_at),
        "retry_after": iso(a.retry_after),
        "result": a.result,
        "error_type": a.error_type,
        "error_message": a.error_message,
        "fingerprint": a.fingerprint,
        "traceback": a.traceback,
        "code_version": a.code_version,
    }


def backlog_doc(job: str, b: Backlog) -> dict[str, Any]:
    """A job's backlog, for ``--json``."""
    return {
        "job": job,
        "count": b.count,
        "weight": number(b.weight),
        "retry_due": b.retry_due,
        "dead": b.dead,
        "dead_count": b.dead_count,
        "dead_weight": number(b.dead_weight),
        "running": b.running,
        "eta": seconds(b.eta),
    }


def progress(s: JobStatus) -> float | None:
    """Share of a windowed job's id window behind its cursor; ``None`` if incremental."""
    if s.id_start is None or s.id_end is None:
        return None
    if s.cursor is None or s.cursor < s.id_start:
        return 0.0
    return min(1.0, (s.cursor - s.id_start + 1) / (s.id_end - s.id_start + 1))


def status_doc(s: JobStatus, backlog: Backlog | None) -> dict[str, Any]:
    """One job of ``status``, for ``--json``."""
    return {
        "job": s.job,
        "meta_table": s.meta_table,
        "cursor": s.cursor,
        "id_start": s.id_start,
        "id_end": s.id_end,
        "progress": progress(s),
        "running": s.counts.get("running", 0),
        "retry": s.counts.get("retry", 0),
        "dead": s.counts.get("dead", 0),
        "last_success": iso(s.last_success),
        "backlog": None if backlog is None else backlog_doc(s.job, backlog),
    }


def error_doc(g: ErrorGroup, traceback: str | None) -> dict[str, Any]:
    """One error group, for ``--json``, with the traceback of its first attempt."""
    return {
        "fingerprint": g.fingerprint,
        "error_type": g.error_type,
        "error_message": g.error_message,
        "count": g.count,
        "first_seen": iso(g.first_seen),
        "last_seen": iso(g.last_seen),
        "attempt_ids": list(g.attempt_ids),
        "traceback": traceback,
    }


def planned_doc(p: PlannedRange) -> dict[str, Any]:
    """One planned range, for ``--json``."""
    return {
        "meta_id_start": p.meta_id_start,
        "meta_id_end": p.meta_id_end,
        "count": p.count,
        "weight": number(p.weight),
        "oversized": p.oversized,
        "attempt": p.attempt,
    }


def _when(value: datetime | None, *, short: bool = False) -> str:
    if value is None:
        return "-"
    return value.strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _eta(value: timedelta | None) -> str:
    if value is None:
        return "?"
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


def render_status(
    console: Console, rows: Sequence[tuple[JobStatus, Backlog | None, str | None]]
) -> None:
    """The jobs table: cursor, a completion bar per windowed job, backlog and ETA."""
    table = Table(
        title="jobs",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("job", no_wrap=True)
    table.add_column("source")
    table.add_column("cursor", justify="right")
    table.add_column("window")
    table.add_column("done", no_wrap=True)
    table.add_column("backlog", justify="right")
    table.add_column("run", justify="right")
    table.add_column("retry", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("ETA", justify="right")
    table.add_column("last ok")
    problems: list[str] = []
    for s, b, problem in rows:
        share = progress(s)
        done: Any = "-"  # incremental: no end to measure against
        if share is not None:
            done = Table.grid(padding=(0, 1))
            done.add_row(
                ProgressBar(total=1.0, completed=share, width=8),
                f"{share:>4.0%}",
            )
        dead = s.counts.get("dead", 0)
        if problem:
            problems.append(f"{s.job}: {problem}")
        table.add_row(
            s.job,
            s.meta_table,
            "-" if s.cursor is None else str(s.cursor),
            "-" if s.id_start is None and s.id_end is None else f"{s.id_start}..{s.id_end}",
            done,
            "?" if b is None else f"{b.count:,}",
            str(s.counts.get("running", 0)),
            str(s.counts.get("retry", 0)),
            Text(str(dead), style="red" if dead else ""),
            "?" if b is None else _eta(b.eta),
            _when(s.last_success, short=True),
        )
    console.print(table)
    for line in problems:
        console.print(Text(line, style="yellow"))


def render_attempts(console: Console, title: str, attempts: Sequence[Attempt]) -> None:
    """Attempts as a table, newest first."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for column in ("id", "range", "count", "weight", "attempt", "status", "started", "owner"):
        table.add_column(column, no_wrap=column == "range")
    table.add_column("error")
    for a in attempts:
        table.add_row(
            str(a.id),
            f"[{a.meta_id_start}, {a.meta_id_end}]",
            f"{a.count:,}",
            f"{number(a.weight):,}",
            str(a.attempt),
            Text(a.status.value + (" (dead)" if a.dead else ""), style=_STYLE[a.status.value]),
            _when(a.processing_start, short=True),
            a.owner or "-",
            a.error_type or "",
        )
    console.print(table)


def render_history(
    console: Console, table_name: str, meta_id: int, attempts: Sequence[Attempt]
) -> None:
    """Every attempt that covered ``meta_id``, oldest first, as a timeline."""
    console.print(Text(f"history of {table_name} id {meta_id}", style="bold"))
    if not attempts:
        console.print("  no job has handed out this id")
        return
    ordered = sorted(attempts, key=lambda a: (a.processing_start or datetime.min, a.id))
    for a in ordered:
        style = _STYLE[a.status.value]
        took = ""
        if a.processing_start is not None and a.processing_end is not None:
            took = f" in {(a.processing_end - a.processing_start).total_seconds():.2f}s"
        line = Text("  ")
        line.append("● ", style=style)
        line.append(f"{_when(a.processing_start)}  ")
        line.append(f"{a.job} attempt {a.attempt} ", style="bold")
        line.append(f"[{a.meta_id_start}, {a.meta_id_end}] ")
        line.append(a.status.value, style=style)
        line.append(f"{took}  by {a.owner or '-'}  (attempt id {a.id})")
        console.print(line)
        if a.error_type:
            console.print(Text(f"  │   {a.error_type}: {a.error_message}", style="red"))


def render_errors(
    console: Console, job: str, groups: Sequence[ErrorGroup], tracebacks: Mapping[int, str | None]
) -> None:
    """Error groups with counts and the first lines of a traceback of each."""
    if not groups:
        console.print(f"no failed attempts for job {job}")
        return
    for g in groups:
        console.rule(
            Text(f"{g.count} x {g.error_type}  fingerprint {g.fingerprint[:12]}", style="red")
        )
        console.print(f"message:     {g.error_message}")
        console.print(f"seen:        {_when(g.first_seen)} .. {_when(g.last_seen)}")
        console.print(f"attempt ids: {', '.join(str(i) for i in g.attempt_ids)}")
        text = tracebacks.get(g.attempt_ids[0]) if g.attempt_ids else None
        if text:
            for line in _excerpt(text.rstrip().splitlines()):
                console.print(Text("  " + line, style="dim"))


def _excerpt(lines: list[str], head: int = 3, tail: int = 4) -> list[str]:
    """The first lines of a traceback and its last ones (where it was raised, and what)."""
    if len(lines) <= head + tail + 1:
        return lines
    return [*lines[:head], f"  ... {len(lines) - head - tail} lines ...", *lines[-tail:]]
