"""Child Python processes for the process-level tests (integration and soak).

``spawn`` starts a script with the test's interpreter from the project root, its output to a
log file (no pipes, so a chatty child can never block); ``reap`` SIGCONTs and SIGKILLs the
children still running and waits for them. Only our own children, by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ("ROOT", "reap", "spawn")

ROOT = Path(__file__).resolve().parents[1]


def spawn(
    script: Path, args: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python script *args`` with stdout and stderr to ``log``."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environment,
        )


def reap(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill every process still running (a stopped one is continued first) and wait for it."""
    for proc in processes:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped child: let it die
            except ProcessLookupError:
                pass
            proc.kill()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel is stuck
            pass
