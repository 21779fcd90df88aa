"""Spark: lease on the driver one batch at a time, or lease inside executor tasks.

Two patterns, both on the synchronous facade (``pybatchintory.sync``):

**Driver-side leasing** (``run_on_driver``): the driver leases a range, turns exactly that
range into a DataFrame, hands it to ``write(frame, batch)`` (which runs a Spark action,
e.g. ``frame.write.parquet(...)``) and settles the attempt only after the action returned,
that is after Spark committed the output. Spark's own task retries
(``spark.task.maxFailures``) happen inside the action; if the action still fails, the
attempt is recorded ``failed`` with Spark's exception and the run stops: the next run
retries that range first. One lease at a time, so the ledger costs nothing next to a
Spark job; the driver's heartbeat keeps the lease while the action runs.

What is read: by default (``read=None``) the range's **metadata rows**, fetched by
pybatchintory on the driver (``batch.items``, through SQLAlchemy) and shipped to Spark with
``spark.createDataFrame``; fine for metadata (file names, sizes), not for bulk data. For
bulk reads pass ``read=lambda spark, batch: ...`` that reads the range itself, e.g.
``spark.read.jdbc(...)`` or ``spark.read.parquet(path).where(col("id").between(batch.meta_id_start,
batch.meta_id_end))``. Write to a path keyed on the range (``range_path``) with
``mode("overwrite")``: a retried range then replaces its partial output, never adds to it.

**Executor-side leasing** (``run_on_executors``): ``partitions`` Spark tasks each run a lease
loop inside ``mapPartitions``: lease, ``func(batch)``, settle, until the job is drained. A
failure of ``func`` is recorded ``failed`` (with the exception the task raised) and then
re-raised, so Spark retries the task (``spark.task.maxFailures``; locally a ``local[N,F]``
master) and the retried task, or another task, leases the range again as the next attempt.
Each executor's Python worker opens its own ``SyncInventory``: the inventory must be a
server database that every executor reaches (PostgreSQL, MySQL); an SQLite URL is refused.

Needs ``pip install pybatchintory[spark]`` and a Java runtime for Spark.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybatchintory.errors import InvalidArgument, MissingDriver
from pybatchintory.integrations._loop import BatchFunc, LoopReport, LoopSpec, lease_loop
from pybatchintory.protocols import MetadataSource
from pybatchintory.settings import Settings
from pybatchintory.sync import SyncBatch, SyncInventory

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = (
    "DriverBatch",
    "LoopReport",
    "batch_frame",
    "range_path",
    "run_on_driver",
    "run_on_executors",
)

ReadFunc = Callable[["SparkSession", SyncBatch], "DataFrame"]
WriteFunc = Callable[["DataFrame", SyncBatch], Any]


@dataclass(frozen=True)
class DriverBatch:
    """One batch written by ``run_on_driver``.

    Attributes:
        id: The attempt's inventory row.
        meta_id_start: First id of the range.
        meta_id_end: Last id of the range.
        attempt: Which attempt of the range this was.
        rows: Rows of the range (``batch.count``).
        result: What ``write`` returned (stored as ``job_result``).
    """

    id: int
    meta_id_start: int
    meta_id_end: int
    attempt: int
    rows: int
    result: Any


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise MissingDriver(
            "the Spark integration needs pyspark. Install it with: "
            "pip install 'pybatchintory[spark]'"
        ) from exc


def _limits(**limits: Any) -> dict[str, Any]:
    return {name: value for name, value in limits.items() if value is not None}


def range_path(base: str, batch: SyncBatch) -> str:
    """A per-range output path, ``<base>/range=<start>-<end>``.

    Written with ``mode("overwrite")``, a retried range replaces its earlier partial output.
    """
    return f"{base.rstrip('/')}/range={int(batch.meta_id_start)}-{int(batch.meta_id_end)}"


def batch_frame(spark: SparkSession, batch: SyncBatch, schema: Any = None) -> DataFrame:
    """The metadata rows of exactly ``batch``'s range as a DataFrame.

    The rows are read by pybatchintory on the driver (``batch.items``) and shipped to Spark
    with ``spark.createDataFrame``; Spark does not read the database itself.

    Args:
        spark: The session.
        batch: A leased batch.
        schema: A Spark schema (``StructType`` or DDL string); ``None`` lets Spark infer it
            from the rows, which needs at least one row.

    Raises:
        InvalidArgument: The range has no rows and no schema was given.
    """
    rows = [dict(row) for row in batch.items]
    if not rows and schema is None:
        raise InvalidArgument(
            f"the range {batch.meta_id_start}..{batch.meta_id_end} has no rows: "
            "pass schema= so that an empty DataFrame can be built"
        )
    return spark.createDataFrame(rows, schema)


def run_on_driver(
    spark: SparkSession,
    job: str,
    source: MetadataSource,
    write: WriteFunc,
    *,
    url: str | None = None,
    read: ReadFunc | None = None,
    schema: Any = None,
    iterations: int | None = None,
    max_count: int | None = None,
    max_weight: float | None = None,
    id_start: int | None = None,
    id_end: int | None = None,
    **inventory_options: Any,
) -> list[DriverBatch]:
    """Lease batches on the driver, one at a time; read, write, then settle each.

    Args:
        spark: The session the actions run on.
        job: The job name.
        source: The metadata source.
        write: ``write(frame, batch) -> result``: runs the Spark action that writes the
            batch out (``frame.write.mode("overwrite").parquet(range_path(base, batch))``).
            Its JSON-serialisable return value is stored as ``job_result``.
        url: The inventory database; ``None`` reads ``PYBATCHINTORY_*`` settings.
        read: ``read(spark, batch) -> DataFrame`` of the range; default ``batch_frame``
            (the metadata rows, read on the driver).
        schema: Schema for the default reader.
        iterations: Stop after this many batches (``None``: until nothing is left).
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
        id_start: First id of a bounded window (backfill).
        id_end: Last id of a bounded window.
        **inventory_options: For the driver's ``SyncInventory`` (``lease_ttl``,
            ``max_attempts``, ``retry_delay``, ...).

    Returns:
        One ``DriverBatch`` per succeeded batch, in order.

    Raises:
        Exception: Whatever ``read`` or ``write`` raised (a failed Spark action raises
            Spark's exception), after recording the attempt as ``failed``.
    """
    _require_pyspark()
    if not callable(write):
        raise InvalidArgument(f"write must be callable, got {write!r}")
    reader: ReadFunc = read or functools.partial(_default_read, schema=schema)
    limits = _limits(max_count=max_count, max_weight=max_weight, id_start=id_start, id_end=id_end)
    done: list[DriverBatch] = []
    inventory = (
        SyncInventory.from_settings(**inventory_options)
        if url is None
        else SyncInventory(url, **inventory_options)
    )
    with inventory as inv:
        for batch in inv.leases(job, source, iterations=iterations, **limits):
            result = _write_one(spark, batch, reader, write)
            done.append(
                DriverBatch(
                    id=int(batch.id),
                    meta_id_start=int(batch.meta_id_start),
                    meta_id_end=int(batch.meta_id_end),
                    attempt=int(batch.attempt),
                    rows=int(batch.count),
                    result=result,
                )
            )
    return done


def _default_read(spark: SparkSession, batch: SyncBatch, schema: Any) -> DataFrame:
    return batch_frame(spark, batch, schema)


def _write_one(spark: SparkSession, batch: SyncBatch, read: ReadFunc, write: WriteFunc) -> Any:
    try:
        result = write(read(spark, batch), batch)
    except (KeyboardInterrupt, SystemExit):
        batch.release()
        raise
    except Exception as exc:
        batch.error(exc)
        raise
    try:
        batch.success(result)
    except InvalidArgument as exc:  # a result that is not JSON: nothing was written
        batch.error(exc)
        raise
    return result


def _is_sqlite(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "sqlite"


def _partition_loop(spec: LoopSpec, _indices: Iterable[int]) -> Iterator[LoopReport]:
    yield lease_loop(spec)


def run_on_executors(
    spark: SparkSession,
    job: str,
    source: MetadataSource,
    func: BatchFunc,
    *,
    url: str | None = None,
    partitions: int | None = None,
    max_count: int | None = None,
    max_weight: float | None = None,
    id_start: int | None = None,
    id_end: int | None = None,
    poll_interval: float = 0.5,
    drain: bool = True,
    **inventory_options: Any,
) -> list[LoopReport]:
    """Run ``job`` inside ``partitions`` Spark tasks, each leasing and settling on its own.

    Args:
        spark: The session.
        job: The job name.
        source: The metadata source; pickled to the executors.
        func: ``func(batch) -> result``, run in an executor for every leased batch. An
            exception is recorded as ``failed`` and re-raised, failing the task so that
            Spark retries it; the range is leased again as the next attempt.
        url: The inventory database, a server every executor reaches. ``None``: each
            executor reads its ``PYBATCHINTORY_*`` settings (checked on the driver too).
        partitions: Tasks to run; default ``spark.sparkContext.defaultParallelism``.
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
        id_start: First id of a bounded window (backfill).
        id_end: Last id of a bounded window.
        poll_interval: Seconds between looks at the ledger while other tasks hold leases.
        drain: Wait for every running lease before a task ends (a lost executor's lease
            expires after ``lease_ttl`` and is retried); ``False``: end when nothing can be
            leased.
        **inventory_options: For each task's ``SyncInventory`` (``lease_ttl``,
            ``max_attempts``, ``retry_delay``, ...).

    Returns:
        One ``LoopReport`` per task (of the task attempt that finished).

    Raises:
        InvalidArgument: An SQLite inventory, or bad arguments; nothing is submitted.
        Exception: Spark's exception when a task failed ``spark.task.maxFailures`` times;
            the failed attempts are in the ledger and the next run retries their ranges.
    """
    _require_pyspark()
    checked = url if url is not None else Settings().inventory_url.get_secret_value()
    if _is_sqlite(checked):
        raise InvalidArgument(
            "executor-side leasing needs an inventory every executor can reach: Spark runs "
            "tasks in other processes, usually on other hosts, and they cannot share an "
            f"embedded SQLite file ({checked!r}). Use a PostgreSQL or MySQL inventory, or "
            "lease on the driver with run_on_driver()"
        )
    if "owner" in inventory_options:
        raise InvalidArgument("owner must be unique per task: leave it to the default")
    spec = LoopSpec(
        job=job,
        source=source,
        func=func,
        url=url,
        limits=_limits(
            max_count=max_count, max_weight=max_weight, id_start=id_start, id_end=id_end
        ),
        inventory_options=inventory_options,
        poll_interval=poll_interval,
        drain=drain,
        raise_failures=True,
    )
    context = spark.sparkContext
    n = context.defaultParallelism if partitions is None else partitions
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgument(f"partitions must be an integer >= 1: {n!r}")
    tasks = context.parallelize(range(n), n)
    reports: list[LoopReport] = tasks.mapPartitions(
        functools.partial(_partition_loop, spec)
    ).collect()
    return reports
