"""The operator's command line: ``pybatchintory`` (or ``python -m pybatchintory``).

Thin: it parses, calls the public async API of :class:`~pybatchintory.Inventory`, and
renders. Configured from the same ``PYBATCHINTORY_*`` settings and ``.env`` file as the
library; ``--url`` overrides the inventory database. Every read takes ``--json`` (stable keys,
ISO-8601 times, durations in seconds); writes ask for confirmation unless ``--yes``.

A job's source (for ``plan``, ``backlog``, ``audit``, ``status``) is rebuilt from what the
jobs table recorded: the table, id and weight columns and the filter. A table in a separate
metadata database is reached through ``PYBATCHINTORY_META_URL``. ``history`` names its table
with ``--table``, else ``PYBATCHINTORY_META_TABLE``, else the one table all jobs read.

Exit codes: 0 ok, 1 error (one line on stderr, never a traceback, never a URL), 2 usage.
"""

from __future__ import annotations

from typing import Annotated

try:
    import typer
except ImportError as exc:  # pragma: no cover - the [cli] extra is not installed
    raise SystemExit(
        f"the pybatchintory command needs typer and rich ({exc.name} is missing). "
        "Install them with: pip install 'pybatchintory[cli]'"
    ) from None

from pybatchintory import _cli_render as render
from pybatchintory._cli_support import (
    CommandError,
    JobArg,
    Json,
    Yes,
    confirm,
    console,
    creatable,
    echo_json,
    new_source,
    record_of,
    run,
    source_of,
    state,
)
from pybatchintory.errors import InvalidArgument, PybatchintoryError, UnknownJob
from pybatchintory.inventory import Inventory
from pybatchintory.models import Backlog, JobStatus
from pybatchintory.settings import Settings

__all__ = ("app", "main")

app = typer.Typer(
    name="pybatchintory",
    help="See and steer the ledger of pybatchintory's batch jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Inventory database URL (default: PYBATCHINTORY_INVENTORY_URL / .env).",
            show_default=False,
        ),
    ] = None,
) -> None:
    state.url = url


# -- reads ----------------------------------------------------------------------------------


@app.command()
def status(json: Json = False) -> None:
    """Every job: cursor, window with completion, backlog and ETA, attempts by status."""

    async def work(inv: Inventory, settings: Settings) -> None:
        rows: list[tuple[JobStatus, Backlog | None, str | None]] = []
        for s in await inv.status():
            try:
                record = await record_of(inv, s.job)
                rows.append((s, await inv.backlog(s.job, source_of(settings, record)), None))
            except (CommandError, PybatchintoryError) as exc:
                rows.append((s, None, f"backlog unknown: {exc}"))
        if json:
            echo_json([render.status_doc(s, b) for s, b, _ in rows])
        elif not rows:
            console().print("no jobs recorded yet")
        else:
            render.render_status(console(), rows)

    run(work)


@app.command()
def backlog(job: JobArg, json: Json = False) -> None:
    """What is left for JOB: rows after the cursor, retries, dead ranges, ETA."""

    async def work(inv: Inventory, settings: Settings) -> None:
        record = await record_of(inv, job)
        result = await inv.backlog(job, source_of(settings, record))
        doc = render.backlog_doc(job, result)
        if json:
            echo_json(doc)
            return
        screen = console()
        for key, value in doc.items():
            if key == "eta":
                value = "unknown" if value is None else f"{value:.1f} s"
            screen.print(f"{key:<10} {value}")

    run(work)


@app.command()
def history(
    meta_id: Annotated[int, typer.Argument(metavar="ID", help="Id of a metadata row.")],
    table: Annotated[str | None, typer.Option("--table", "-t", help="The metadata table.")] = None,
    json: Json = False,
) -> None:
    """Every attempt of every job whose range covered row ID: a timeline."""

    async def work(inv: Inventory, settings: Settings) -> None:
        name = table or settings.meta_table
        if name is None:
            tables = sorted({s.meta_table for s in await inv.status()})
            if len(tables) != 1:
                raise CommandError(
                    "name the metadata table with --table (jobs read: "
                    f"{', '.join(tables) or 'none'})"
                )
            name = tables[0]
        attempts = await inv.history(name, meta_id)
        if json:
            echo_json(
                {
                    "table": name,
                    "id": meta_id,
                    "attempts": [render.attempt_doc(a) for a in attempts],
                }
            )
        else:
            render.render_history(console(), name, meta_id, attempts)

    run(work)


