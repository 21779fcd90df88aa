"""The soak's worker processes: started, replaced, signalled and always reaped.

Only the pool's own children are ever signalled, by pid. ``close()`` SIGCONTs and
SIGKILLs whatever still runs and waits for it, even when the run failed
(``tests.processes``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import reap, spawn

__all__ = ("SoakPool", "SoakProcess")

WORKER = Path(__file__).resolve().with_name("soak_worker.py")


@dataclass
class SoakProcess:
    """One worker process of one slot."""

    slot: int
    generation: int
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def owner(self) -> str:
        return f"soak-{self.slot}-{self.generation}-{self.pid}"

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by SIGKILL
        return out

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stopped(self) -> bool:
        """Whether the kernel reports the process stopped (SIGSTOP took effect)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


@dataclass
class SoakPool:
    """Starts soak workers under ``directory`` with common arguments."""

    directory: Path
    common: list[str]
    processes: list[SoakProcess] = field(default_factory=list)

    @property
    def control(self) -> Path:
        return self.directory

    def start(self, slot: int, generation: int) -> SoakProcess:
        out = self.directory / f"worker-{slot}-{generation}.jsonl"
        log = self.directory / f"worker-{slot}-{generation}.log"
        args = [*self.common, "--slot", str(slot), "--generation", str(generation)]
        args += ["--out", str(out)]
        proc = spawn(WORKER, args, log)
        process = SoakProcess(slot, generation, proc, out, log)
        self.processes.append(process)
        return process

    def live(self) -> list[SoakProcess]:
        return [p for p in self.processes if p.proc.poll() is None]

    def by_owner(self, owner: str) -> SoakProcess | None:
        for process in self.processes:
            if process.owner == owner:
                return process
        return None

    def events(self) -> list[dict[str, Any]]:
        return [e for p in self.processes for e in p.events()]

    def close(self) -> None:
        reap(process.proc for process in self.processes)
