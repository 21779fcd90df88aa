"""The two seams of pybatchintory, as domain operations.

``MetadataSource`` says where ids, counts and weights come from; ``InventoryStore`` keeps the
ledger. Both are :class:`typing.Protocol` classes: a third party can provide either without
inheriting from anything here. Neither takes or returns SQL strings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pybatchintory.models import (
    Attempt,
    ErrorGroup,
    JobSpec,
    JobStatus,
    LeaseGrant,
    LedgerSummary,
    PlannedRange,
    Settlement,
    Status,
    Weight,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = (
    "BindContext",
    "BoundSource",
    "InventoryStore",
    "JobRecord",
    "MetadataSource",
    "FirstPage",
    "PageRequest",
    "PageSummary",
    "Planner",
    "RangeCount",
    "StatementLink",
    "split_weighted_page",
    "StoreAdapter",
)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One bounded read of a source, asked for by the planner.

    Attributes:
        after: Read ids strictly greater than this (``None``: from the first row).
        end: Read ids up to and including this (``None``: no upper bound).
        limit: Read at most this many rows, in id order (``None``: all of them).
        max_weight: Report how many leading rows fit under this cumulative weight.
    """

    after: int | None
    end: int | None
    limit: int | None
    max_weight: Weight | None


@dataclass(frozen=True, slots=True)
class PageSummary:
    """Aggregates of one page; the planner never sees the rows themselves.

    Attributes:
        rows: Rows read (at most the request's ``limit``).
        first_id: Smallest id read.
        first_weight: Weight of that first row.
        last_id: Largest id read.
        weight: Summed weight of the rows read.
        fit_rows: Leading rows whose cumulative weight stays within ``max_weight``
            (equals ``rows`` when there is no weight cap).
        fit_last_id: Largest id among those rows.
        fit_weight: Their summed weight.
    """

    rows: int
    first_id: int | None
    first_weight: Weight
    last_id: int | None
    weight: Weight
    fit_rows: int
    fit_last_id: int | None
    fit_weight: Weight


@dataclass(frozen=True, slots=True)
class RangeCount:
    """Current count and weight of a recorded range (for ``audit``)."""

    meta_id_start: int
    meta_id_end: int
    count: int
    weight: Weight


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the store keeps it."""

    name: str
    meta_table: str
    source: Mapping[str, Any]
    id_start: int | None
    id_end: int | None
    cursor: int | None


class BoundSource(Protocol):
    """A source resolved against real databases: it can answer queries."""

    name: str
    has_weight: bool

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the source (kind, table, columns, filter)."""
        ...

    async def horizon(self, link: object | None) -> int | None:
        """Highest id that is safe to hand out now, or ``None`` for no limit."""
        ...

    async def summarize(self, request: PageRequest, link: object | None) -> PageSummary:
        """Aggregate one page of rows; ``link`` may be the store's open connection."""
        ...

    async def items(self, start: int, end: int) -> list[Mapping[str, Any]]:
        """All rows of ``[start, end]`` that pass the source's filter, in id order."""
        ...

    def iter_items(self, start: int, end: int, chunk_size: int) -> AsyncIterator[Mapping[str, Any]]:
        """Rows of ``[start, end]`` in id order, read ``chunk_size`` at a time."""
        ...

    async def recount(self, ranges: Sequence[tuple[int, int]]) -> list[RangeCount]:
        """Current count and weight of each range (one grouped query per chunk)."""
        ...


@dataclass(frozen=True, slots=True)
class BindContext:
    """What a source may use to resolve itself.

    Attributes:
        store: The inventory store (``InventorySource`` reads another job from it).
        inventory_engine: The inventory's engine, the default metadata database.
        engine_for: Returns an engine for another URL (created once, disposed by the inventory).
        metadata_url: The metadata database of a source that names none (``MetaTable``
            without ``url=``): the inventory's own when ``None`` (``PYBATCHINTORY_META_URL``
            on an ``Inventory.from_settings()``).
    """

    store: InventoryStore
    inventory_engine: AsyncEngine
    engine_for: Callable[[str], AsyncEngine]
    metadata_url: str | None = None


@runtime_checkable
class MetadataSource(Protocol):
    """Where ids, counts and weights come from (``MetaTable``, ``InventorySource``)."""

    @property
    def name(self) -> str:
        """Human-readable name, stored as the ledger's ``meta_table``."""
        ...

    async def bind(self, context: BindContext) -> BoundSource:
        """Validate against the real database and return a queryable source."""
        ...


