"""What every command of the command line shares: settings, the run wrapper, sources.

``run`` opens an ``Inventory`` from the settings (``--url`` wins), runs one command's work on
it and turns every failure into one line on stderr and exit code 1; URLs and passwords are
scrubbed from anything it prints.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console

from pybatchintory import _cli_render as render
from pybatchintory.errors import PybatchintoryError, UnknownJob
from pybatchintory.inventory import Inventory
from pybatchintory.protocols import JobRecord, MetadataSource
from pybatchintory.recursion import InventorySource
from pybatchintory.settings import Settings
from pybatchintory.sources import MetaTable

__all__ = (
    "CommandError",
    "JobArg",
    "Json",
    "Yes",
    "confirm",
    "console",
    "creatable",
    "echo_json",
    "new_source",
    "record_of",
    "run",
    "source_of",
    "state",
)

T = TypeVar("T")

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
JobArg = Annotated[str, typer.Argument(help="The job's name.")]


class CommandError(Exception):
    """A problem to report in one line (exit code 1)."""


class State:
    """Options given before the command (``--url``)."""

    url: str | None = None


state = State()


def settings_from_env() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandError(f"invalid PYBATCHINTORY_* settings: {problems}") from None
    if state.url:
        settings = settings.model_copy(update={"inventory_url": SecretStr(state.url)})
    return settings


def secrets_of(settings: Settings) -> list[str]:
    """Strings that must never reach the terminal: URLs and their passwords."""
    out: list[str] = []
    for secret in (settings.inventory_url, settings.meta_url):
        if secret is None:
            continue
        value = secret.get_secret_value()
        out.append(value)
        try:
            password = sa.engine.make_url(value).password
        except Exception:  # not a URL: the whole value is hidden above
            password = None
        if password:
            out.append(str(password))
    return sorted(out, key=len, reverse=True)


def fail(message: str, secrets: list[str]) -> typer.Exit:
    for secret in secrets:
        message = message.replace(secret, "***")
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(1)


def run(work: Callable[[Inventory, Settings], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on an open-able ``Inventory``; any failure is one line and exit code 1."""
    secrets: list[str] = []
    try:
        settings = settings_from_env()
        secrets = secrets_of(settings)

        async def main() -> T:
            inventory = Inventory.from_settings(settings)
            try:
                return await work(inventory, settings)
            finally:
                await inventory.aclose()

        return asyncio.run(main())
    except typer.Exit:
        raise
    except typer.Abort:
        typer.echo("aborted: nothing changed", err=True)
        raise typer.Exit(1) from None
    except (CommandError, PybatchintoryError) as exc:
        raise fail(str(exc), secrets) from None
    except KeyboardInterrupt:
        raise fail("interrupted", secrets) from None
    except Exception as exc:  # a driver or network failure: one line, never a traceback
        raise fail(f"{type(exc).__name__}: {exc}", secrets) from None


def echo_json(document: Any) -> None:
    typer.echo(render.dump(document))


def console() -> Console:
    # Piped into a file or a pager, rich would assume 80 columns; COLUMNS still wins.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=120 if wide else None)


async def record_of(inv: Inventory, job: str) -> JobRecord:
    await inv.open()
    record = await inv.store.get_job(job)
    if record is None:
        raise UnknownJob(f"job {job!r} is not recorded in the inventory")
    return record


def source_of(settings: Settings, record: JobRecord) -> MetadataSource:
    """The job's source, rebuilt from what the jobs table recorded."""
    described = dict(record.source)
    if described.get("kind") == "inventory":
        return InventorySource(described["job"])
    if described.get("kind") != "meta_table":
        raise CommandError(f"job {record.name!r} has a source this command cannot rebuild")
    url = None
    if described.get("database") == "inventory" and settings.meta_url is not None:
        # Without url= the inventory's defaults would look in META_URL's database.
        url = settings.inventory_url.get_secret_value()
    elif described.get("database") != "inventory":
        if settings.meta_url is None:
            raise CommandError(
                f"job {record.name!r} reads a separate metadata database: "
                "set PYBATCHINTORY_META_URL to reach it"
            )
        url = settings.meta_url.get_secret_value()
    where = described.get("filter")
    return MetaTable(
        described["table"],
        id=described["id"],
        weight=described.get("weight"),
        where=None if where is None else sa.text(where),
        url=url,
    )


def new_source(settings: Settings) -> MetadataSource | None:
    """The settings' table, for a job that is not recorded yet (``None`` if unset)."""
    if settings.meta_table is None:
        return None
    return MetaTable(
        settings.meta_table,
        id=settings.meta_id,
        weight=settings.meta_weight,
        timestamp=settings.meta_timestamp,
        url=None if settings.meta_url is None else settings.meta_url.get_secret_value(),
    )


def creatable(job: str, record: JobRecord | None, source: MetadataSource | None) -> None:
    """A write on a job that is not recorded needs the settings' table to create it."""
    if record is None and source is None:
        raise UnknownJob(
            f"job {job!r} is not recorded in the inventory; set PYBATCHINTORY_META_TABLE "
            "to create it"
        )


def confirm(question: str, yes: bool) -> None:
    if not yes:
        typer.confirm(question, abort=True, err=True)
