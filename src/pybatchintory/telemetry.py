"""Telemetry: OpenTelemetry spans and metrics, and ``logging`` records with batch fields.

With the ``[otel]`` extra (``opentelemetry-api``) installed, pybatchintory reports through
the global tracer and meter providers (or those given to :func:`configure`):

- spans ``pybatchintory.acquire``, ``pybatchintory.settle`` and ``pybatchintory.heartbeat``;
- ``pybatchintory.leases`` (counter; ``job``, ``outcome``: succeeded, failed, released, lost),
  ``pybatchintory.lease.duration`` (histogram, seconds from acquire to settle; ``job``,
  ``outcome``), ``pybatchintory.acquire.duration`` (histogram, seconds; ``job``, ``result``:
  leased, empty, error), ``pybatchintory.batches``, ``pybatchintory.rows`` and
  ``pybatchintory.weight`` (counters of what was handed out; ``job``).

Without it, every call here does nothing but log. Records of the ``pybatchintory`` logger
carry ``job``, ``attempt``, ``attempt_id``, ``meta_id_start`` and ``meta_id_end`` (``None``
when a record concerns no batch), so a formatter can use ``%(job)s`` and friends.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pybatchintory.errors import LeaseLost

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Status as SpanStatus
    from opentelemetry.trace import StatusCode

    AVAILABLE = True
except ImportError:  # the [otel] extra is not installed: logging only
    AVAILABLE = False

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ("AVAILABLE", "configure")

log = logging.getLogger("pybatchintory")

_FIELDS = ("job", "attempt", "attempt_id", "meta_id_start", "meta_id_end")
_STARTS_KEPT = 100_000


class _Leased(Protocol):
    """What telemetry reads of a batch or a lease grant."""

    @property
    def id(self) -> int: ...
    @property
    def job(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def meta_id_start(self) -> int: ...
    @property
    def meta_id_end(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def weight(self) -> Any: ...
    @property
    def token(self) -> str: ...


_current: contextvars.ContextVar[_Leased | None] = contextvars.ContextVar(
    "pybatchintory_batch", default=None
)


def _fields(batch: _Leased | None) -> dict[str, Any]:
    if batch is None:
        return dict.fromkeys(_FIELDS)
    return {
        "job": batch.job,
        "attempt": batch.attempt,
        "attempt_id": batch.id,
        "meta_id_start": batch.meta_id_start,
        "meta_id_end": batch.meta_id_end,
    }


class _BatchFields(logging.Filter):
    """Gives every record of the ``pybatchintory`` logger the batch fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job"):
            for key, value in _fields(_current.get()).items():
                setattr(record, key, value)
        return True


log.addFilter(_BatchFields())


def _version() -> str:
    # The installed distribution's version: importing the package root from here would
    # make this low layer depend on the facade.
    try:
        return importlib.metadata.version("pybatchintory")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


class _Instruments:
    def __init__(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ):
        version = _version()
        self.tracer = trace.get_tracer("pybatchintory", version, tracer_provider)
        meter = metrics.get_meter("pybatchintory", version, meter_provider)
        self.leases = meter.create_counter(
            "pybatchintory.leases", unit="{lease}", description="Leases ended, by outcome"
        )
        self.lease_duration = meter.create_histogram(
            "pybatchintory.lease.duration", unit="s", description="Acquire to settle"
        )
        self.acquire_duration = meter.create_histogram(
            "pybatchintory.acquire.duration", unit="s", description="Acquire latency"
        )
        self.batches = meter.create_counter(
            "pybatchintory.batches", unit="{batch}", description="Ranges handed out"
        )
        self.rows = meter.create_counter(
            "pybatchintory.rows", unit="{row}", description="Rows handed out"
        )
        self.weight = meter.create_counter("pybatchintory.weight", description="Weight handed out")


_configured: _Instruments | None = None
_global: _Instruments | None = None
_started: OrderedDict[str, float] = OrderedDict()
"""When each lease still held was granted (monotonic), by token; the oldest go first."""


def configure(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> None:
    """Report to these providers; with neither, to OpenTelemetry's global ones (the default).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install 'pybatchintory[otel]'``).
    """
    global _configured
    if not AVAILABLE:
        raise ImportError(
            "telemetry needs opentelemetry-api. Install it with: pip install 'pybatchintory[otel]'"
        )
    if tracer_provider is None and meter_provider is None:
        _configured = None
    else:
        _configured = _Instruments(tracer_provider, meter_provider)


def _unset(tracer: object, meter: object) -> bool:
    """Neither global provider was set: every span and measurement would be dropped."""
    # The API's default meter provider is a private proxy class; its name is the stable part.
    return isinstance(tracer, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)) and (
        isinstance(meter, metrics.NoOpMeterProvider)
        or type(meter).__name__ == "_ProxyMeterProvider"
    )


def _get() -> _Instruments | None:
    """The instruments to report to, or ``None`` when nobody listens (the hot path skips)."""
    global _global
    if _configured is not None:
        return _configured
    if not AVAILABLE or _unset(trace.get_tracer_provider(), metrics.get_meter_provider()):
        return None
    if _global is None:
        _global = _Instruments(None, None)
    return _global


