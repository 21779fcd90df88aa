"""Where the bergtalzug venv is, and how a test runs a script in it.

bergtalzug 0.2.0 declares Python >= 3.14; its tests run the real package on Python 3.13
from ``.venv-bergtalzug`` (``make venv-bergtalzug``, which ``.ci/run`` runs). Without that
venv the tests skip with the reason, unless ``PYBATCHINTORY_TEST_REQUIRE`` lists
``bergtalzug`` (CI), where they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.processes import ROOT

__all__ = ("bergtalzug_python", "run_in_bergtalzug_venv")

VENV_PYTHON = ROOT / ".venv-bergtalzug" / "bin" / "python"


def bergtalzug_python() -> Path:
    """The venv's interpreter; skips (or, when required, fails) the test without it."""
    if VENV_PYTHON.exists():
        return VENV_PYTHON
    required = {
        name.strip() for name in os.environ.get("PYBATCHINTORY_TEST_REQUIRE", "").split(",")
    }
    message = f"no bergtalzug venv at {VENV_PYTHON}: run `make venv-bergtalzug`"
    if "bergtalzug" in required:
        pytest.fail(f"{message} (required by PYBATCHINTORY_TEST_REQUIRE)")
    pytest.skip(message)


def run_in_bergtalzug_venv(
    script: Path, args: list[str], log: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the venv's Python from the project root; output kept in ``log``."""
    python = bergtalzug_python()
    done = subprocess.run(
        [str(python), str(script), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    with open(log, "a") as handle:
        handle.write(done.stdout + done.stderr)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout}\n{done.stderr}"
    return done