@app.command()
def batches(
    job: JobArg,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only these statuses.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", min=1, help="At most N.")] = 50,
    json: Json = False,
) -> None:
    """Attempts of JOB, newest first."""

    async def work(inv: Inventory, settings: Settings) -> None:
        await record_of(inv, job)
        attempts = await inv.batches(job, status or None, limit=limit)
        if json:
            echo_json([render.attempt_doc(a) for a in attempts])
        else:
            render.render_attempts(console(), f"attempts of {job}", attempts)

    run(work)


@app.command()
def errors(job: JobArg, json: Json = False) -> None:
    """Failed attempts of JOB grouped by fingerprint, with counts and tracebacks."""

    async def work(inv: Inventory, settings: Settings) -> None:
        groups = await inv.errors(job)
        wanted = {g.attempt_ids[0] for g in groups if g.attempt_ids}
        tracebacks: dict[int, str | None] = {}
        if wanted:
            for a in await inv.batches(job, "failed", limit=10_000):
                if a.id in wanted:
                    tracebacks[a.id] = a.traceback
        if json:
            echo_json(
                [
                    render.error_doc(g, tracebacks.get(g.attempt_ids[0]) if g.attempt_ids else None)
                    for g in groups
                ]
            )
        else:
            render.render_errors(console(), job, groups, tracebacks)

    run(work)


@app.command()
def plan(
    job: JobArg,
    max_count: Annotated[int | None, typer.Option("--max-count", min=1)] = None,
    max_weight: Annotated[float | None, typer.Option("--max-weight")] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many ranges.")] = 5,
    json: Json = False,
) -> None:
    """Dry run: the next N ranges JOB would get (retries first). Writes nothing."""

    async def work(inv: Inventory, settings: Settings) -> None:
        await inv.open()
        record = await inv.store.get_job(job)
        if record is None:
            source = new_source(settings)
            if source is None:
                raise UnknownJob(
                    f"job {job!r} is not recorded in the inventory; set PYBATCHINTORY_META_TABLE "
                    "to plan a new job"
                )
            window: tuple[int | None, int | None] = (None, None)
        else:
            source = source_of(settings, record)
            window = (record.id_start, record.id_end)
        weight: int | float | None = max_weight
        if max_weight is not None and max_weight.is_integer():
            weight = int(max_weight)
        planned = await inv.plan(
            job,
            source,
            max_count=max_count,
            max_weight=weight,
            id_start=window[0],
            id_end=window[1],
            n=n,
        )
        if json:
            echo_json([render.planned_doc(p) for p in planned])
            return
        screen = console()
        if not planned:
            screen.print(f"nothing to hand out for job {job}")
        for p in planned:
            kind = "new" if p.attempt == 1 else f"retry, attempt {p.attempt}"
            flag = "  (oversized)" if p.oversized else ""
            screen.print(
                f"[{p.meta_id_start}, {p.meta_id_end}]  {p.count:,} rows  "
                f"weight {render.number(p.weight):,}  {kind}{flag}"
            )

    run(work)


@app.command()
def audit(job: JobArg, json: Json = False) -> None:
    """Succeeded ranges of JOB whose rows changed since they were handed out."""

    async def work(inv: Inventory, settings: Settings) -> None:
        record = await record_of(inv, job)
        findings = await inv.audit(job, source_of(settings, record))
        docs = [
            {
                "attempt": render.attempt_doc(f.attempt),
                "count": f.count,
                "weight": render.number(f.weight),
            }
            for f in findings
        ]
        if json:
            echo_json(docs)
            return
        screen = console()
        if not findings:
            screen.print(f"every succeeded range of job {job} still matches the ledger")
        for f in findings:
            a = f.attempt
            screen.print(
                f"[{a.meta_id_start}, {a.meta_id_end}] (attempt id {a.id}): ledger "
                f"{a.count} rows / {render.number(a.weight)}, now {f.count} rows / "
                f"{render.number(f.weight)}"
            )

    run(work)


# -- writes ---------------------------------------------------------------------------------


