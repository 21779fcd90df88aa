"""``Operator``: the reads of the ledger and the operator's controls behind ``Inventory``.

Reads (``backlog``, ``batches``, ``history``, ``status``, ``errors``, ``plan``, ``audit``)
never write; controls (``retry``, ``set_cursor``, ``mark_done``) write through the store,
which takes the job lock where a control touches a cursor. ``Inventory`` forwards its
public methods here; their documentation is there.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from pybatchintory._database import Database
from pybatchintory._jobs import Jobs
from pybatchintory._planning import RangeCutter, check_job_name, validate_window
from pybatchintory.errors import InvalidArgument, UnknownJob
from pybatchintory.models import (
    Attempt,
    Backlog,
    ErrorGroup,
    JobStatus,
    PlannedRange,
    Status,
    Weight,
)
from pybatchintory.protocols import JobRecord, MetadataSource, PageRequest, RangeCount
from pybatchintory.weights import same, total

__all__ = ("AuditFinding", "Operator")

_ETA_SAMPLE = 50
_AUDIT_CHUNK = 1000


def _status(value: Status | str) -> Status:
    try:
        return Status(value)
    except ValueError:
        known = ", ".join(s.value for s in Status)
        raise InvalidArgument(f"unknown status {value!r}; one of: {known}") from None


class AuditFinding:
    """A succeeded range whose rows changed after it was handed out."""

    __slots__ = ("attempt", "count", "weight")

    def __init__(self, attempt: Attempt, current: RangeCount) -> None:
        self.attempt = attempt
        self.count = current.count
        self.weight = current.weight

    def __repr__(self) -> str:
        a = self.attempt
        return (
            f"AuditFinding(job={a.job!r}, range=[{a.meta_id_start}, {a.meta_id_end}], "
            f"ledger=({a.count}, {a.weight}), now=({self.count}, {self.weight}))"
        )


class Operator:
    """The operator's reads of the ledger and controls of its jobs.

    Args:
        database: The inventory database.
        jobs: The jobs part (bound sources, records).
        owner: Recorded as the owner of ranges marked done.
        max_attempts: The retry budget: a lease that ran out on the last attempt reads as
            dead, and the dry run of retries counts with it.
    """

    def __init__(self, database: Database, jobs: Jobs, *, owner: str, max_attempts: int) -> None:
        self._db = database
        self._jobs = jobs
        self._owner = owner
        self._max_attempts = max_attempts

    async def backlog(self, job: str, source: MetadataSource | None = None) -> Backlog:
        """What is left for ``job``: rows after the cursor, retries, dead ranges, ETA."""
        record = await self._jobs.record(job)
        bound = await self._jobs.source_of(record, source)
        after = record.cursor
        ahead = await bound.summarize(
            PageRequest(after=after, end=record.id_end, limit=None, max_weight=None), None
        )
        ledger = await self._db.store.ledger_summary(job, max_attempts=self._max_attempts)
        count = ahead.rows + ledger.retry_count
        return Backlog(
            count=count,
            weight=total(ahead.weight, ledger.retry_weight),
            retry_due=ledger.retry_ranges,
            dead=ledger.dead_ranges,
            running=ledger.running,
            eta=await self._eta(job, count),
            dead_count=ledger.dead_count,
            dead_weight=ledger.dead_weight,
        )

    async def _eta(self, job: str, count: int) -> timedelta | None:
        if count == 0:
            return timedelta(0)
        recent = await self._db.store.attempts(
            job, status=[Status.SUCCEEDED], limit=_ETA_SAMPLE, max_attempts=self._max_attempts
        )
        timed = [a for a in recent if a.processing_start and a.processing_end]
        if len(timed) < 2:
            return None
        first = min(a.processing_start for a in timed if a.processing_start)
        last = max(a.processing_end for a in timed if a.processing_end)
        seconds = (last - first).total_seconds()
        rows = sum(a.count for a in timed)
        if seconds <= 0 or rows == 0:
            return None
        return timedelta(seconds=count * seconds / rows)

    async def batches(
        self,
        job: str,
        status: Status | str | Collection[Status | str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[Attempt]:
        """Attempts of ``job``, newest first, optionally of some statuses only."""
        check_job_name(job)
        await self._db.open()
        wanted: list[Status] | None
        if status is None:
            wanted = None
        elif isinstance(status, str):
            wanted = [_status(status)]
        else:
            wanted = [_status(s) for s in status]
        return await self._db.store.attempts(
            job, status=wanted, limit=limit, max_attempts=self._max_attempts
        )

    async def history(self, source: MetadataSource | str, meta_id: int) -> list[Attempt]:
        """Every attempt of every job whose range covers ``meta_id`` of ``source``."""
        await self._db.open()
        if isinstance(meta_id, bool) or not isinstance(meta_id, int):
            raise InvalidArgument(f"meta_id must be an integer, got {meta_id!r}")
        name = source if isinstance(source, str) else source.name
        return await self._db.store.history(name, meta_id, max_attempts=self._max_attempts)

    async def status(self) -> list[JobStatus]:
        """One line per job: cursor, window, attempts by status, last success."""
        store = await self._db.open()
        return await store.job_statuses(max_attempts=self._max_attempts)

    async def errors(self, job: str) -> list[ErrorGroup]:
        """Failed attempts of ``job`` grouped by fingerprint, most frequent first."""
        await self._jobs.record(job)
        return await self._db.store.error_groups(job)

    async def retry(
        self,
        job: str,
        *,
        fingerprint: str | None = None,
        batch_ids: Collection[int] | None = None,
    ) -> int:
        """Revive dead ranges of ``job`` (all, one fingerprint, or some attempt ids)."""
        await self._jobs.record(job)
        return await self._db.store.revive(
            job, fingerprint=fingerprint, batch_ids=batch_ids, max_attempts=self._max_attempts
        )

    async def plan(
        self,
        job: str,
        source: MetadataSource | str,
        *,
        max_count: int | None = None,
        max_weight: Weight | None = None,
        id_start: int | None = None,
        id_end: int | None = None,
        n: int = 5,
    ) -> list[PlannedRange]:
        """Dry run: the next ``n`` ranges the job would get, in order. Writes nothing."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be a positive integer, got {n!r}")
        check_job_name(job)
        await self._db.open()
        record = await self._db.store.get_job(job)
        if record is not None and id_start is None and id_end is None:
            id_start, id_end = record.id_start, record.id_end  # the recorded window
        # An existing job is compared with the call (JobConflict, never a write); a new one
        # is not recorded: a dry run leaves no trace.
        bound, limits = await self._jobs.prepare(
            job,
            source,
            max_count=max_count,
            max_weight=max_weight,
            id_start=id_start,
            id_end=id_end,
            record=record is not None,
        )
        cursor = record.cursor if record else (None if id_start is None else id_start - 1)
        end = record.id_end if record else id_end
        horizon = await bound.horizon(None)
        if horizon is not None:
            end = horizon if end is None else min(end, horizon)
        planned: list[PlannedRange] = []
        if record is not None:
            due = await self._db.store.due_ranges(job, max_attempts=self._max_attempts, limit=n)
            planned = [
                PlannedRange(
                    a.meta_id_start,
                    a.meta_id_end,
                    a.count,
                    a.weight,
                    a.oversized,
                    attempt=a.attempt + 1,
                )
                for a in due
            ]
        while len(planned) < n:
            cutter = RangeCutter(after=cursor, end=end, limits=limits)
            while (request := cutter.request()) is not None:
                cutter.feed(await bound.summarize(request, None))
            cut = cutter.result()
            if cut is None:
                break
            planned.append(cut)
            cursor = cut.meta_id_end
        return planned

    async def _adopt(self, job: str, source: MetadataSource | str | None) -> JobRecord:
        """``job``'s record; a job not recorded yet is created from ``source``.

        A given ``source`` of an existing job must agree with the record (``JobConflict``
        otherwise); its recorded window stays as it is.
        """
        check_job_name(job)
        await self._db.open()
        record = await self._db.store.get_job(job)
        if record is None and source is None:
            raise UnknownJob(
                f"job {job!r} is not recorded in the inventory; pass source= to create it"
            )
        if source is not None:
            window = (None, None) if record is None else (record.id_start, record.id_end)
            await self._jobs.prepare(
                job,
                source,
                max_count=None,
                max_weight=None,
                id_start=window[0],
                id_end=window[1],
            )
        return await self._jobs.record(job)

    async def set_cursor(
        self, job: str, meta_id: int, *, source: MetadataSource | str | None = None
    ) -> None:
        """Move ``job``'s cursor: new ranges start after ``meta_id``."""
        if isinstance(meta_id, bool) or not isinstance(meta_id, int):
            raise InvalidArgument(f"meta_id must be an integer, got {meta_id!r}")
        await self._adopt(job, source)
        await self._db.store.set_cursor(job, meta_id)

    async def mark_done(
        self,
        job: str,
        start: int,
        end: int,
        *,
        source: MetadataSource | str | None = None,
    ) -> int:
        """Record ``[start, end]`` as processed elsewhere; the cursor moves past it."""
        validate_window(start, end)
        if start is None or end is None:
            raise InvalidArgument("mark_done needs both start and end")
        record = await self._adopt(job, source)
        if (record.id_start is not None and start < record.id_start) or (
            record.id_end is not None and end > record.id_end
        ):
            raise InvalidArgument(
                f"[{start}, {end}] is outside the window [{record.id_start}, "
                f"{record.id_end}] of job {job!r}"
            )
        bound = await self._jobs.source_of(record, source if not isinstance(source, str) else None)
        if record.cursor is None or start - 1 > record.cursor:
            skipped = await bound.summarize(
                PageRequest(after=record.cursor, end=start - 1, limit=None, max_weight=None),
                None,
            )
            if skipped.rows:
                raise InvalidArgument(
                    f"marking [{start}, {end}] done would skip {skipped.rows} rows of job "
                    f"{job!r} between its cursor ({record.cursor}) and {start}; mark them "
                    "done too, or move the cursor with set_cursor() first"
                )
        (current,) = await bound.recount([(start, end)])
        return await self._db.store.record_done(
            job, start, end, current.count, current.weight, self._owner
        )

    async def audit(self, job: str, source: MetadataSource | None = None) -> list[AuditFinding]:
        """Succeeded ranges of ``job`` whose current count or weight differs from the ledger."""
        record = await self._jobs.record(job)
        bound = await self._jobs.source_of(record, source)
        findings: list[AuditFinding] = []
        after: int | None = None
        while True:
            ranges = await self._db.store.succeeded_ranges(
                job, after=after, end=None, limit=_AUDIT_CHUNK
            )
            if not ranges:
                return findings
            current = await bound.recount([(a.meta_id_start, a.meta_id_end) for a in ranges])
            for attempt, now in zip(ranges, current, strict=True):
                if now.count != attempt.count or (
                    bound.has_weight and not same(now.weight, attempt.weight)
                ):
                    findings.append(AuditFinding(attempt, now))
            after = ranges[-1].meta_id_start
