"""What a failed attempt records: type, message, bounded traceback and a stable fingerprint."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pybatchintory._failure import Failure, describe_failure, fingerprint

MAX_MESSAGE = 4000
MAX_TRACEBACK = 16_000
#: Room for the "... [N characters cut] ..." marker of a shortened text.
MARKER = 100


class PipelineError(Exception):
    pass


def catch(func: Callable[..., object], *args: object) -> BaseException:
    try:
        func(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_value_error_elsewhere(message: str) -> None:
    raise ValueError(message)


def raise_type_error(message: str) -> None:
    raise TypeError(message)


def raise_from_a_loop(message: str) -> None:
    for _ in range(1):
        raise ValueError(message)


def recurse(n: int) -> int:
    return recurse(n + 1) + 1


# -- describe_failure -------------------------------------------------------------------------


def test_describe_a_builtin_exception() -> None:
    failure = describe_failure(catch(raise_value_error, "bad row 17"))
    assert isinstance(failure, Failure)
    assert failure.error_type == "ValueError"
    assert failure.message == "bad row 17"
    assert "Traceback (most recent call last)" in failure.traceback
    assert "raise_value_error" in failure.traceback
    assert "ValueError: bad row 17" in failure.traceback
    assert failure.fingerprint == fingerprint(catch(raise_value_error, "other"))


def test_describe_names_a_user_exception_with_its_module() -> None:
    def boom() -> None:
        raise PipelineError("upstream schema changed")

    failure = describe_failure(catch(boom))
    assert failure.error_type.endswith(".PipelineError")
    assert failure.error_type.split(".")[-2] == __name__.rsplit(".", 1)[-1]
    assert failure.message == "upstream schema changed"
    assert len(failure.error_type) <= 255


def test_describe_an_exception_without_a_traceback() -> None:
    failure = describe_failure(KeyError("missing"))
    assert failure.error_type == "KeyError"
    assert failure.message == "'missing'"
    assert "KeyError" in failure.traceback
    assert len(failure.fingerprint) == 32


def test_describe_keeps_the_cause_in_the_traceback() -> None:
    def chained() -> None:
        try:
            raise OSError("disk full")
        except OSError as exc:
            raise RuntimeError("write failed") from exc

    failure = describe_failure(catch(chained))
    assert failure.error_type == "RuntimeError"
    assert failure.message == "write failed"
    assert "OSError: disk full" in failure.traceback
    assert "RuntimeError: write failed" in failure.traceback


def test_a_huge_message_is_bounded() -> None:
    huge = "x" * 1_000_000
    failure = describe_failure(catch(raise_value_error, "start-" + huge + "-end"))
    assert len(failure.message) <= MAX_MESSAGE + MARKER
    assert len(failure.traceback) <= MAX_TRACEBACK + MARKER
    # Both ends survive: the start says what, the end is where the exception line is.
    assert failure.message.startswith("start-")
    assert failure.message.endswith("-end")
    assert "cut" in failure.message
    assert failure.traceback.startswith("Traceback")


def test_deep_recursion_is_bounded() -> None:
    exc = catch(recurse, 0)
    assert isinstance(exc, RecursionError)
    failure = describe_failure(exc)
    assert failure.error_type == "RecursionError"
    assert len(failure.traceback) <= MAX_TRACEBACK + MARKER
    assert len(failure.message) <= MAX_MESSAGE + MARKER
    assert len(failure.fingerprint) == 32
    # Same failure, same fingerprint, although the depth differs run to run.
    assert fingerprint(catch(recurse, 5)) == failure.fingerprint


def test_many_distinct_frames_are_bounded() -> None:
    # Distinct source lines defeat traceback's "[Previous line repeated]" compression.
    namespace: dict[str, Any] = {}
    source = (
        "\n".join(f"def f{i}(n):\n    return f{i + 1}(n) + {i}" for i in range(600))
        + "\ndef f600(n):\n    raise ValueError('bottom ' * 50)\n"
    )
    exec(compile(source, "generated_chain.py", "exec"), namespace)
    failure = describe_failure(catch(namespace["f0"], 1))
    assert len(failure.traceback) <= MAX_TRACEBACK + MARKER
    assert "ValueError" in failure.traceback.splitlines()[-1]


def test_an_exception_group_lists_every_leaf() -> None:
    def group() -> None:
        try:
            raise KeyError("k")
        except KeyError as key:
            inner = ExceptionGroup("inner", [key, PipelineError("p")])
        raise ExceptionGroup("outer", [ValueError("v1"), inner, TypeError("t1")])

    failure = describe_failure(catch(group))
    assert failure.error_type == "ExceptionGroup"
    assert failure.message.startswith("outer")
    for leaf in ("ValueError: v1", "KeyError: 'k'", "PipelineError: p", "TypeError: t1"):
        assert leaf in failure.message, (leaf, failure.message)
    assert "v1" in failure.traceback and "t1" in failure.traceback


def test_a_base_exception_group_is_described() -> None:
    exc = BaseExceptionGroup("stopped", [KeyboardInterrupt(), ValueError("v")])
    failure = describe_failure(exc)
    assert "KeyboardInterrupt" in failure.message and "ValueError: v" in failure.message


def test_a_huge_exception_group_is_bounded() -> None:
    exc = ExceptionGroup("many", [ValueError(f"leaf {i} " + "y" * 200) for i in range(2000)])
    failure = describe_failure(exc)
    assert len(failure.message) <= MAX_MESSAGE + MARKER
    assert len(failure.traceback) <= MAX_TRACEBACK + MARKER


# -- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_ignores_the_message() -> None:
    a = catch(raise_value_error, "row 1 failed")
    b = catch(raise_value_error, "row 999999 failed, totally different words")
    assert fingerprint(a) == fingerprint(b)
    assert describe_failure(a).fingerprint == describe_failure(b).fingerprint


def test_fingerprint_is_a_short_hex_digest() -> None:
    value = fingerprint(catch(raise_value_error, "x"))
    assert len(value) == 32
    int(value, 16)


def test_fingerprint_differs_between_raise_sites() -> None:
    assert fingerprint(catch(raise_value_error, "x")) != fingerprint(
        catch(raise_value_error_elsewhere, "x")
    )
    assert fingerprint(catch(raise_value_error, "x")) != fingerprint(catch(raise_from_a_loop, "x"))


def test_fingerprint_differs_between_types() -> None:
    assert fingerprint(catch(raise_value_error, "x")) != fingerprint(catch(raise_type_error, "x"))

    def site(kind: type[Exception]) -> None:
        raise kind("same line, other type")

    assert fingerprint(catch(site, ValueError)) != fingerprint(catch(site, KeyError))


def test_fingerprint_of_a_group_depends_on_its_leaves() -> None:
    def group(*kinds: type[Exception]) -> None:
        raise ExceptionGroup("g", [kind("m") for kind in kinds])

    one = fingerprint(catch(group, ValueError))
    assert one == fingerprint(catch(group, ValueError))
    assert one != fingerprint(catch(group, ValueError, TypeError))
    assert one != fingerprint(catch(group, TypeError))


HELPER = """
def boom(message):
    raise ValueError(message)