@app.command()
def retry(
    job: JobArg,
    fingerprint: Annotated[str | None, typer.Option("--fingerprint", "-f")] = None,
    batch_id: Annotated[
        list[int] | None, typer.Option("--batch-id", "-b", help="An attempt id (repeatable).")
    ] = None,
    yes: Yes = False,
    json: Json = False,
) -> None:
    """Revive dead ranges of JOB: all, one fingerprint's, or those of some attempt ids."""

    async def work(inv: Inventory, settings: Settings) -> None:
        await record_of(inv, job)
        dead = [a for a in await inv.batches(job, "failed", limit=10_000) if a.dead]
        if fingerprint is not None:
            dead = [a for a in dead if a.fingerprint and a.fingerprint.startswith(fingerprint)]
        if batch_id:
            # An attempt id names its range: any attempt of a dead range revives it.
            named = {
                (a.meta_id_start, a.meta_id_end)
                for a in await inv.batches(job, limit=10_000)
                if a.id in set(batch_id)
            }
            dead = [a for a in dead if (a.meta_id_start, a.meta_id_end) in named]
        if not dead:
            if json:
                echo_json({"job": job, "revived": 0})
            else:
                typer.echo(f"no dead ranges of job {job} match: nothing to revive")
            return
        shown = ", ".join(f"[{a.meta_id_start}, {a.meta_id_end}]" for a in dead[:10])
        more = f" and {len(dead) - 10} more" if len(dead) > 10 else ""
        confirm(f"revive {len(dead)} dead range(s) of job {job} ({shown}{more})?", yes)
        prints = fingerprint
        if fingerprint is not None and len(fingerprint) < 64:
            full = {a.fingerprint for a in dead}
            if len(full) > 1:
                raise InvalidArgument(f"fingerprint prefix {fingerprint!r} is ambiguous")
            prints = next(iter(full), fingerprint)
        revived = await inv.retry(job, fingerprint=prints, batch_ids=batch_id or None)
        if json:
            echo_json({"job": job, "revived": revived})
        else:
            typer.echo(f"revived {revived} range(s) of job {job}: they are due for a retry now")

    run(work)


@app.command("set-cursor")
def set_cursor(
    job: JobArg,
    meta_id: Annotated[int, typer.Argument(metavar="ID", help="New ranges start after it.")],
    yes: Yes = False,
    json: Json = False,
) -> None:
    """Move JOB's cursor: new ranges start after ID."""

    async def work(inv: Inventory, settings: Settings) -> None:
        await inv.open()
        record = await inv.store.get_job(job)
        before = None if record is None else record.cursor
        source = new_source(settings) if record is None else None
        creatable(job, record, source)
        confirm(f"move the cursor of job {job} from {before} to {meta_id}?", yes)
        await inv.set_cursor(job, meta_id, source=source)
        if json:
            echo_json({"job": job, "cursor_before": before, "cursor": meta_id})
        else:
            typer.echo(f"cursor of job {job}: {before} -> {meta_id}")

    run(work)


@app.command("mark-done")
def mark_done(
    job: JobArg,
    start: Annotated[int, typer.Argument(help="First id of the range.")],
    end: Annotated[int, typer.Argument(help="Last id of the range (inclusive).")],
    yes: Yes = False,
    json: Json = False,
) -> None:
    """Record [START, END] of JOB as processed elsewhere; the cursor moves past it."""

    async def work(inv: Inventory, settings: Settings) -> None:
        await inv.open()
        record = await inv.store.get_job(job)
        before = None if record is None else record.cursor
        source = new_source(settings) if record is None else source_of(settings, record)
        creatable(job, record, source)
        confirm(f"record [{start}, {end}] of job {job} as done?", yes)
        attempt_id = await inv.mark_done(job, start, end, source=source)
        after = await record_of(inv, job)
        if json:
            echo_json(
                {
                    "job": job,
                    "attempt_id": attempt_id,
                    "meta_id_start": start,
                    "meta_id_end": end,
                    "cursor_before": before,
                    "cursor": after.cursor,
                }
            )
        else:
            typer.echo(
                f"recorded [{start}, {end}] of job {job} as done (attempt id {attempt_id}); "
                f"cursor {before} -> {after.cursor}"
            )

    run(work)


@app.command()
def migrate(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the SQL, run nothing.")] = False,
) -> None:
    """Bring the inventory's schema up to date (prints the SQL it runs)."""

    async def work(inv: Inventory, settings: Settings) -> list[str]:
        return await inv.migrate(dry_run=dry_run)

    statements = run(work)
    for statement in statements:
        typer.echo(statement)
    if not statements:
        typer.echo("the inventory schema is up to date")
    elif dry_run:
        typer.echo(f"-- dry run: {len(statements)} statement(s), nothing was changed")
    else:
        typer.echo(f"-- applied {len(statements)} statement(s)")


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Files to generate (>= 20000).")] = 100_000,
    workers: Annotated[int, typer.Option(help="Concurrent async workers.")] = 4,
    directory: Annotated[
        str | None, typer.Option("--dir", help="Keep the SQLite files here.")
    ] = None,
) -> None:
    """Run the end-to-end demo on embedded SQLite (as `make demo`)."""
    from pybatchintory import demo as demo_module

    argv = ["--rows", str(rows), "--workers", str(workers)]
    if directory is not None:
        argv += ["--dir", directory]
    raise typer.Exit(demo_module.main(argv))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns its exit code."""
    try:
        app(args=argv, prog_name="pybatchintory", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
