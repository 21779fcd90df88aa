"""The async top level: ``pbi.lease``, ``await pbi.acquire``, ``pbi.leases``, ``pbi.shutdown``.

They use one default ``Inventory.from_settings()`` per event loop and the metadata table
named by ``PYBATCHINTORY_META_TABLE`` (``META_ID``, ``META_WEIGHT``, ``META_URL``) unless a
source is passed. Call ``await pbi.shutdown()`` before the loop ends to drain settles.

The seed's synchronous calls ``pbi.acquire_batch`` / ``pbi.acquire_batches`` live in
``pybatchintory.sync``; they share the argument handling here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pybatchintory._leases import LeaseContext
from pybatchintory.batch import Batch
from pybatchintory.errors import InvalidArgument
from pybatchintory.inventory import Inventory
from pybatchintory.models import Weight
from pybatchintory.protocols import MetadataSource
from pybatchintory.settings import Settings, current_settings
from pybatchintory.sources import MetaTable

__all__ = (
    "SeedCall",
    "acquire",
    "default_inventory",
    "lease",
    "leases",
    "resolve_seed_arguments",
    "seed_call",
    "settings_source",
    "shutdown",
)

_by_loop: dict[asyncio.AbstractEventLoop, Inventory] = {}


def settings_source(settings: Settings) -> str:
    """The metadata table named by ``PYBATCHINTORY_META_TABLE``.

    A name, not a ``MetaTable``: the default inventory (``Inventory.from_settings()``)
    completes it from ``META_ID``, ``META_WEIGHT``, ``META_TIMESTAMP`` and ``META_URL``, and
    binds it once, not per call.

    Raises:
        InvalidArgument: ``PYBATCHINTORY_META_TABLE`` is not set.
    """
    if not settings.meta_table:
        raise InvalidArgument(
            "no source given and PYBATCHINTORY_META_TABLE is not set: pass source=MetaTable(...) "
            "or a table name, or set PYBATCHINTORY_META_TABLE"
        )
    return settings.meta_table


async def default_inventory() -> Inventory:
    """The default ``Inventory`` of the running event loop (opened on first use)."""
    loop = asyncio.get_running_loop()
    inventory = _by_loop.get(loop)
    if inventory is None:
        inventory = Inventory.from_settings()
        _by_loop[loop] = inventory
    return await inventory.open()


async def shutdown() -> None:
    """Close the default ``Inventory`` of the running loop (drains settles in flight)."""
    inventory = _by_loop.pop(asyncio.get_running_loop(), None)
    if inventory is not None:
        await inventory.aclose()


def resolve_seed_arguments(
    source: MetadataSource | str | None,
    *,
    weight: Weight | None,
    count: int | None,
    max_weight: Weight | None,
    max_count: int | None,
    settings: Settings | None = None,
) -> tuple[MetadataSource | str, int | None, Weight | None]:
    """Map the seed's ``weight=``/``count=`` onto ``max_weight``/``max_count``.

    Raises:
        InvalidArgument: Both spellings of one cap were given.
    """
    if weight is not None and max_weight is not None:
        raise InvalidArgument("pass either weight= (the seed's spelling) or max_weight=, not both")
    if count is not None and max_count is not None:
        raise InvalidArgument("pass either count= or max_count=, not both")
    if source is None:
        source = settings_source(settings or current_settings())
    return (
        source,
        (max_count if count is None else count),
        (max_weight if weight is None else weight),
    )


async def acquire(
    job: str,
    source: MetadataSource | str | None = None,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    timeout: float | None = None,
) -> Batch | None:
    """Lease the next batch of ``job`` from the default inventory (``None``: nothing to do)."""
    inventory = await default_inventory()
    resolved, count_cap, weight_cap = resolve_seed_arguments(
        source, weight=weight, count=count, max_weight=max_weight, max_count=max_count
    )
    return await inventory.acquire(
        job,
        resolved,
        max_count=count_cap,
        max_weight=weight_cap,
        id_start=id_start,
        id_end=id_end,
        timeout=timeout,
    )


async def leases(
    job: str,
    source: MetadataSource | str | None = None,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
) -> AsyncIterator[Batch]:
    """Yield batches of ``job`` until none is left or ``iterations`` is reached."""
    inventory = await default_inventory()
    resolved, count_cap, weight_cap = resolve_seed_arguments(
        source, weight=weight, count=count, max_weight=max_weight, max_count=max_count
    )
    async for batch in inventory.leases(
        job,
        resolved,
        max_count=count_cap,
        max_weight=weight_cap,
        id_start=id_start,
        id_end=id_end,
        iterations=iterations,
        timeout=timeout,
    ):
        yield batch


def lease(
    job: str,
    source: MetadataSource | str | None = None,
    *,
    id_start: int | None = None,
    id_end: int | None = None,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    wait: bool = False,
    poll_interval: float = 1.0,
    timeout: float | None = None,
) -> _DefaultLease:
    """``async with pbi.lease(job) as batch:`` on the default inventory."""
    resolved, count_cap, weight_cap = resolve_seed_arguments(
        source, weight=weight, count=count, max_weight=max_weight, max_count=max_count
    )
    return _DefaultLease(
        job,
        resolved,
        dict(
            max_count=count_cap,
            max_weight=weight_cap,
            id_start=id_start,
            id_end=id_end,
            wait=wait,
            poll_interval=poll_interval,
            timeout=timeout,
        ),
    )


class _DefaultLease:
    def __init__(self, job: str, source: MetadataSource | str, options: dict[str, Any]) -> None:
        self._job, self._source, self._options = job, source, options
        self._context: LeaseContext | None = None

    async def __aenter__(self) -> Batch:
        inventory = await default_inventory()
        self._context = inventory.lease(self._job, self._source, **self._options)
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool:
        assert self._context is not None
        return await self._context.__aexit__(*exc_info)


_SEED_COLUMNS = frozenset({"uid", "item", "weight"})


@dataclass(frozen=True, slots=True)
class SeedCall:
    """A seed call (0.0.8 spelling or this package's), resolved.

    Attributes:
        source: The source to lease from (a ``MetaTable``, or a name for the defaults).
        max_count: The count cap.
        max_weight: The weight cap.
        id_start: The window's first id.
        id_end: The window's last id.
        item: The seed's item column: ``batch.items`` lists its values instead of rows.
    """

    source: MetadataSource | str
    max_count: int | None
    max_weight: Weight | None
    id_start: int | None
    id_end: int | None
    item: str | None = None


def _one(name: str, seed_name: str, value: Any, seed_value: Any) -> Any:
    if value is not None and seed_value is not None:
        raise InvalidArgument(f"pass either {seed_name}= (0.0.8's spelling) or {name}=, not both")
    return value if seed_value is None else seed_value


@functools.lru_cache(maxsize=64)
def _seed_table(name: str, id: str, weight: str | None, timestamp: str | None) -> MetaTable:
    """One ``MetaTable`` per seed spelling: bound once per inventory, not once per call."""
    return MetaTable(name, id=id, weight=weight, timestamp=timestamp)


def seed_call(
    source: MetadataSource | str | None,
    *,
    weight: Weight | None = None,
    count: int | None = None,
    max_weight: Weight | None = None,
    max_count: int | None = None,
    id_start: int | None = None,
    id_end: int | None = None,
    meta_table_name: str | None = None,
    meta_table_cols: Mapping[str, str] | None = None,
    batch_weight: Weight | None = None,
    batch_count: int | None = None,
    batch_id_min: int | None = None,
    batch_id_max: int | None = None,
) -> SeedCall:
    """Resolve a seed call, in 0.0.8's names or this package's.

    0.0.8's: ``meta_table_name``, ``meta_table_cols``, ``batch_weight``, ``batch_count``,
    ``batch_id_min``, ``batch_id_max``.
    ``meta_table_cols`` maps the seed's ``uid``, ``weight`` and ``item`` to column names; a
    missing ``uid`` or ``weight`` comes from ``PYBATCHINTORY_META_ID``/``META_WEIGHT``.

    Raises:
        InvalidArgument: Both spellings of one argument, an unknown ``meta_table_cols`` key,
            or no source at all (neither given nor ``PYBATCHINTORY_META_TABLE``).
    """
    source = _one("source", "meta_table_name", source, meta_table_name)
    weight = _one("weight", "batch_weight", weight, batch_weight)
    count = _one("count", "batch_count", count, batch_count)
    id_start = _one("id_start", "batch_id_min", id_start, batch_id_min)
    id_end = _one("id_end", "batch_id_max", id_end, batch_id_max)
    item: str | None = None
    if meta_table_cols is not None:
        if not isinstance(meta_table_cols, Mapping):
            raise InvalidArgument(f"meta_table_cols must be a mapping, got {meta_table_cols!r}")
        unknown = set(meta_table_cols) - _SEED_COLUMNS
        if unknown:
            raise InvalidArgument(
                f"meta_table_cols knows uid, item and weight, not {', '.join(sorted(unknown))}"
            )
        if not isinstance(source, str):
            raise InvalidArgument("meta_table_cols= needs a table name (meta_table_name=)")
        item = meta_table_cols.get("item")
        if meta_table_cols.keys() - {"item"}:
            settings = current_settings()
            source = _seed_table(
                source,
                meta_table_cols.get("uid", settings.meta_id),
                meta_table_cols.get("weight", settings.meta_weight),
                settings.meta_timestamp,
            )
    resolved, count_cap, weight_cap = resolve_seed_arguments(
        source, weight=weight, count=count, max_weight=max_weight, max_count=max_count
    )
    return SeedCall(resolved, count_cap, weight_cap, id_start, id_end, item)