def run(message):
    try:
        boom(message)
    except ValueError as exc:
        return exc
"""


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_helper(directory: Path, leading_lines: int) -> Path:
    directory.mkdir(parents=True)
    path = directory / "failing_step.py"
    path.write_text("# padding\n" * leading_lines + textwrap.dedent(HELPER))
    return path


def test_fingerprint_ignores_directories_and_line_numbers(tmp_path: Path) -> None:
    """The same code in another checkout, with lines shifted, fingerprints the same."""
    first = load(write_helper(tmp_path / "checkout_a" / "pkg", 0), "pbi_test_step_a")
    second = load(write_helper(tmp_path / "elsewhere" / "b" / "pkg", 37), "pbi_test_step_b")
    a, b = first.run("id 1"), second.run("id 2")
    assert a.__traceback__.tb_lineno != b.__traceback__.tb_lineno or (
        a.__traceback__.tb_next.tb_lineno != b.__traceback__.tb_next.tb_lineno
    )
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_sees_a_changed_source_line(tmp_path: Path) -> None:
    path = write_helper(tmp_path / "v1", 0)
    changed = tmp_path / "v2"
    changed.mkdir()
    (changed / "failing_step.py").write_text(
        path.read_text().replace("raise ValueError(message)", "raise ValueError(message + '!')")
    )
    a = load(path, "pbi_test_step_v1").run("m")
    b = load(changed / "failing_step.py", "pbi_test_step_v2").run("m")
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_is_equal_across_processes(tmp_path: Path) -> None:
    path = write_helper(tmp_path / "proc", 3)
    here = fingerprint(load(path, "pbi_test_step_proc").run("in this process"))
    script = (
        "import importlib.util, sys\n"
        "from pybatchintory._failure import fingerprint\n"
        f"spec = importlib.util.spec_from_file_location('step', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(fingerprint(m.run('in another process')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == here


@pytest.mark.parametrize("message", ["", "x" * 10_000, "ünïcødé ✓", "\x00\n\t"])
def test_describe_handles_odd_messages(message: str) -> None:
    failure = describe_failure(catch(raise_value_error, message))
    assert failure.fingerprint == fingerprint(catch(raise_value_error, "plain"))
    assert len(failure.message) <= MAX_MESSAGE + MARKER
