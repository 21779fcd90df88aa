"""Pure planning logic: limits, windows, range cutting, backoff. No I/O here.

The planner never reads the rows of the backlog. It asks the source for *page summaries*
(aggregates over at most ``limit`` rows in id order) and stops as soon as a cap is hit, so
the rows read are bounded by the batch size, not by the table.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal

from pybatchintory.errors import InvalidArgument
from pybatchintory.models import Limits, PlannedRange, Weight
from pybatchintory.protocols import PageRequest, PageSummary
from pybatchintory.weights import as_weight, check_max_weight, exact

__all__ = (
    "MAX_PAGE",
    "RangeCutter",
    "backoff_delay",
    "check_job_name",
    "statement_page_size",
    "is_seconds",
    "validate_limits",
    "validate_window",
)

MAX_PAGE = 50_000
"""Upper bound on the rows one page summary reads."""

_FIRST_PAGE = 256
_SMALLEST_STATEMENT_PAGE = 32


def statement_page_size(size: int, max_count: int | None) -> int:
    """``size`` rounded up to one of a few fixed page sizes (32, then steps of ~19 %).

    A weight cap sizes its first page from the previous batch, so the size drifts from one
    lease to the next. A store that writes the size into its acquire statement (so that the
    database can keep one generic plan for it) sees only these few sizes instead. Reading a
    few more rows than asked changes no cut: the page only decides more often. Never more
    than ``max_count`` or ``MAX_PAGE``.
    """
    step = _SMALLEST_STATEMENT_PAGE
    while step < size:
        step = max(step + 1, math.ceil(step * 2**0.25))
    bound = MAX_PAGE if max_count is None else min(MAX_PAGE, max_count)
    return max(1, min(step, bound))


def is_seconds(value: object) -> bool:
    """A finite number of seconds (not a bool, not NaN or infinity)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_poll_interval(value: object) -> float:
    """The seconds between looks at the ledger: a finite number above zero."""
    if not is_seconds(value) or value <= 0:  # type: ignore[operator]
        raise InvalidArgument(f"poll_interval must be > 0 seconds: {value!r}")
    return float(value)  # type: ignore[arg-type]


def validate_limits(
    max_count: object, max_weight: object, *, has_weight: bool | None = None
) -> Limits:
    """Check the caps and return them as ``Limits``.

    Raises:
        InvalidArgument: ``max_count`` is not a positive integer, ``max_weight`` not a
            finite number above zero (``1.5`` is fine), or ``max_weight`` is given for a
            source without a weight column.
    """
    if max_count is not None:
        if isinstance(max_count, bool) or not isinstance(max_count, int):
            raise InvalidArgument(f"max_count must be a positive integer, got {max_count!r}")
        if max_count <= 0:
            raise InvalidArgument(f"max_count must be > 0, got {max_count}")
    if max_weight is not None:
        check_max_weight(max_weight)
    if max_weight is not None and has_weight is False:
        raise InvalidArgument(
            "max_weight needs a weight column: pass MetaTable(..., weight='<column>')"
        )
    return Limits(max_count=max_count, max_weight=max_weight)  # type: ignore[arg-type]


