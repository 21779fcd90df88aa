"""Fault-injection soak: nothing is lost, nothing is done twice (see docs/soak.md).

``pytest tests/soak -m soak`` runs the short configuration on every backend (CI);
``make soak SEED=7 SECONDS=600 BACKEND=postgres`` a long one. Environment:
``PYBATCHINTORY_SOAK_SEED``, ``_SECONDS``, ``_BACKEND`` (sqlite, postgres, mysql or all),
``_WORKERS`` and ``_PG_RESTART`` (0 turns the PostgreSQL restart off).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.conftest import MYSQL_URL, POSTGRES_URL, DatabaseFactory
from tests.soak._plan import SoakConfig
from tests.soak._run import DRAIN_TIMEOUT, run_soak

CONFIG = SoakConfig.from_env()
SELECTED = os.environ.get("PYBATCHINTORY_SOAK_BACKEND", "all").strip() or "all"
SERVER_URL = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL, "sqlite": ""}
TIMEOUT = int(CONFIG.seconds + DRAIN_TIMEOUT + 120)

# Seeds that found bugs, kept as short regression runs: (backend, seed, seconds, what).
REGRESSIONS: list[tuple[str, int, float, str]] = [
    # A lease granted after waiting for the job lock (behind a SIGSTOPped worker) was born
    # expired: the acquire's clock was the locking statement's start time.
    ("mysql", 1, 15.0, "lease born expired after a lock wait"),
    # A settle during a database outage failed, and the heartbeat kept renewing the
    # unsettled lease for as long as the worker lived: 34 ids never came back.
    ("postgres", 5, 15.0, "failed settle kept its lease alive forever"),
]


def _backends() -> list[object]:
    names = ("sqlite", "postgres", "mysql") if SELECTED == "all" else (SELECTED,)
    return [pytest.param(name, marks=getattr(pytest.mark, name)) for name in names]


def _soak(factory: DatabaseFactory, backend: str, config: SoakConfig, tmp_path: Path) -> None:
    url = factory(backend)
    report = asyncio.run(run_soak(backend, url, SERVER_URL[backend], config, tmp_path))
    line = report.line()
    print(line)
    with open(
        Path(os.environ.get("PYBATCHINTORY_SOAK_REPORT", tmp_path / "report.txt")), "a"
    ) as out:
        out.write(line + "\n")
    (tmp_path / "violations.txt").write_text("\n".join(report.violations))
    assert report.findings.duplicates == 0, line
    assert report.findings.lost == 0, line
    assert not report.violations, line + "\n" + "\n".join(report.violations)
    # Nothing lost proves little if nothing happened: the run leased, retried, and faults
    # landed (a missed pick or a connection kill that found nothing is only counted).
    faults = report.faults
    assert report.findings.counts.get("attempts", 0) > 0, line
    assert report.findings.counts.get("retries", 0) > 0, line
    assert faults["sigkill"] + faults["sigstop"] > 0, line
    if backend != "sqlite":
        kinds = ("acquire", "heartbeat", "settle", "idle")
        dropped = sum(faults[f"conn_kill_{kind}"] for kind in kinds)
        assert dropped + faults["db_outage_dropped"] > 0, line


@pytest.mark.soak
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("backend", _backends())
def test_soak(backend: str, any_db_url_factory: DatabaseFactory, tmp_path: Path) -> None:
    _soak(any_db_url_factory, backend, CONFIG, tmp_path)


@pytest.mark.soak
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("backend", "seed", "seconds"),
    [
        pytest.param(b, s, t, marks=getattr(pytest.mark, b), id=f"{b}-seed{s}")
        for b, s, t, _ in REGRESSIONS
        if SELECTED in ("all", b)
    ],
)
def test_regression_seed(
    backend: str, seed: int, seconds: float, any_db_url_factory: DatabaseFactory, tmp_path: Path
) -> None:
    config = SoakConfig(
        seed=seed, seconds=seconds, workers=CONFIG.workers, pg_restart=CONFIG.pg_restart
    )
    _soak(any_db_url_factory, backend, config, tmp_path)
