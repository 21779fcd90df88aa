"""``pybatchintory.integrations.fastapi`` in a real uvicorn, with real signals.

Each test starts ``uvicorn examples.fastapi_app:app`` in a subprocess on a free loopback
port, drives it with httpx, interrupts it (SIGTERM, SIGINT, a double SIGINT, SIGKILL, a
client gone mid-stream) and reads the ledger with plain SQL afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class _Interruption:
    """One uvicorn interrupted mid-lease, and what the ledger held afterwards."""

    name: str
    signals: tuple[signal.Signals, ...]
    graceful: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    server: UvicornApp | None = None
    response: int | str | None = None
    ledger: dict[str, Counter[str]] = field(default_factory=dict)

    def row(self) -> str:
        cells = [
            ", ".join(f"{status} {n}" for status, n in sorted(self.ledger.get(job, {}).items()))
            for job in ("requests", "thumbnails")
        ]
        return f"| {self.name} | {cells[0]} | {cells[1]} | {self.response} |"


async def _interrupt(case: _Interruption, apps: list[UvicornApp], tmp_path: Path) -> None:
    """Start a server on its own database, lease in a request, send the signals."""
    path = tmp_path / case.name
    path.mkdir()
    case.url = f"sqlite+aiosqlite:///{path / 'inventory.db'}"
    await create_meta_table(case.url, rows=ROWS)
    server = case.server = _start(apps, case.url, path, graceful=case.graceful, env=case.env)
    await server.ready()
    async with server.client() as client:
        request = asyncio.ensure_future(client.post("/work", params={"seconds": 2.5}))
        await _running(case.url, "requests")
        await _running(case.url, "thumbnails")
        for sig in case.signals:
            server.signal(sig)
            await asyncio.sleep(0.3)
        await server.exited()
        try:
            case.response = (await request).status_code
        except httpx.HTTPError as exc:
            case.response = type(exc).__name__
    case.ledger = await ledger_counts(case.url)


async def test_interruptions_mid_lease(
    tmp_path: Path, apps: list[UvicornApp], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM/SIGINT with and without a graceful timeout, a double SIGINT, SIGKILL.

    The five servers run at once (each on its own database) to keep the wall time small.
    """
    cases = {
        case.name: case
        for case in (
            _Interruption("SIGTERM, graceful 1 s", (signal.SIGTERM,), graceful=1),
            _Interruption("SIGTERM", (signal.SIGTERM,)),
            _Interruption("SIGINT, graceful 1 s", (signal.SIGINT,), graceful=1),
            _Interruption("double SIGINT", (signal.SIGINT, signal.SIGINT)),
            _Interruption("SIGKILL", (signal.SIGKILL,), env={"PBI_EXAMPLE_LEASE_TTL": "1"}),
            # Each consumer batch takes 6 s: past the request (2.5 s) plus the 2 s grace.
            _Interruption(
                "SIGTERM, consumer past grace",
                (signal.SIGTERM,),
                env={"PBI_EXAMPLE_WORK_SECONDS": "6"},
            ),
        )
    }
    await asyncio.gather(*(_interrupt(case, apps, tmp_path) for case in cases.values()))
    with capsys.disabled():
        print("\n| interruption | requests | thumbnails | client got |")
        print("| --- | --- | --- | --- |")
        for case in cases.values():
            print(case.row())

    def output(name: str) -> str:
        server = cases[name].server
        return "" if server is None else server.output()

    for name in ("SIGTERM, graceful 1 s", "SIGINT, graceful 1 s", "double SIGINT"):
        # The request outlived the graceful timeout (or the forced exit): cancelled, and
        # its batch given back; no attempt of any job is left running.
        ledger = cases[name].ledger
        assert ledger["requests"] == {"released": 1}, (name, ledger, output(name))
        assert "running" not in ledger["thumbnails"], (name, ledger, output(name))
    for name in ("SIGTERM, graceful 1 s", "SIGINT, graceful 1 s"):
        # A graceful stop lets the consumer finish the batch in hand: nothing released.
        assert set(cases[name].ledger["thumbnails"]) == {"succeeded"}, name
    # uvicorn waits for the request without a graceful timeout: it finishes, and its 200
    # means recorded.
    assert cases["SIGTERM"].response == 200
    assert cases["SIGTERM"].ledger["requests"] == {"succeeded": 1}
    assert set(cases["SIGTERM"].ledger["thumbnails"]) == {"succeeded"}
    # The lifespan waited its grace (2 s) for the consumer's batch, then cancelled it:
    # released, while the request (2.5 s, no graceful timeout) finished.
    past_grace = cases["SIGTERM, consumer past grace"]
    assert past_grace.ledger["thumbnails"] == {"released": 1}, output(past_grace.name)
    assert past_grace.ledger["requests"] == {"succeeded": 1}
    # SIGKILL leaves the leases running; they expire after the TTL, and a restart retries
    # them and covers every id exactly once.
    killed = cases["SIGKILL"]
    assert killed.ledger["requests"] == {"running": 1}
    assert killed.ledger["thumbnails"]["running"] == 1
    await asyncio.sleep(1.0)
    restarted = _start(apps, killed.url, tmp_path, env={"PBI_EXAMPLE_WORK_SECONDS": "0.01"})
    await restarted.ready()
    async with restarted.client() as client:
        for _ in range(200):
            left = (await client.get("/inventory/jobs/thumbnails/backlog")).json()
            if left["count"] == 0 and left["running"] == 0 and left["retry_due"] == 0:
                break
            await asyncio.sleep(0.05)
        assert left["count"] == 0, left
        # Nobody leased `requests` since: its row still says running, but every read
        # counts a lease past its expiry as expired.
        requests = (await client.get("/inventory/jobs/requests/backlog")).json()
        assert requests["running"] == 0, requests
    restarted.signal(signal.SIGTERM)
    await restarted.exited()
    ledger = await ledger_counts(killed.url)
    assert "running" not in ledger["thumbnails"]
    assert ledger["thumbnails"]["expired"] == 1
    await _covered_once(killed.url, "thumbnails", 1, ROWS)


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
