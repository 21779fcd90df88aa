"""Separate virtualenvs for the baselines, created by the benchmark itself on first use.

pybatchintory 0.0.8 shares our import name and needs pydantic 1 and pandas 1; pgqueuer
brings its own asyncpg. Each lives in ``benchmarks/.venvs/<name>`` (git-ignored) and is
reinstalled when its requirement list changes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

VENVS = Path(__file__).parent / ".venvs"
REQUIREMENTS: dict[str, list[str]] = {
    # The seed as published; SQLAlchemy 2.0 is what it was released against; sync drivers.
    "seed": [
        "pybatchintory==0.0.8",
        "numpy<2",
        "sqlalchemy>=2.0,<2.1",
        "psycopg2-binary",
        "pymysql",
    ],
    "pgqueuer": ["pgqueuer>=1.6,<1.7", "asyncpg"],
}
SYNC_DRIVERS = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql", "sqlite": "sqlite"}


def ensure(name: str) -> Path:
    """The venv's python, installing the venv first if it is missing or out of date."""
    home = VENVS / name
    python = home / "bin" / "python"
    stamp = home / ".installed"
    wanted = "\n".join(REQUIREMENTS[name])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"[bench] installing {name} into {home} ...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS[name]],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(wanted)
    return python


def sync_url(url: str) -> str:
    """The same database for a synchronous driver (the seed is synchronous)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    return parsed.set(drivername=SYNC_DRIVERS[backend]).render_as_string(hide_password=False)


def plain_dsn(url: str) -> str:
    """A libpq DSN for asyncpg (``postgresql://...``)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)
