"""The soak's configuration (from the environment) and its seeded plan.

Everything random in a run is drawn here, or in the workers from ``seed:slot:generation``:
the jobs and their caps, the initial table, how it grows, and the schedule of injected
faults. The same seed gives the same plan; only the interleaving of processes differs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ("FaultEvent", "Plan", "SoakConfig", "make_plan")

SHORT_SECONDS = 15.0


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class SoakConfig:
    """How one soak run is shaped.

    Attributes:
        seed: Drives every random choice of the run.
        seconds: Length of the fault phase (the drain comes on top).
        workers: Worker processes running at any time.
        lease_ttl: Lease TTL of the workers, seconds (heartbeat every ttl/3).
        pg_restart: Restart the PostgreSQL server once during the run.
    """

    seed: int = 1
    seconds: float = SHORT_SECONDS
    workers: int = 6
    lease_ttl: float = 2.0
    pg_restart: bool = True

    @classmethod
    def from_env(cls, *, seed: int | None = None, seconds: float | None = None) -> SoakConfig:
        """``PYBATCHINTORY_SOAK_SEED``/``_SECONDS``/``_WORKERS``/``_PG_RESTART``."""
        env = os.environ
        return cls(
            seed=seed if seed is not None else int(env.get("PYBATCHINTORY_SOAK_SEED") or 1),
            seconds=seconds
            if seconds is not None
            else float(env.get("PYBATCHINTORY_SOAK_SECONDS") or SHORT_SECONDS),
            workers=int(env.get("PYBATCHINTORY_SOAK_WORKERS") or 6),
            pg_restart=_flag("PYBATCHINTORY_SOAK_PG_RESTART", True),
        )


@dataclass(frozen=True)
class FaultEvent:
    """One fault the controller injects, ``at`` seconds into the run."""

    at: float
    kind: str  # sigkill | sigstop | conn_kill | db_outage | pg_restart
    target: str = ""  # conn_kill: acquire | heartbeat | settle
    pick: float = 0.0  # which candidate (worker, connection), as a fraction


@dataclass(frozen=True)
class Plan:
    """Everything a run does, drawn from the seed."""

    seed: int
    jobs: list[dict[str, Any]]
    initial_rows: int
    growth: list[tuple[float, int, int, list[int]]]  # (at, rows, id gap, heavy offsets)
    faults: list[FaultEvent] = field(default_factory=list)


def make_plan(config: SoakConfig, backend: str) -> Plan:
    """The jobs, the table's growth and the fault schedule of ``config.seed``."""
    rng = random.Random(f"plan:{config.seed}")
    initial = rng.randint(1500, 2500)
    jobs: list[dict[str, Any]] = [
        {"name": "inc_count", "max_count": rng.randint(25, 60)},
        {"name": "inc_weight", "max_weight": rng.randint(12_000, 25_000)},
        {
            "name": "inc_both",
            "max_count": rng.randint(30, 50),
            "max_weight": rng.randint(9_000, 18_000),
        },
    ]
    # The backfill window starts inside the initial rows and ends among the rows that
    # arrive while the workers run.
    start = rng.randint(100, initial // 2)
    jobs.append(
        {
            "name": "backfill",
            "id_start": start,
            "id_end": initial + int(config.seconds * 40),
            "max_count": rng.randint(40, 90),
        }
    )
    growth: list[tuple[float, int, int, list[int]]] = []
    at = 0.0
    while True:
        at += rng.uniform(0.2, 0.6)
        if at >= config.seconds:
            break
        rows = rng.randint(10, 50)
        gap = rng.choice((0, 0, 0, 1, 3))
        heavy = [rng.randrange(rows)] if rng.random() < 0.1 else []
        growth.append((round(at, 3), rows, gap, heavy))
    faults: list[FaultEvent] = []
    at = rng.uniform(0.5, 1.5)
    kinds = ["sigkill", "sigstop", "conn_kill", "db_outage"]
    weights = {"sqlite": [3, 2, 0, 0], "mysql": [3, 2, 6, 0]}.get(backend, [3, 2, 5, 2])
    while at < config.seconds - 1.0:
        kind = rng.choices(kinds, weights)[0]
        target = rng.choice(("acquire", "heartbeat", "settle")) if kind == "conn_kill" else ""
        faults.append(FaultEvent(round(at, 3), kind, target, rng.random()))
        at += rng.uniform(0.4, 1.6)
    if backend == "postgres" and config.pg_restart:
        faults.append(FaultEvent(round(config.seconds * rng.uniform(0.35, 0.65), 3), "pg_restart"))
        faults.sort(key=lambda f: f.at)
    return Plan(seed=config.seed, jobs=jobs, initial_rows=initial, growth=growth, faults=faults)
