"""What one database does differently, expressed as data the shared store reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError

from pybatchintory.errors import PybatchintoryError
from pybatchintory_adapters._sqlalchemy.driver_path import SessionFactory

__all__ = ("Capabilities",)


def _never(exc: BaseException) -> bool:
    return False


def _no_translation(exc: DBAPIError) -> PybatchintoryError | None:
    return None


@dataclass(frozen=True)
class Capabilities:
    """What one database does differently, as data the shared store reads.

    Attributes:
        write_options: Execution options for write transactions (SQLite turns them into
            ``BEGIN IMMEDIATE``).
        single_statement_options: Execution options under which one statement commits by
            itself, with no ``BEGIN``/``COMMIT`` round trips (settles, heartbeats); ``None``
            runs those in a transaction too (MySQL: switching autocommit costs a round trip
            each way, more than the ``COMMIT`` it saves).
        retryable: True for a driver error worth retrying the whole transaction
            (deadlock, serialisation failure, lock timeout, busy database).
        translate: Maps a driver error to a pybatchintory error, or ``None`` to keep it.
        write_in_with: ``UPDATE`` may run inside ``WITH`` of an ``INSERT`` (PostgreSQL):
            a new range's attempt and the cursor move go in one statement.
        acquire_in_one: The common acquire (one range, nothing expired, no retry due, a
            source on the inventory's database whose first page decides the cut) runs as
            one data-modifying statement, in autocommit (see ``in_one``; PostgreSQL).
        acquire_in_batch: The same common acquire runs as one multi-statement batch that
            commits itself, on connections that allow batches (see ``in_batch``; MySQL).
        driver_session: Runs acquire and settle on the pooled driver connection (see
            ``driver_path``); ``None`` runs them through SQLAlchemy.
    """

    write_options: Mapping[str, Any] = field(default_factory=dict)
    single_statement_options: Mapping[str, Any] | None = None
    retryable: Callable[[BaseException], bool] = _never
    translate: Callable[[DBAPIError], PybatchintoryError | None] = _no_translation
    write_in_with: bool = False
    acquire_in_one: bool = False
    acquire_in_batch: bool = False
    driver_session: SessionFactory | None = None