@runtime_checkable
class StatementLink(Protocol):
    """A store's open transaction that sources on the same engine may read through.

    Stores that run acquire on their own execution path (not an ``AsyncConnection``) pass
    one of these as the planner's link, so page summaries stay one statement on the same
    connection.
    """

    engine: AsyncEngine

    async def fetch_one(self, statement: Any, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row of a SQLAlchemy Core ``statement`` with bound ``params``."""
        ...


Planner = Callable[[object | None, int | None], Awaitable[PlannedRange | None]]
"""Cuts the next range after a cursor: ``await planner(link, cursor)``.

A planner may also have ``first_page(engine) -> FirstPage | None``: the first page of its
cut as a statement, for a store that locks, cuts, inserts and moves the cursor in one
statement (``FirstPage``). Stores call it through ``getattr``; a plain callable has none.
"""


def split_weighted_page(limit: int) -> tuple[int, int] | None:
    """A weighted page of ``limit`` rows as ``(head, tail)`` rows, or ``None``: one piece.

    A source may summarise a weighted page as a head read with plain aggregates (when its
    weights are not negative and their sum is within the cap, every head row fits) and a
    tail with the running sum (a window function) over the rest only: ``p_head_limit`` and
    ``p_tail_limit``, which a store writes into its statement as it writes ``p_limit``. The
    head is three quarters of the page: a first page is sized from the previous batch, a
    later one from the average weight, so the cap is usually hit after that.
    """
    if limit < _SPLIT_FROM:
        return None
    head = limit * 3 // 4
    return head, limit - head


_SPLIT_FROM = 64
"""Smaller weighted pages are summarised in one piece (the split gains nothing)."""


@dataclass(frozen=True, slots=True)
class FirstPage:
    """The first page of a cut, for a store that runs the whole acquire as one statement.

    The store puts ``query`` (a SQLAlchemy ``Select`` on the inventory's own database)
    inside its acquire statement with the bind parameter ``p_after`` replaced by the locked
    job's cursor. When that one page decides the cut (it is empty, the weight cap is hit
    inside it, it holds fewer rows than ``limit``, or ``max_count`` rows), the store cuts
    the range from it as the planner would; otherwise it calls the planner as usual.

    With a count cap and no weight cap, ``rows`` also lets a store cut ``n`` ranges of an
    ``acquire_many`` at once: every ``max_count`` rows of one page of ``n * max_count``
    rows (``p_limit``) are one range, as the planner would cut them one after another.

    Attributes:
        query: The page summary: ``PageSummary``'s eight fields as columns, in that order.
        rows: The page's rows: ``id`` and weight ``w`` in id order, at most ``p_limit``.
        params: Their bind parameters other than ``p_after``.
        limit: Rows the page reads at most (``None``: all of them), the value of
            ``p_limit``. A store may write it into its statement as a literal: it changes
            rarely (a weight cap's first page comes in a few fixed sizes); so it may
            ``p_head_limit`` and ``p_tail_limit``, ``split_weighted_page(limit)``.
        max_count: The count cap (``None``: none).
        max_weight: The weight cap (``None``: none).
        taken: Tell the planner what was cut (it sizes the job's next first page).
    """

    query: Any
    rows: Any
    params: Mapping[str, Any]
    limit: int | None
    max_count: int | None
    max_weight: Weight | None
    taken: Callable[[PlannedRange], None]


class InventoryStore(Protocol):
    """The ledger: jobs, attempts, leases, as domain operations."""

    engine: AsyncEngine

    async def setup(self) -> None:
        """Create the schema if it is missing (idempotent, safe to race)."""
        ...

    async def ensure_job(self, spec: JobSpec) -> JobRecord:
        """Record a new job or check that ``spec`` agrees with the recorded one."""
        ...

    async def get_job(self, name: str) -> JobRecord | None:
        """The recorded job, or ``None``."""
        ...

    async def list_jobs(self) -> list[JobRecord]:
        """Every recorded job, by name."""
        ...

    async def acquire(
        self,
        job: str,
        *,
        owner: str,
        ttl: float,
        max_attempts: int,
        n: int,
        planner: Planner,
        config: Mapping[str, Any] | None = None,
    ) -> list[LeaseGrant]:
        """Lease up to ``n`` ranges of ``job`` in one transaction.

        The order (docs/architecture.md, "The life of a lease"): expire the leases that ran
        out, then the retries that are due (oldest range first), then new ranges cut from
        the cursor. ``config`` (JSON-able, no secrets) is stored with every new attempt.
        """
        ...

    async def heartbeat(self, owner: str, ttl: float, tokens: Collection[str]) -> set[str]:
        """Renew every running lease of ``owner``; return the tokens that are gone."""
        ...

    async def settle(self, settlement: Settlement) -> None:
        """End an attempt; raise ``LeaseLost`` (and change nothing) if the lease is gone."""
        ...

    async def settle_many(self, settlements: Sequence[Settlement]) -> dict[int, str]:
        """End many attempts, each fenced by its token as ``settle`` is, in one statement.

        Returns the attempt ids whose lease was gone (nothing changed for them), each with
        why ("taken over", "lease expired", "already failed", ...); an attempt already
        settled the same way with the same token counts as settled (a retry after a
        dropped connection). Raises only when the database fails.
        """
        ...

    async def attempts(
        self,
        job: str,
        *,
        status: Collection[Status] | None = None,
        limit: int | None = None,
        ids: Collection[int] | None = None,
        max_attempts: int,
    ) -> list[Attempt]:
        """Attempts of a job as seen now, newest first.

        Every read here sees the ledger as of the database clock: a running attempt whose
        lease ran out reads as the next acquire would record it (``expired``, and dead
        once it was the last of ``max_attempts``), and ``status`` filters by that.
        """
        ...

    async def history(self, meta_table: str, meta_id: int, *, max_attempts: int) -> list[Attempt]:
        """Every attempt, as seen now, of every job on ``meta_table`` covering ``meta_id``."""
        ...

    async def ledger_summary(self, job: str, *, max_attempts: int) -> LedgerSummary:
        """Counts for backlog, as of now: running, ranges (rows, weight) waiting, dead ones."""
        ...

    async def job_statuses(self, *, max_attempts: int) -> list[JobStatus]:
        """One line per job, by name: cursor, window, counts as of now, last success."""
        ...

    async def error_groups(self, job: str) -> list[ErrorGroup]:
        """Failed attempts grouped by fingerprint."""
        ...

    async def revive(
        self,
        job: str,
        *,
        fingerprint: str | None,
        batch_ids: Collection[int] | None,
        max_attempts: int,
    ) -> int:
        """Make dead ranges due again with a fresh attempt budget; return how many.

        ``batch_ids`` are attempt ids, each naming its range (any attempt of it). Leases
        that ran out are expired first (with ``max_attempts``), as an acquire would, so a
        range that reads as dead is revived.
        """
        ...

    async def set_cursor(self, job: str, meta_id: int) -> None:
        """Move a job's cursor."""
        ...

    async def record_done(
        self, job: str, start: int, end: int, count: int, weight: Weight, owner: str
    ) -> int:
        """Record a succeeded range done outside the inventory; return its attempt id."""
        ...

    async def succeeded_ranges(
        self,
        job: str,
        *,
        after: int | None,
        end: int | None,
        limit: int | None,
        before_open: bool = False,
    ) -> list[Attempt]:
        """Succeeded attempts of ``job`` in id order (for ``InventorySource`` and audit).

        With ``before_open``, only those before the oldest range of ``job`` that is still
        running, waiting for a retry or dead, decided in the same read (one snapshot), so
        a range leased and settled meanwhile cannot let a later success slip past it.
        """
        ...

    async def due_ranges(self, job: str, *, max_attempts: int, limit: int) -> list[Attempt]:
        """The newest attempts of the ranges an acquire would retry now, oldest range first.

        Those waiting for a retry that is due, and running ones whose lease has expired
        with attempts left. Reads only (for ``Inventory.plan``).
        """
        ...

    async def oldest_open_start(self, job: str) -> int | None:
        """Smallest ``meta_id_start`` of a range of ``job`` not finished yet.

        Running, waiting for a retry, or dead: the recursion horizon of a downstream job.
        """
        ...

    async def migrate(self, *, dry_run: bool = False) -> list[str]:
        """Bring the ledger's schema up to date; return its statements (run or, dry, not)."""
        ...

    async def aclose(self) -> None:
        """Release the store's own resources (never an engine it was handed)."""
        ...


class StoreAdapter(Protocol):
    """Entry point of a database adapter (group ``pybatchintory.adapters``)."""

    name: str
    extra: str

    def check_driver(self, driver: str) -> None:
        """Raise ``MissingDriver`` naming the extra if ``driver`` is not importable."""
        ...

    def default_driver(self) -> str:
        """The async driver used when the URL names none (``postgresql://``)."""
        ...

    def create_engine(self, url: str, **options: Any) -> AsyncEngine:
        """An engine configured for this database (isolation, busy timeout, hooks)."""
        ...

    def create_store(self, engine: AsyncEngine, *, table_prefix: str) -> InventoryStore:
        """A store on ``engine``; the store does not dispose it."""
        ...
