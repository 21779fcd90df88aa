"""Run a job on a Dask cluster: each worker leases, processes and settles its own batches.

``run_on_dask`` submits ``tasks`` long-running loops to a ``distributed.Client``. Each loop
opens its own ``SyncInventory`` on the worker, leases the next range, runs ``func(batch)``
there, settles the attempt there, and goes on until the job is drained. The driver ships
only the job's description; rows never travel through it, and nothing but the ledger is
shared between workers::

    from distributed import Client
    import pybatchintory as pbi
    from pybatchintory.integrations.dask import run_on_dask

    def convert(batch):            # runs on a worker
        for row in batch.items:
            ...
        return {"converted": batch.count}

    with Client("tcp://scheduler:8786") as client:
        run = run_on_dask(client, "convert", pbi.MetaTable("files"), convert,
                          url="postgresql+asyncpg://...", max_count=1000, lease_ttl=60)

A worker that dies mid-batch (OOM kill, lost node) stops heartbeating; its lease expires
after ``lease_ttl`` and the range is handed out again, to any loop, as a new attempt. Loops
keep polling while another worker holds a lease, so the job ends only when every range is
settled. Dask reschedules the dead worker's loop task by itself.

Needs ``pip install pybatchintory[dask]``. SQLite works only while every worker runs on the
machine that holds the file (a ``LocalCluster``); a cluster of hosts needs PostgreSQL or
MySQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybatchintory.errors import InvalidArgument, MissingDriver
from pybatchintory.integrations._loop import BatchFunc, LoopReport, LoopSpec, lease_loop
from pybatchintory.protocols import MetadataSource

if TYPE_CHECKING:
    from distributed import Client

__all__ = ("DaskRun", "LoopReport", "run_on_dask")


@dataclass(frozen=True)
class DaskRun:
    """The reports of every loop that finished.

    A loop whose worker died is run again by Dask; only the run that finished reports, so
    the totals cover the batches settled by finished loops. The ledger has every attempt.
    """

    loops: Sequence[LoopReport]

    @property
    def succeeded(self) -> int:
        """Batches settled as succeeded."""
        return sum(loop.succeeded for loop in self.loops)

    @property
    def failed(self) -> int:
        """Batches recorded as failed."""
        return sum(loop.failed for loop in self.loops)

    @property
    def rows(self) -> int:
        """Rows of the succeeded batches."""
        return sum(loop.rows for loop in self.loops)


def _require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise MissingDriver(
            "the Dask integration needs dask.distributed. Install it with: "
            "pip install 'pybatchintory[dask]'"
        ) from exc


def run_on_dask(
    client: Client,
    job: str,
    source: MetadataSource,
    func: BatchFunc,
    *,
    url: str | None = None,
    tasks: int | None = None,
    max_count: int | None = None,
    max_weight: float | None = None,
    id_start: int | None = None,
    id_end: int | None = None,
    poll_interval: float = 0.5,
    drain: bool = True,
    **inventory_options: Any,
) -> DaskRun:
    """Run ``job`` to the end on the cluster of ``client``, leasing on the workers.

    Args:
        client: A connected ``distributed.Client``.
        job: The job name.
        source: The metadata source; pickled to the workers.
        func: ``func(batch) -> result``, run on a worker for every leased batch
            (``batch`` is a ``pybatchintory.sync.SyncBatch``). Its return value, if
            JSON-serialisable, is stored as the attempt's ``job_result``; an exception is
            recorded as ``failed`` and the range retried under ``max_attempts``.
        url: The inventory database. ``None``: each worker reads its
            ``PYBATCHINTORY_*`` settings.
        tasks: Worker loops to run; default one per worker thread of the cluster.
        max_count: Row cap per batch.
        max_weight: Weight cap per batch.
        id_start: First id of a bounded window (backfill).
        id_end: Last id of a bounded window.
        poll_interval: Seconds between looks at the ledger while other loops hold leases.
        drain: Wait for every running lease (a dead worker's expires after ``lease_ttl``)
            before a loop ends; ``False`` ends a loop as soon as nothing can be leased.
        **inventory_options: For each worker's ``SyncInventory``: ``lease_ttl``,
            ``max_attempts``, ``retry_delay``, ``table_prefix``, ``code_version``, ...

    Returns:
        The reports of the loops.

    Raises:
        InvalidArgument: Bad arguments, before anything is submitted.
        MissingDriver: dask.distributed is not installed.
    """
    _require_distributed()
    if "owner" in inventory_options:
        raise InvalidArgument("owner must be unique per worker: leave it to the default")
    spec = LoopSpec(
        job=job,
        source=source,
        func=func,
        url=url,
        limits={
            "max_count": max_count,
            "max_weight": max_weight,
            "id_start": id_start,
            "id_end": id_end,
        },
        inventory_options=inventory_options,
        poll_interval=poll_interval,
        drain=drain,
    )
    if tasks is None:
        tasks = sum(client.nthreads().values())  # type: ignore[no-untyped-call]
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise InvalidArgument(f"tasks must be an integer >= 1 (a cluster with workers): {tasks!r}")
    run_id = uuid.uuid4().hex[:8]
    futures = [
        client.submit(lease_loop, spec, key=f"pybatchintory-{job}-{run_id}-{i}", pure=False)
        for i in range(tasks)
    ]
    reports: list[LoopReport] = client.gather(futures)  # type: ignore[no-untyped-call]
    return DaskRun(tuple(reports))
