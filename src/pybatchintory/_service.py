"""``run_service``: ``asyncio.run`` for a service that stops on SIGTERM and SIGINT.

The first signal sets the ``stop`` event the service was given (its consumers finish the
batches in hand and return); a second one cancels it (batches in hand are released) and
ends the program as that signal would: ``KeyboardInterrupt`` for SIGINT, ``SystemExit``
with status ``128 + signal`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ("run_service",)

log = logging.getLogger("pybatchintory")

T = TypeVar("T")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_service(
    main: Callable[[asyncio.Event], Awaitable[T]],
    *,
    signals: Sequence[signal.Signals] = _SIGNALS,
    debug: bool | None = None,
) -> T:
    """Run ``main(stop)`` in a new event loop; SIGTERM and SIGINT set ``stop``.

    ``main`` passes ``stop`` to ``Inventory.consume`` (or ``lease(..., stop=)``, or its own
    loop) and returns once the work in hand is settled. A second signal cancels ``main``.
    Call it from the main thread, where signal handlers can be installed.

    Args:
        main: ``async def main(stop: asyncio.Event) -> T``.
        signals: The signals that stop the service.
        debug: Passed to ``asyncio.run``.

    Returns:
        What ``main`` returned.

    Raises:
        KeyboardInterrupt: A second SIGINT cancelled ``main``.
        SystemExit: A second signal other than SIGINT cancelled ``main`` (``128 + signal``).
    """
    return asyncio.run(_serve(main, tuple(signals)), debug=debug)


async def _serve(
    main: Callable[[asyncio.Event], Awaitable[T]], signals: tuple[signal.Signals, ...]
) -> T:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    service: asyncio.Future[T] = asyncio.ensure_future(main(stop))
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s received: stopping after the batches in hand", signum.name)
            stop.set()
        else:
            log.warning("%s received again: cancelling", signum.name)
            service.cancel()

    installed: list[signal.Signals] = []
    try:
        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        try:
            return await service
        except asyncio.CancelledError:
            if len(received) < 2:
                raise
            last = received[-1]
            if last == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise SystemExit(128 + int(last)) from None
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
