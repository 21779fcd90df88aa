"""pybatchintory: contiguous id ranges of a metadata table for batch jobs, with a ledger.

Quick start::

    import pybatchintory as pbi

    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory("sqlite+aiosqlite:///inventory.db") as inv:
        async with inv.lease("daily", files, max_count=1000) as batch:
            rows = await batch.items()

The seed's synchronous calls are the top-level ``acquire_batch`` / ``acquire_batches`` (the
same objects as ``pybatchintory.sync``'s); the async top level is ``pbi.lease``,
``await pbi.acquire`` and ``pbi.leases`` on a default ``Inventory.from_settings()``.
"""

from pybatchintory._consumer import ConsumeReport
from pybatchintory._default_inventory import acquire, lease, leases, shutdown
from pybatchintory._group import BatchGroup
from pybatchintory._service import run_service
from pybatchintory.batch import Batch
from pybatchintory.errors import (
    AlreadySettled,
    ConfigurationError,
    EventLoopRunning,
    InvalidArgument,
    InvalidColumn,
    JobConflict,
    LeaseLost,
    MissingDriver,
    NoBatchAvailable,
    PybatchintoryError,
    SchemaMismatch,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnknownColumn,
    UnknownJob,
    UnknownTable,
    UnsupportedURL,
)
from pybatchintory.inventory import Inventory, LeaseContext
from pybatchintory.models import (
    Attempt,
    Backlog,
    ErrorGroup,
    JobStatus,
    Limits,
    PlannedRange,
    Status,
)
from pybatchintory.protocols import InventoryStore, MetadataSource
from pybatchintory.recursion import InventorySource
from pybatchintory.settings import Settings
from pybatchintory.sources import MetaTable, SourceDefaults
from pybatchintory.sync import acquire_batch, acquire_batches, configure

__version__ = "0.1.0.dev0"

__all__ = (
    "AlreadySettled",
    "Attempt",
    "Backlog",
    "Batch",
    "BatchGroup",
    "ConfigurationError",
    "ConsumeReport",
    "ErrorGroup",
    "EventLoopRunning",
    "InvalidArgument",
    "InvalidColumn",
    "Inventory",
    "InventorySource",
    "InventoryStore",
    "JobConflict",
    "JobStatus",
    "LeaseContext",
    "LeaseLost",
    "Limits",
    "MetaTable",
    "MetadataSource",
    "MissingDriver",
    "NoBatchAvailable",
    "PlannedRange",
    "PybatchintoryError",
    "SchemaMismatch",
    "Settings",
    "SourceDefaults",
    "Status",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "UnknownColumn",
    "UnknownJob",
    "UnknownTable",
    "UnsupportedURL",
    "acquire",
    "acquire_batch",
    "acquire_batches",
    "configure",
    "lease",
    "leases",
    "run_service",
    "shutdown",
)
