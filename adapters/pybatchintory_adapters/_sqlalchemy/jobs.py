"""Jobs in the ledger: read one or all, record a new one, compare a definition.

A job is recorded once, by the first process that names it; later processes must give the
same definition (source, window, filter) or get ``JobConflict``. How ranges are measured
(``weight``) and where rows are read from (``database``) are recorded but may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory.errors import JobConflict
from pybatchintory.models import JobSpec
from pybatchintory.protocols import JobRecord
from pybatchintory_adapters._sqlalchemy.read_statements import ReadStatements
from pybatchintory_adapters._sqlalchemy.records import to_job
from pybatchintory_adapters._sqlalchemy.statements import Statements

__all__ = ("all_jobs", "compare", "insert_job", "one_job")

# Recorded with the source, but not part of a job's identity: they change how ranges are
# measured or where rows are read from, not which ids the job covers.
_NOT_IDENTITY = ("weight", "database")


async def one_job(conn: AsyncConnection, rs: ReadStatements, name: str) -> JobRecord | None:
    """The recorded job ``name``, or ``None``."""
    row = (await conn.execute(rs.job, {"p_name": name})).first()
    return None if row is None else to_job(row)


async def all_jobs(conn: AsyncConnection, rs: ReadStatements) -> list[JobRecord]:
    """Every recorded job, by name."""
    return [to_job(row) for row in await conn.execute(rs.all_jobs)]


async def insert_job(conn: AsyncConnection, st: Statements, spec: JobSpec) -> None:
    """Record ``spec`` as a new job, its cursor just before its window."""
    await conn.execute(
        st.insert_job,
        {
            "p_name": spec.name,
            "p_meta_table": spec.meta_table,
            "p_source": dict(spec.source),
            "p_id_start": spec.id_start,
            "p_id_end": spec.id_end,
            "p_cursor": None if spec.id_start is None else spec.id_start - 1,
        },
    )


def _identity(source: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k not in _NOT_IDENTITY}


def compare(spec: JobSpec, record: JobRecord) -> None:
    """Raise ``JobConflict`` if ``spec`` defines another job than the one recorded."""
    recorded = {
        "source": _identity(record.source),
        "id_start": record.id_start,
        "id_end": record.id_end,
    }
    wanted = spec.identity()
    wanted["source"] = _identity(wanted["source"])
    differences = [
        f"{key}: recorded {recorded[key]!r}, given {wanted[key]!r}"
        for key in ("source", "id_start", "id_end")
        if recorded[key] != wanted[key]
    ]
    if differences:
        raise JobConflict(
            f"job {spec.name!r} is already recorded with another definition ("
            + "; ".join(differences)
            + "). Use a new job name, or keep the source, window and filter."
        )
