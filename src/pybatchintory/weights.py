"""Weights are numbers: integers, floats or exact decimals.

A weight column may be an integer, a ``FLOAT``/``REAL`` or a ``NUMERIC``; ``max_weight`` may be
fractional (``weight=1.5``). Databases hand back sums as ``int``, ``float`` or ``Decimal``
(PostgreSQL and MySQL sum integers into ``NUMERIC``), so every weight crosses this module:

- ``as_weight``: what the API shows, an ``int`` whenever the value is whole (so integer
  columns keep integer weights), otherwise the ``float`` or ``Decimal`` as read;
- ``exact``: what the planner adds and compares, ``int`` or ``Decimal`` (a ``float`` becomes
  the ``Decimal`` of its shortest repr), so floats and decimals never meet in arithmetic;
- ``check_max_weight``: a cap a caller gives, refused unless a finite number above zero;
- ``same``: whether a recount agrees with the ledger (which keeps ten decimal places).
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from pybatchintory.errors import InvalidArgument
from pybatchintory.models import Weight

__all__ = (
    "LEDGER_PLACES",
    "Weight",
    "as_json",
    "as_weight",
    "check_max_weight",
    "exact",
    "same",
    "total",
)

LEDGER_PLACES = 10
"""Decimal places the ledger's ``weight`` column keeps (``NUMERIC(38, 10)``)."""

_TOLERANCE = Decimal(1).scaleb(-LEDGER_PLACES + 1)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, Decimal))


def as_weight(value: object) -> Weight:
    """A weight as the API shows it: whole values as ``int``; ``None`` as ``0``.

    Raises:
        TypeError: ``value`` is not a number (a non-numeric column slipped through).
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise TypeError(f"a weight must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if value.is_finite() and value == value.to_integral_value():
        return int(value)
    return value.normalize()


def as_json(value: Weight | None) -> int | float | None:
    """``value`` as a JSON number (a fractional ``Decimal`` as its nearest float)."""
    if value is None or isinstance(value, (int, float)):
        return value
    shown = as_weight(value)
    return shown if isinstance(shown, int) else float(shown)


def exact(value: Weight) -> int | Decimal:
    """``value`` for arithmetic: ``int`` stays, ``float`` becomes ``Decimal(repr(value))``."""
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def total(*values: Weight) -> Weight:
    """The sum of ``values`` (floats and decimals may be mixed), as ``as_weight`` shows it."""
    result: int | Decimal = 0
    for value in values:
        result += exact(value)
    return as_weight(result)


def check_max_weight(value: object) -> Weight:
    """``value`` if it is a usable weight cap.

    Raises:
        InvalidArgument: Not a number (or a bool), NaN or infinite, or not above zero.
    """
    if not _is_number(value):
        raise InvalidArgument(f"max_weight must be a number > 0, got {value!r}")
    assert isinstance(value, (int, float, Decimal))
    try:
        finite = math.isfinite(value)
    except (InvalidOperation, ValueError):  # a signalling NaN Decimal
        finite = False
    if not finite:
        raise InvalidArgument(f"max_weight must be a finite number, got {value!r}")
    if value <= 0:
        raise InvalidArgument(f"max_weight must be > 0, got {value}")
    return value


def same(a: Weight, b: Weight) -> bool:
    """``a`` and ``b`` agree to the ledger's precision (exactly, for integers)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    x, y = Decimal(exact(a)), Decimal(exact(b))
    scale: Decimal = max(Decimal(1), abs(x), abs(y))
    return abs(x - y) <= _TOLERANCE * scale
