"""``pybatchintory.integrations.fastapi`` in a real uvicorn, with real signals.

Each test starts ``uvicorn examples.fastapi_app:app`` in a subprocess on a free loopback
port, drives it with httpx, interrupts it (SIGTERM, SIGINT, a double SIGINT, SIGKILL, a
client gone mid-stream) and reads the ledger with plain SQL afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import DatabaseFactory
from tests.helpers import create_meta_table, fetch_all
from tests.integration._uvicorn import TcpProxy, UvicornApp, ledger_counts

pytestmark = [pytest.mark.slow, pytest.mark.sqlite]

ROWS = 600
FAST = {"PBI_EXAMPLE_WORK_SECONDS": "0.3", "PBI_EXAMPLE_LEASE_TTL": "30"}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[UvicornApp]]:
    started: list[UvicornApp] = []
    yield started
    for server in started:
        server.kill()


def _start(
    apps: list[UvicornApp],
    url: str,
    tmp_path: Path,
    *,
    graceful: int | None = None,
    env: dict[str, str] | None = None,
) -> UvicornApp:
    server = UvicornApp(
        url,
        tmp_path / f"uvicorn-{len(apps)}.log",
        graceful=graceful,
        env={**FAST, **(env or {})},
    )
    apps.append(server)
    return server


async def _running(url: str, job: str, timeout: float = 10.0) -> None:
    """Wait until ``job`` holds a lease (plain SQL)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        rows = await fetch_all(
            url,
            "SELECT COUNT(*) AS n FROM inventory WHERE job = :job AND status = 'running'",
            job=job,
        )
        if rows[0]["n"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job!r} never held a lease")


async def _covered_once(url: str, job: str, first: int, last: int) -> None:
    rows = await fetch_all(
        url,
        "SELECT meta_id_start, meta_id_end FROM inventory "
        "WHERE job = :job AND status = 'succeeded' ORDER BY meta_id_start",
        job=job,
    )
    ranges = [(int(r["meta_id_start"]), int(r["meta_id_end"])) for r in rows]
    assert ranges[0][0] == first
    assert ranges[-1][1] == last
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1, f"{job}: ranges overlap or leave a gap: {ranges}"


@contextlib.asynccontextmanager
async def _slow_request(server: UvicornApp) -> AsyncIterator[asyncio.Task[httpx.Response]]:
    async with server.client() as client:
        task = asyncio.ensure_future(client.post("/work", params={"seconds": 4}))
        try:
            yield task
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await task


@pytest.mark.parametrize(
    ("sig", "graceful"),
    [(signal.SIGTERM, 1), (signal.SIGTERM, None), (signal.SIGINT, 1)],
    ids=["sigterm-grace-1", "sigterm", "sigint-grace-1"],
)
async def test_signal_mid_lease_leaves_nothing_running(
    sqlite_url: str,
    tmp_path: Path,
    apps: list[UvicornApp],
    sig: signal.Signals,
    graceful: int | None,
) -> None:
    await create_meta_table(sqlite_url, rows=ROWS)
    server = _start(apps, sqlite_url, tmp_path, graceful=graceful)
    await server.ready()
    async with _slow_request(server) as request:
        await _running(sqlite_url, "requests")
        await _running(sqlite_url, "thumbnails")
        server.signal(sig)
        await server.exited()
    ledger = await ledger_counts(sqlite_url)
    assert "running" not in ledger["thumbnails"], server.output()
    assert ledger["thumbnails"]["succeeded"] >= 1
    if graceful is None:
        # uvicorn waits for the request: it finishes, and its 200 means recorded.
        assert request.result().status_code == 200
        assert ledger["requests"] == {"succeeded": 1}
    else:
        # The request outlived the graceful timeout: cancelled, its batch given back.
        assert ledger["requests"] == {"released": 1}, server.output()


async def test_double_sigint_releases_what_is_held(
    sqlite_url: str, tmp_path: Path, apps: list[UvicornApp]
) -> None:
    await create_meta_table(sqlite_url, rows=ROWS)
    server = _start(apps, sqlite_url, tmp_path)
    await server.ready()
    async with _slow_request(server):
        await _running(sqlite_url, "requests")
        await _running(sqlite_url, "thumbnails")
        server.signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        server.signal(signal.SIGINT)  # force exit: uvicorn skips the lifespan shutdown
        await server.exited()
    ledger = await ledger_counts(sqlite_url)
    for job in ("requests", "thumbnails"):
        assert "running" not in ledger[job], (job, ledger, server.output())
    assert ledger["requests"] == {"released": 1}


async def test_sigkill_lease_expires_and_restart_finishes(
    sqlite_url: str, tmp_path: Path, apps: list[UvicornApp]
) -> None:
    await create_meta_table(sqlite_url, rows=300)
    env = {"PBI_EXAMPLE_LEASE_TTL": "1", "PBI_EXAMPLE_WORK_SECONDS": "0.1"}
    server = _start(apps, sqlite_url, tmp_path, env=env)
    await server.ready()
    await _running(sqlite_url, "thumbnails")
    server.signal(signal.SIGKILL)
    assert await server.exited() == -signal.SIGKILL
    assert (await ledger_counts(sqlite_url))["thumbnails"]["running"] == 1

    await asyncio.sleep(1.2)  # the dead server's lease runs out
    restarted = _start(apps, sqlite_url, tmp_path, env=env)
    await restarted.ready()
    async with restarted.client() as client:
        for _ in range(100):
            left = (await client.get("/inventory/jobs/thumbnails/backlog")).json()
            if left["count"] == 0 and left["running"] == 0 and left["retry_due"] == 0:
                break
            await asyncio.sleep(0.1)
        assert left["count"] == 0, left
    restarted.signal(signal.SIGTERM)
    await restarted.exited()
    ledger = await ledger_counts(sqlite_url)
    assert "running" not in ledger["thumbnails"]
    assert ledger["thumbnails"]["expired"] == 1
    await _covered_once(sqlite_url, "thumbnails", 1, 300)


