"""Argument checks of the host integrations, before any host or database is involved."""

from __future__ import annotations

import pytest

import pybatchintory as pbi
from pybatchintory.integrations import fastapi as pbi_fastapi
from pybatchintory.integrations.bergtalzug import BatchFeeder
from pybatchintory.integrations.etl_lib import LeaseBatchSource


async def _handler(batch: pbi.Batch) -> None:
    return None


@pytest.mark.parametrize(
    "options",
    [
        {"grace": 0},
        {"grace": True},
        {"consumers": [object()]},
        {"consumers": [pbi_fastapi.Consumer("j", "files", _handler, concurrency=0)]},
        {"consumers": [pbi_fastapi.Consumer("j", "files", _handler, concurrency=1.5)]},  # type: ignore[arg-type]
        {"consumers": [pbi_fastapi.Consumer("j", "files", _handler, poll_interval=0)]},
        {"backfills": {"x-": object()}},
        {"inventory": pbi.Inventory("sqlite+aiosqlite://"), "lease_ttl": 5},
    ],
)
def test_inventory_lifespan_refuses_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(pbi.InvalidArgument):
        pbi_fastapi.inventory_lifespan(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"max_outstanding": 0},
        {"max_outstanding": 2.0},
        {"poll_interval": 0},
        {"poll_interval": "1"},
    ],
)
def test_batch_feeder_refuses_bad_options(options: dict[str, object]) -> None:
    inv = pbi.Inventory("sqlite+aiosqlite://")
    with pytest.raises(pbi.InvalidArgument):
        BatchFeeder(inv, "job", "files", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_batches", [0, -1, True, 1.5])
def test_lease_batch_source_refuses_bad_max_batches(max_batches: object) -> None:
    with pytest.raises(pbi.InvalidArgument):
        LeaseBatchSource(None, None, None, "job", "files", max_batches=max_batches)  # type: ignore[arg-type]


def test_status_router_offers_retry_only_when_enabled() -> None:
    def routes(enable_retry: bool) -> set[tuple[str, str]]:
        router = pbi_fastapi.status_router(enable_retry=enable_retry)
        return {
            (method, route.path)  # type: ignore[attr-defined]
            for route in router.routes
            for method in route.methods  # type: ignore[attr-defined]
        }

    reads = {
        ("GET", "/jobs"),
        ("GET", "/jobs/{job}/backlog"),
        ("GET", "/jobs/{job}/errors"),
    }
    assert routes(False) == reads
    assert routes(True) == reads | {("POST", "/jobs/{job}/retry")}
