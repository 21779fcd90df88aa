"""A lease's writes start at once where Python allows it (3.12+), in a task of their own."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from pybatchintory import _leases


async def _write(steps: list[str]) -> int:
    steps.append("sent")  # what a write does before its first wait: send the statement
    await asyncio.sleep(0)
    steps.append("answered")
    return 7


async def test_a_write_starts_at_once_where_python_allows_it() -> None:
    steps: list[str] = []
    task = _leases._start(_write(steps))
    # 3.12+: the first step ran inside the call; before, it waits for the next iteration.
    assert steps == (["sent"] if sys.version_info >= (3, 12) else [])
    assert task is not asyncio.current_task()
    assert await task == 7
    assert steps == ["sent", "answered"]


async def test_cancelling_the_caller_does_not_reach_the_started_write() -> None:
    steps: list[str] = []
    started = asyncio.Event()

    async def caller() -> None:
        task = _leases._start(_write(steps))
        started.set()
        await asyncio.shield(task)

    outer = asyncio.get_running_loop().create_task(caller())
    await started.wait()
    outer.cancel()
    await asyncio.gather(outer, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)
    assert steps == ["sent", "answered"], "the write was cut off with its caller"


async def test_a_loop_with_its_own_task_factory_makes_the_task() -> None:
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Any, /, **kwargs: Any
    ) -> asyncio.Future[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        steps: list[str] = []
        task = _leases._start(_write(steps))
        assert len(made) == 1
        assert steps == []  # the factory's task starts as usual
        assert await task == 7
    finally:
        loop.set_task_factory(None)
