"""The async top level: ``pbi.lease``, ``await pbi.acquire``, ``pbi.leases``, ``pbi.shutdown``.

They use one default ``Inventory.from_settings()`` per event loop and the metadata table
named by ``PYBATCHINTORY_META_TABLE`` (``META_ID``, ``META_WEIGHT``, ``META_URL``) unless a
source is passed. Call ``await pbi.shutdown()`` before the loop ends to drain settles.

The seed's synchronous calls ``pbi.acquire_batch`` / ``pbi.acquire_batches`` live in
``pybatchintory.sync``; they share the argument handling here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pybatchintory._leases import LeaseContext
from pybatchintory.batch import Batch
from pybatchintory.errors import InvalidArgument
from pybatchintory.inventory import Inventory
from pybatchintory.models import Weight
from pybatchintory.protocols import MetadataSource
from pybatchintory.settings import Settings

__all__ = (
    "acquire",
    "default_inventory",
    "lease",
    "leases",
    "resolve_seed_arguments",
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
        source = settings_source(settings or Settings())
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
