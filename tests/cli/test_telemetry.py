"""Spans, metrics and log fields of acquire, settle and heartbeat, with the OTel SDK in memory."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pybatchintory as pbi
from pybatchintory import telemetry

from tests.helpers import create_meta_table, fetch_all

pytestmark = pytest.mark.sqlite


@pytest.fixture
def exporters() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.configure(tracer_provider, meter_provider)
    try:
        yield spans, reader
    finally:
        telemetry.configure()  # back to the global providers
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


async def test_spans_metrics_and_log_fields(
    tmp_path: Any,
    exporters: tuple[InMemorySpanExporter, InMemoryMetricReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans, reader = exporters
    url = f"sqlite+aiosqlite:///{tmp_path / 'inv.db'}"
    await create_meta_table(url, rows=30)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    caplog.set_level(logging.INFO, logger="pybatchintory")
    async with pbi.Inventory(url, lease_ttl=0.3) as inv:
        async with inv.lease("daily", files, max_count=10):
            await asyncio.sleep(0.25)  # long enough for a heartbeat (every ttl/3)
        with pytest.raises(ValueError):
            async with inv.lease("daily", files, max_count=10):
                raise ValueError("boom")
        batch = await inv.acquire("daily", files, max_count=10)
        assert batch is not None
        await batch.release()

    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("pybatchintory.acquire") == 3
    assert names.count("pybatchintory.settle") == 3
    assert "pybatchintory.heartbeat" in names
    settles = [s for s in spans.get_finished_spans() if s.name == "pybatchintory.settle"]
    assert [s.attributes["pybatchintory.status"] for s in settles if s.attributes] == [
        "succeeded",
        "failed",
        "released",
    ]
    acquire = next(s for s in spans.get_finished_spans() if s.name == "pybatchintory.acquire")
    assert acquire.attributes == {
        "pybatchintory.job": "daily",
        "pybatchintory.batches": 1,
        "pybatchintory.rows": 10,
    }

    points = _points(reader)
    leases = {p.attributes["outcome"]: p.value for p in points["pybatchintory.leases"]}
    assert leases == {"succeeded": 1, "failed": 1, "released": 1}
    assert [p.value for p in points["pybatchintory.rows"]] == [30]
    assert [p.value for p in points["pybatchintory.batches"]] == [3]
    assert sum(p.count for p in points["pybatchintory.acquire.duration"]) == 3
    durations = {p.attributes["outcome"]: p for p in points["pybatchintory.lease.duration"]}
    assert durations["succeeded"].sum >= 0.25 and durations["failed"].count == 1

    records = [r for r in caplog.records if r.name == "pybatchintory"]
    assert records
    for record in records:
        assert record.__dict__["job"] == "daily"
        assert isinstance(record.__dict__["attempt"], int)
        assert record.__dict__["meta_id_start"] <= record.__dict__["meta_id_end"]
    assert any("failed daily attempt 1 [11, 20]" in r.getMessage() for r in records)


async def test_settle_many_and_a_lost_lease(
    tmp_path: Any, exporters: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    """``settle_many`` reports one span and an outcome per batch; a fenced-out settle, lost."""
    spans, reader = exporters
    url = f"sqlite+aiosqlite:///{tmp_path / 'inv.db'}"
    await create_meta_table(url, rows=40)
    files = pbi.MetaTable("files", weight="size_in_bytes")
    async with pbi.Inventory(url) as inv:
        batches = await inv.acquire_many("daily", files, 2, max_count=10)
        assert len(batches) == 2
        assert await inv.settle_many(batches) == []
        taken = await inv.acquire("daily", files, max_count=10)
        assert taken is not None
        # Somebody else's lease now (as after a takeover): the fenced settle misses.
        await fetch_all(url, "UPDATE inventory SET token = 'other' WHERE id = :id", id=taken.id)
        with pytest.raises(pbi.LeaseLost):
            await taken.success()

    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("pybatchintory.settle_many") == 1
    assert names.count("pybatchintory.acquire") == 2
    points = _points(reader)
    leases = {p.attributes["outcome"]: p.value for p in points["pybatchintory.leases"]}
    assert leases == {"succeeded": 2, "lost": 1}
    assert sum(p.count for p in points["pybatchintory.lease.duration"]) == 3


def test_without_opentelemetry_leasing_works_and_reports_nothing(tmp_path: Any) -> None:
    script = f"""
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
import pybatchintory as pbi
from pybatchintory import telemetry
from tests.helpers import create_meta_table

async def main():
    url = "sqlite+aiosqlite:///{tmp_path / "inv.db"}"
    await create_meta_table(url, rows=10)
    async with pbi.Inventory(url) as inv:
        async with inv.lease("daily", "files", max_count=5) as batch:
            pass
    print(telemetry.AVAILABLE, batch.meta_id_end)
    try:
        telemetry.configure()
    except ImportError as exc:
        print("pybatchintory[otel]" in str(exc))

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "5", "True"]