def validate_window(id_start: object, id_end: object) -> tuple[int | None, int | None]:
    """Check a job window.

    Raises:
        InvalidArgument: a bound is not an integer, or ``id_start > id_end``.
    """
    for name, value in (("id_start", id_start), ("id_end", id_end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{name} must be an integer or None, got {value!r}")
    if id_start is not None and id_end is not None and id_start > id_end:  # type: ignore[operator]
        raise InvalidArgument(f"id_start ({id_start}) must not exceed id_end ({id_end})")
    return id_start, id_end  # type: ignore[return-value]


def backoff_delay(retry_delay: float, failures: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying a range that has failed ``failures`` times.

    ``retry_delay * 2**(failures-1)``, with up to ±25 % jitter so that ranges failed
    together do not come back together. ``retry_delay == 0`` means at once.
    """
    if retry_delay <= 0 or failures <= 0:
        return 0.0
    base = retry_delay * 2 ** (failures - 1)
    jitter = (rng or random).uniform(0.75, 1.25)
    return float(base * jitter)


@dataclass(slots=True)
class RangeCutter:
    """Cuts one range after a cursor from successive page summaries.

    Use: ``while (req := cutter.request()) is not None: cutter.feed(await summarize(req))``,
    then ``cutter.result()``.

    Args:
        after: The job cursor (last id already handed out), ``None`` before the first batch.
        end: Highest id that may be handed out (window end and horizon), ``None``: no bound.
        limits: The caps.
        hint: Expected rows per batch (the previous batch's count), to size the first page.
    """

    after: int | None
    end: int | None
    limits: Limits
    hint: int | None = None
    _start: int | None = None
    _last: int | None = None
    _count: int = 0
    _weight: int | Decimal = 0
    _oversized: bool = False
    _done: bool = False
    _limit: int | None = None
    _avg_weight: float | None = None
    _floats: bool = False

    def request(self) -> PageRequest | None:
        """The next page to summarise, or ``None`` when the range is cut."""
        if self._done:
            return None
        if self.end is not None and self.after is not None and self.after >= self.end:
            self._done = True
            return None
        max_count, max_weight = self.limits.max_count, self.limits.max_weight
        remaining_count = None if max_count is None else max_count - self._count
        if max_weight is None:
            limit = remaining_count  # one exact page (or everything when uncapped)
            remaining_weight = None
        else:
            remaining_weight = as_weight(exact(max_weight) - self._weight)
            limit = self._page_size(remaining_weight, remaining_count)
        self._limit = limit
        return PageRequest(
            after=self._last if self._last is not None else self.after,
            end=self.end,
            limit=limit,
            max_weight=remaining_weight,
        )

    def _page_size(self, remaining_weight: Weight, remaining_count: int | None) -> int:
        if self._avg_weight is None:
            # First page: the previous batch's size, else a small probe.
            size = self.hint + 8 if self.hint else _FIRST_PAGE
        else:
            if self._avg_weight > 0:
                estimate = math.ceil(float(remaining_weight) / self._avg_weight * 1.25) + 8
            else:
                estimate = MAX_PAGE
            # Never read more than the batch already holds: if the rows ahead are heavier
            # than those behind, the estimate is wrong, and growth stays geometric, so the
            # rows read stay within a small multiple of the batch.
            size = min(estimate, max(_FIRST_PAGE, self._count))
        size = max(1, min(size, MAX_PAGE))
        if remaining_count is not None:
            size = min(size, remaining_count)
        return size

    def feed(self, page: PageSummary) -> None:
        """Account for one page summary."""
        if page.rows == 0 or page.first_id is None or page.last_id is None:
            self._done = True
            return
        if self._start is None:
            self._start = self.after + 1 if self.after is not None else page.first_id
        if isinstance(page.weight, float) or isinstance(page.first_weight, float):
            self._floats = True  # a float column: its range's weight is a float sum too
        max_weight = self.limits.max_weight
        if max_weight is not None and page.fit_rows < page.rows:
            # The cap is hit inside this page: take the prefix that fits.
            if page.fit_rows == 0 and self._count == 0:
                # A single row heavier than the cap goes out alone, flagged.
                self._count, self._weight = 1, exact(page.first_weight)
                self._last, self._oversized = page.first_id, True
            elif page.fit_rows > 0:
                assert page.fit_last_id is not None
                self._count += page.fit_rows
                self._weight += exact(page.fit_weight)
                self._last = page.fit_last_id
            self._done = True
            return
        self._count += page.rows
        self._weight += exact(page.weight)
        self._last = page.last_id
        if page.rows and page.weight >= 0:
            self._avg_weight = float(page.weight) / page.rows
        limit = self._limit
        if limit is None or page.rows < limit:
            self._done = True  # the source has no more rows in reach
        elif self.limits.max_count is not None and self._count >= self.limits.max_count:
            self._done = True

    def result(self) -> PlannedRange | None:
        """The cut range, or ``None`` if no row was found."""
        if self._count == 0 or self._start is None or self._last is None:
            return None
        return PlannedRange(
            meta_id_start=self._start,
            meta_id_end=self._last,
            count=self._count,
            weight=as_weight(float(self._weight) if self._floats else self._weight),
            oversized=self._oversized,
        )


_MAX_JOB_NAME = 255


def check_job_name(job: object) -> str:
    """Return ``job`` if it is a usable job name.

    Raises:
        InvalidArgument: Not a non-empty string of at most 255 characters without NUL.
    """
    if (
        not isinstance(job, str)
        or not job.strip()
        or len(job) > _MAX_JOB_NAME
        or "\x00" in job  # PostgreSQL cannot store NUL; no store may accept it then
    ):
        raise InvalidArgument(
            f"job must be a non-empty name of at most 255 characters, without NUL: {job!r}"
        )
    return job
