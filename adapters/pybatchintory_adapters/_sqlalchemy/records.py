"""Rows of the inventory table turned into the core's read-only records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from pybatchintory.models import Attempt, Status
from pybatchintory.protocols import JobRecord
from pybatchintory.weights import as_weight

__all__ = ("aware", "to_attempt", "to_job")


def aware(value: datetime | None) -> datetime | None:
    """The stored naive UTC timestamp as an aware one."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def to_attempt(row: sa.RowMapping) -> Attempt:
    """One inventory row as an ``Attempt``."""
    return Attempt(
        id=int(row["id"]),
        job=row["job"],
        meta_table=row["meta_table"],
        meta_id_start=int(row["meta_id_start"]),
        meta_id_end=int(row["meta_id_end"]),
        count=int(row["count"]),
        weight=as_weight(row["weight"]),
        attempt=int(row["attempt"]),
        status=Status(row["status"]),
        oversized=bool(row["oversized"]),
        owner=row["owner"],
        token=row["token"],
        processing_start=aware(row["processing_start"]),
        processing_end=aware(row["processing_end"]),
        expires_at=aware(row["expires_at"]),
        retry_after=aware(row["retry_after"]),
        dead=bool(row["dead"]),
        result=row["job_result"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        fingerprint=row["fingerprint"],
        traceback=row["logging"],
        code_version=row["code_version"],
    )


def to_job(row: Any) -> JobRecord:
    """One jobs row as a ``JobRecord``."""
    return JobRecord(
        name=row.name,
        meta_table=row.meta_table,
        source=dict(row.source or {}),
        id_start=row.id_start,
        id_end=row.id_end,
        cursor=row.cursor,
    )
