"""A real uvicorn process serving ``examples.fastapi_app`` on a free loopback port.

Started with the test's interpreter from the project root, its output to a log file; the
test sends it real signals by pid and reads the ledger with plain SQL afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from tests.helpers import fetch_all
from tests.processes import ROOT

__all__ = ("TcpProxy", "UvicornApp", "free_port", "ledger_counts")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class UvicornApp:
    """One ``uvicorn examples.fastapi_app:app`` process."""

    def __init__(
        self,
        url: str,
        log: Path,
        *,
        graceful: int | None = None,
        env: dict[str, str] | None = None,
        app: str = "examples.fastapi_app:app",
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "info"]
        if graceful is not None:
            args += ["--timeout-graceful-shutdown", str(graceful)]
        environment = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PBI_EXAMPLE_URL": url,
            **(env or {}),
        }
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=environment,
            )

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An httpx client on this server."""
        return httpx.AsyncClient(base_url=self.base, timeout=30, **options)

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until the app answers (its lifespan has opened the Inventory)."""
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"uvicorn exited early:\n{self.output()}")
                try:
                    if (await client.get("/inventory/jobs")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"uvicorn did not come up:\n{self.output()}")
                await anyio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to this server (by pid)."""
        os.kill(self.proc.pid, sig)

    async def exited(self, timeout: float = 20.0) -> int:
        """Wait for the process to end; its return code."""
        return await anyio.to_thread.run_sync(lambda: self.proc.wait(timeout=timeout))

    def output(self) -> str:
        """What the server logged."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL it if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=15)


async def ledger_counts(url: str) -> dict[str, Counter[str]]:
    """Attempts by job and status, read with plain SQL."""
    rows = await fetch_all(
        url, "SELECT job, status, COUNT(*) AS n FROM inventory GROUP BY job, status"
    )
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(str(row["job"]), Counter())[str(row["status"])] = int(row["n"])
    return counts


class TcpProxy:
    """A loopback TCP proxy the test can cut: the database 'goes away' for real."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (again) on ``self.port``."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
