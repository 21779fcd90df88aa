"""A stop signal: the event a service sets to end its loops and waits between batches."""

from __future__ import annotations

from typing import Any, Protocol

import anyio

from pybatchintory.errors import InvalidArgument

__all__ = ("StopSignal", "as_stop", "wait_or_stop")


class StopSignal(Protocol):
    """An event that asks a loop to stop: ``asyncio.Event`` and ``anyio.Event`` fit."""

    def is_set(self) -> bool:
        """Whether stopping was asked for."""
        ...

    async def wait(self) -> Any:
        """Return once stopping is asked for."""
        ...


def as_stop(stop: object) -> StopSignal | None:
    """``stop`` checked: ``None`` or an event with ``is_set()`` and ``wait()``.

    Raises:
        InvalidArgument: ``stop`` is not such an event.
    """
    if stop is None:
        return None
    if not callable(getattr(stop, "is_set", None)) or not callable(getattr(stop, "wait", None)):
        raise InvalidArgument(f"stop must be an event (asyncio.Event, anyio.Event): {stop!r}")
    return stop  # type: ignore[return-value]


async def wait_or_stop(stop: StopSignal | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; whether it is set."""
    if stop is None:
        await anyio.sleep(seconds)
        return False
    if stop.is_set():
        return True
    with anyio.move_on_after(seconds):
        await stop.wait()
    return stop.is_set()