async def test_client_gone_mid_stream_releases_the_batch(
    sqlite_url: str, tmp_path: Path, apps: list[UvicornApp]
) -> None:
    await create_meta_table(sqlite_url, rows=ROWS)
    server = _start(apps, sqlite_url, tmp_path)
    await server.ready()
    async with server.client() as client, client.stream("GET", "/stream") as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break  # one chunk, then hang up
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        if (await ledger_counts(sqlite_url)).get("exports") == {"released": 1}:
            break
        await asyncio.sleep(0.05)
    async with server.client() as client:
        whole = await client.get("/stream")
    assert whole.status_code == 200
    assert len(whole.text.splitlines()) == 20
    server.signal(signal.SIGTERM)
    await server.exited()
    ledger = await ledger_counts(sqlite_url)
    assert ledger["exports"] == {"released": 1, "succeeded": 1}, server.output()


async def test_http_semantics(sqlite_url: str, tmp_path: Path, apps: list[UvicornApp]) -> None:
    await create_meta_table(sqlite_url, rows=ROWS)
    server = _start(apps, sqlite_url, tmp_path, env={"PBI_EXAMPLE_WORK_SECONDS": "0.01"})
    await server.ready()
    async with server.client() as client:
        done = await client.post("/work")
        assert done.status_code == 200
        # scope="function": the settle is written before the response is sent.
        rows = await fetch_all(
            sqlite_url, "SELECT status FROM inventory WHERE id = :id", id=done.json()["batch"]
        )
        assert rows == [{"status": "succeeded"}]

        rejected = await client.post("/work", params={"reject": True})
        assert rejected.status_code == 400
        assert (await ledger_counts(sqlite_url))["requests"]["released"] == 1

        started = await client.post("/backfills/a", params={"id_start": 1, "id_end": 300})
        assert started.status_code == 202
        assert started.json()["first_batch"] is not None
        conflict = await client.post("/backfills/a", params={"id_start": 1, "id_end": 400})
        assert conflict.status_code == 409
        assert conflict.json()["error"] == "JobConflict"
        invalid = await client.post("/backfills/b", params={"id_start": 9, "id_end": 3})
        assert invalid.status_code == 422
        assert invalid.json()["error"] == "InvalidArgument"

        unknown = await client.get("/inventory/jobs/nope/backlog")
        assert unknown.status_code == 404
        for _ in range(100):
            backlog = (await client.get("/inventory/jobs/reindex-a/backlog")).json()
            if backlog["count"] == 0 and backlog["running"] == 0:
                break
            await asyncio.sleep(0.05)
        assert backlog["count"] == 0, backlog
        assert "eta_seconds" in backlog
        jobs = {line["job"] for line in (await client.get("/inventory/jobs")).json()}
        assert {"requests", "thumbnails", "reindex-a"} <= jobs
        assert (await client.get("/inventory/jobs/thumbnails/errors")).json() == []
        assert (await client.post("/inventory/jobs/thumbnails/retry")).json() == {"revived": 0}
    server.signal(signal.SIGTERM)
    await server.exited()
    await _covered_once(sqlite_url, "reindex-a", 1, 300)


async def test_backfill_resumes_after_restart(
    sqlite_url: str, tmp_path: Path, apps: list[UvicornApp]
) -> None:
    await create_meta_table(sqlite_url, rows=ROWS)
    server = _start(apps, sqlite_url, tmp_path)
    await server.ready()
    async with server.client() as client:
        started = await client.post("/backfills/r", params={"id_start": 1, "id_end": ROWS})
        assert started.status_code == 202
    await _running(sqlite_url, "reindex-r")
    server.signal(signal.SIGTERM)  # the backfill stops between batches
    await server.exited()
    ledger = await ledger_counts(sqlite_url)
    assert "running" not in ledger["reindex-r"]
    assert ledger["reindex-r"]["succeeded"] < ROWS // 100

    restarted = _start(apps, sqlite_url, tmp_path, env={"PBI_EXAMPLE_WORK_SECONDS": "0.01"})
    await restarted.ready()
    async with restarted.client() as client:
        for _ in range(200):
            left = (await client.get("/inventory/jobs/reindex-r/backlog")).json()
            if left["count"] == 0 and left["running"] == 0:
                break
            await asyncio.sleep(0.05)
    restarted.signal(signal.SIGTERM)
    await restarted.exited()
    await _covered_once(sqlite_url, "reindex-r", 1, ROWS)


@pytest.fixture
def postgres_url(any_db_url_factory: DatabaseFactory) -> str:
    return any_db_url_factory("postgres")


@pytest.mark.postgres
async def test_store_unavailable_answers_503(
    postgres_url: str, tmp_path: Path, apps: list[UvicornApp]
) -> None:
    url = make_url(postgres_url)
    await create_meta_table(url.render_as_string(hide_password=False), rows=100)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    server = _start(apps, via_proxy, tmp_path, env={"PBI_EXAMPLE_WORK_SECONDS": "0.01"})
    try:
        await server.ready()
        async with server.client() as client:
            assert (await client.get("/inventory/jobs")).status_code == 200
            await proxy.cut()  # the database goes away under the running app
            down = await client.get("/inventory/jobs")
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "StoreUnavailable"
            assert down.headers["retry-after"] == "5"
            await proxy.start()  # and comes back: the app answers again
            for _ in range(50):
                back = await client.get("/inventory/jobs")
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert back.status_code == 200, back.text
        server.signal(signal.SIGTERM)
        await server.exited()
    finally:
        await proxy.cut()
