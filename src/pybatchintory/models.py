"""Typed records returned by the public API and passed across the store seam."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = (
    "Attempt",
    "Backlog",
    "ErrorGroup",
    "JobSpec",
    "JobStatus",
    "LeaseGrant",
    "LedgerSummary",
    "Limits",
    "PlannedRange",
    "Settlement",
    "Status",
    "Weight",
)

Weight = int | float | Decimal
"""A weight: an integer, a float or an exact decimal (see ``pybatchintory.weights``)."""


class Status(enum.StrEnum):
    """Status of one attempt (one lease of one range)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-batch hard caps; ``None`` means no cap on that measure."""

    max_count: int | None = None
    max_weight: Weight | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job is bound to: recorded on first use, compared on every later use.

    Attributes:
        name: The job's name, its identity.
        meta_table: Human-readable name of the source (the seed's ``meta_table`` column).
        source: A JSON-able description of the source (kind, table, id column, filter).
        id_start: First id of the window (inclusive), or ``None``.
        id_end: Last id of the window (inclusive), or ``None`` for incremental jobs.
    """

    name: str
    meta_table: str
    source: Mapping[str, Any]
    id_start: int | None = None
    id_end: int | None = None

    def identity(self) -> dict[str, Any]:
        """The parts that must agree between uses of one job."""
        return {
            "source": dict(self.source),
            "id_start": self.id_start,
            "id_end": self.id_end,
        }


@dataclass(frozen=True, slots=True)
class PlannedRange:
    """A range cut by the planner, not yet written anywhere.

    ``attempt`` is 1 for a new range; ``Inventory.plan`` lists a range due for a retry with
    the number of the attempt it would get.
    """

    meta_id_start: int
    meta_id_end: int
    count: int
    weight: Weight
    oversized: bool = False
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What the store hands back for one new attempt."""

    id: int
    job: str
    meta_table: str
    meta_id_start: int
    meta_id_end: int
    count: int
    weight: Weight
    attempt: int
    failures: int
    oversized: bool
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one attempt ends; applied by the store only if the lease is still held."""

    attempt_id: int
    token: str
    status: Status
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    fingerprint: str | None = None
    code_version: str | None = None
    counts_as_failure: bool = False
    dead: bool = False
    retry_delay: float = 0.0
    logging: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """A read-only record of one attempt, as stored in the inventory."""

    id: int
    job: str
    meta_table: str
    meta_id_start: int
    meta_id_end: int
    count: int
    weight: Weight
    attempt: int
    status: Status
    oversized: bool
    owner: str | None
    token: str | None
    processing_start: datetime | None
    processing_end: datetime | None
    expires_at: datetime | None
    retry_after: datetime | None
    dead: bool
    result: Any
    error_type: str | None
    error_message: str | None
    fingerprint: str | None
    traceback: str | None
    code_version: str | None

    @property
    def logging(self) -> str | None:
        """The seed's ``logging`` column (the same column as ``traceback``).

        Free text given to ``success``/``error``, then a failure's traceback.
        """
        return self.traceback


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """What the ledger says about one job's unfinished ranges (``InventoryStore.ledger_summary``).

    Attributes:
        running: Attempts currently leased.
        retry_ranges: Ranges waiting for a retry (due now or later).
        retry_count: Rows of those ranges.
        retry_weight: Their weight.
        dead_ranges: Ranges whose attempts are used up.
        dead_count: Rows of those ranges.
        dead_weight: Their weight.
    """

    running: int
    retry_ranges: int
    retry_count: int
    retry_weight: Weight
    dead_ranges: int
    dead_count: int
    dead_weight: Weight


@dataclass(frozen=True, slots=True)
class Backlog:
    """What is left to do for one job.

    Attributes:
        count: Rows after the cursor plus rows of ranges waiting for retry.
        weight: Summed weight of those rows (0 without a weight column).
        retry_due: Ranges waiting for a retry (due now or later).
        dead: Ranges whose attempts are used up; they wait for ``retry``.
        running: Attempts currently leased.
        eta: Estimated time to drain ``count`` at the recent success rate, if known.
        dead_count: Rows of the dead ranges (stuck work, not in ``count``).
        dead_weight: Their summed weight.
    """

    count: int
    weight: Weight
    retry_due: int
    dead: int
    running: int
    eta: timedelta | None = None
    dead_count: int = 0
    dead_weight: Weight = 0

    @property
    def eta_seconds(self) -> float | None:
        """``eta`` in seconds (``None`` when unknown)."""
        return None if self.eta is None else self.eta.total_seconds()


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One line of ``Inventory.status()``."""

    job: str
    meta_table: str
    cursor: int | None
    id_start: int | None
    id_end: int | None
    counts: Mapping[str, int] = field(default_factory=dict)
    last_success: datetime | None = None


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failed attempts of one job that share a fingerprint."""

    fingerprint: str
    error_type: str
    error_message: str
    count: int
    first_seen: datetime
    last_seen: datetime
    attempt_ids: tuple[int, ...]