@contextmanager
def _span(
    instruments: _Instruments | None, name: str, attributes: dict[str, Any]
) -> Iterator[Span | None]:
    """A span of ``instruments``' tracer (``_get()``, asked once per operation)."""
    if instruments is None:
        yield None
        return
    with instruments.tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def _fail(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        span.set_status(SpanStatus(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def acquiring_span(job: str) -> Iterator[Callable[[Collection[_Leased]], None]]:
    """Around one acquire of ``job``: call the yielded function with what was leased."""
    started = time.monotonic()
    leased: list[_Leased] = []
    instruments = _get()
    with _span(instruments, "pybatchintory.acquire", {"pybatchintory.job": job}) as span:
        try:
            yield leased.extend
        except BaseException as exc:
            _fail(span, exc)
            if instruments is not None:
                elapsed = time.monotonic() - started
                instruments.acquire_duration.record(elapsed, {"job": job, "result": "error"})
            raise
        now = time.monotonic()
        if span is not None:
            span.set_attribute("pybatchintory.batches", len(leased))
            span.set_attribute("pybatchintory.rows", sum(b.count for b in leased))
        if instruments is not None:
            result = "leased" if leased else "empty"
            instruments.acquire_duration.record(now - started, {"job": job, "result": result})
            if leased:
                instruments.batches.add(len(leased), {"job": job})
                instruments.rows.add(sum(b.count for b in leased), {"job": job})
                instruments.weight.add(sum(float(b.weight) for b in leased), {"job": job})
    verbose = log.isEnabledFor(logging.INFO)
    for batch in leased:
        _started[batch.token] = now
        if verbose:
            log.info(
                "leased %s attempt %d [%d, %d]: %d rows",
                batch.job,
                batch.attempt,
                batch.meta_id_start,
                batch.meta_id_end,
                batch.count,
                extra=_fields(batch),
            )
    while len(_started) > _STARTS_KEPT:
        _started.popitem(last=False)


def _ended(batch: _Leased, outcome: str, instruments: _Instruments | None) -> None:
    started = _started.pop(batch.token, None)
    if instruments is None:
        return
    attributes = {"job": batch.job, "outcome": outcome}
    instruments.leases.add(1, attributes)
    if started is not None:
        instruments.lease_duration.record(time.monotonic() - started, attributes)


@contextmanager
def settling(batch: _Leased, status: str) -> Iterator[None]:
    """Around the settle write of ``batch`` as ``status``."""
    token = _current.set(batch)
    attributes = {
        "pybatchintory.job": batch.job,
        "pybatchintory.attempt": batch.attempt,
        "pybatchintory.meta_id_start": batch.meta_id_start,
        "pybatchintory.meta_id_end": batch.meta_id_end,
        "pybatchintory.status": status,
    }
    instruments = _get()
    try:
        with _span(instruments, "pybatchintory.settle", attributes) as span:
            try:
                yield
            except LeaseLost as exc:
                _fail(span, exc)
                _ended(batch, "lost", instruments)
                log.warning(
                    "lease lost: %s attempt %d [%d, %d]: %s",
                    batch.job,
                    batch.attempt,
                    batch.meta_id_start,
                    batch.meta_id_end,
                    exc,
                )
                raise
            except BaseException as exc:
                _fail(span, exc)
                log.warning("settle of %s attempt %d failed: %s", batch.job, batch.attempt, exc)
                raise
        _ended(batch, status, instruments)
        log.info(
            "%s %s attempt %d [%d, %d]",
            status,
            batch.job,
            batch.attempt,
            batch.meta_id_start,
            batch.meta_id_end,
        )
    finally:
        _current.reset(token)


@contextmanager
def settling_many(batches: int) -> Iterator[None]:
    """Around one ``settle_many`` write of ``batches`` settles (each reported by ``ended``)."""
    attributes = {"pybatchintory.batches": batches}
    with _span(_get(), "pybatchintory.settle_many", attributes) as span:
        try:
            yield
        except BaseException as exc:
            _fail(span, exc)
            raise


def ended(batch: _Leased, outcome: str) -> None:
    """One batch of a ``settle_many`` ended as ``outcome`` (a status, or ``lost``)."""
    _ended(batch, outcome, _get())
    if outcome == "lost":
        log.warning("settle of %s attempt %d found its lease lost", batch.job, batch.attempt)
    elif log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s attempt %d [%d, %d]",
            outcome,
            batch.job,
            batch.attempt,
            batch.meta_id_start,
            batch.meta_id_end,
        )


@contextmanager
def heartbeat(owner: str, leases: int) -> Iterator[None]:
    """Around one heartbeat renewing ``leases`` leases of ``owner``."""
    attributes = {"pybatchintory.owner": owner, "pybatchintory.leases": leases}
    with _span(_get(), "pybatchintory.heartbeat", attributes) as span:
        try:
            yield
        except BaseException as exc:
            _fail(span, exc)
            raise
    log.debug("heartbeat renewed %d leases", leases)


def lost(batch: _Leased) -> None:
    """A heartbeat found the lease of ``batch`` gone."""
    _ended(batch, "lost", _get())
    log.warning(
        "lease lost: %s attempt %d [%d, %d]",
        batch.job,
        batch.attempt,
        batch.meta_id_start,
        batch.meta_id_end,
        extra=_fields(batch),
    )


G = TypeVar("G", bound=_Leased)
B = TypeVar("B", bound=_Leased)
S = TypeVar("S", bound="_Settles")


class _Settles(Protocol):
    @property
    def status(self) -> Any: ...


async def traced_acquire(job: str, acquiring: Awaitable[list[G]]) -> list[G]:
    """Await one acquire of ``job`` in a span; count and time what it leased."""
    with acquiring_span(job) as leased:
        grants = await acquiring
        leased(grants)
    return grants


async def traced_settle(batch: B, settlement: S, write: Callable[[B, S], Awaitable[None]]) -> None:
    """Run ``write(batch, settlement)`` in a settle span; count the lease's outcome."""
    with settling(batch, str(settlement.status)):
        await write(batch, settlement)


async def traced_heartbeat(
    owner: str, tokens: Collection[str], renewing: Awaitable[set[str]]
) -> set[str]:
    """Await one heartbeat of ``owner`` in a span."""
    with heartbeat(owner, len(tokens)):
        return await renewing
