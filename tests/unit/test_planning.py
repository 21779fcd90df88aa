"""Example-based tests of the pure planning helpers: limits, windows, backoff, the cutter."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pybatchintory as pbi
from pybatchintory._planning import (
    MAX_PAGE,
    RangeCutter,
    backoff_delay,
    statement_page_size,
    validate_limits,
    validate_window,
)
from pybatchintory.models import Limits, PlannedRange
from pybatchintory.protocols import PageRequest, PageSummary
from pybatchintory.weights import as_weight

# -- validate_limits --------------------------------------------------------------------------

BAD_CAPS = [0, -1, 1.5, True, False, "10", 10.0, [10]]
BAD_WEIGHT_CAPS = [
    0,
    -1,
    0.0,
    -0.5,
    True,
    False,
    "10",
    [10],
    float("nan"),
    float("inf"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("-Infinity"),
]


@pytest.mark.parametrize("value", BAD_CAPS, ids=repr)
def test_validate_limits_rejects_a_bad_max_count(value: object) -> None:
    with pytest.raises(pbi.InvalidArgument, match="max_count"):
        validate_limits(value, None)


@pytest.mark.parametrize("value", BAD_WEIGHT_CAPS, ids=repr)
def test_validate_limits_rejects_a_bad_max_weight(value: object) -> None:
    with pytest.raises(pbi.InvalidArgument, match="max_weight"):
        validate_limits(None, value, has_weight=True)


@pytest.mark.parametrize("value", [1.5, 10.0, Decimal("0.25"), 10**12], ids=repr)
def test_validate_limits_accepts_a_fractional_max_weight(value: object) -> None:
    assert validate_limits(None, value, has_weight=True).max_weight == value


def test_the_cutter_adds_floats_and_decimals_exactly() -> None:
    """Ten rows of 0.4 under a cap of 1.5: three rows, weight 1.2 (was count=2 weight=0)."""
    cutter = RangeCutter(after=None, end=None, limits=Limits(max_weight=1.5))
    request = cutter.request()
    assert request is not None and request.max_weight == 1.5
    cutter.feed(PageSummary(10, 1, 0.4, 10, 4.0, 3, 3, 1.2000000000000002))
    assert cutter.request() is None
    cut = cutter.result()
    assert cut is not None and (cut.count, cut.meta_id_end) == (3, 3)
    assert cut.weight == pytest.approx(1.2) and isinstance(cut.weight, float)
    numeric = RangeCutter(after=None, end=None, limits=Limits(max_weight=Decimal("1.5")))
    numeric.request()
    numeric.feed(PageSummary(2, 1, Decimal("0.4"), 2, Decimal("0.8"), 2, 2, Decimal("0.8")))
    assert numeric.request() is None  # fewer rows than asked for: the source is done
    assert numeric.result() == PlannedRange(1, 2, 2, Decimal("0.8"))


def test_weights_are_shown_as_integers_when_whole() -> None:
    assert as_weight(Decimal("5500.0000000000")) == 5500
    assert type(as_weight(Decimal("5500.0000000000"))) is int
    assert as_weight(2.0) == 2 and type(as_weight(2.0)) is int
    assert as_weight(Decimal("1.2000000000")) == Decimal("1.2")
    assert as_weight(None) == 0
    with pytest.raises(TypeError):
        as_weight("12")


def test_invalid_limits_are_configuration_errors_and_value_errors() -> None:
    with pytest.raises(pbi.ConfigurationError):
        validate_limits(0, None)
    with pytest.raises(ValueError):
        validate_limits(None, -5)


@pytest.mark.parametrize(
    ("max_count", "max_weight", "has_weight"),
    [
        (None, None, None),
        (None, None, False),
        (1, None, False),
        (10**12, None, None),
        (None, 1, True),
        (None, 10**18, None),
        (5, 7, True),
    ],
)
def test_validate_limits_accepts_positive_integers(
    max_count: int | None, max_weight: int | None, has_weight: bool | None
) -> None:
    assert validate_limits(max_count, max_weight, has_weight=has_weight) == Limits(
        max_count=max_count, max_weight=max_weight
    )


def test_max_weight_without_a_weight_column_names_the_weight_column() -> None:
    with pytest.raises(pbi.InvalidArgument) as info:
        validate_limits(None, 100, has_weight=False)
    message = str(info.value)
    assert "max_weight" in message
    assert "weight column" in message
    assert "weight=" in message  # tells how to declare one


def test_max_count_alone_is_fine_without_a_weight_column() -> None:
    assert validate_limits(3, None, has_weight=False) == Limits(max_count=3)


# -- validate_window --------------------------------------------------------------------------


def test_validate_window_rejects_start_after_end() -> None:
    with pytest.raises(pbi.InvalidArgument) as info:
        validate_window(11, 10)
    assert "11" in str(info.value) and "10" in str(info.value)


@pytest.mark.parametrize(
    ("id_start", "id_end"),
    [(None, None), (1, None), (None, 1), (5, 5), (-10, 10), (0, 2**62)],
)
def test_validate_window_accepts(id_start: int | None, id_end: int | None) -> None:
    assert validate_window(id_start, id_end) == (id_start, id_end)


@pytest.mark.parametrize(
    ("id_start", "id_end"),
    [("1", None), (None, 2.0), (True, None), (None, False), (1.5, 3)],
    ids=repr,
)
def test_validate_window_rejects_non_integers(id_start: object, id_end: object) -> None:
    with pytest.raises(pbi.InvalidArgument):
        validate_window(id_start, id_end)


# -- backoff_delay ----------------------------------------------------------------------------


class MidpointRandom(random.Random):
    """Jitter factor exactly 1.0: shows the undisturbed base delay."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


@pytest.mark.parametrize("failures", [0, 1, 2, 5, 30])
def test_no_backoff_with_retry_delay_zero(failures: int) -> None:
    assert backoff_delay(0, failures) == 0.0
    assert backoff_delay(0.0, failures, rng=random.Random(1)) == 0.0


def test_no_backoff_before_any_failure() -> None:
    assert backoff_delay(5.0, 0) == 0.0


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 10])
def test_backoff_doubles_with_each_failure(failures: int) -> None:
    assert backoff_delay(1.5, failures, rng=MidpointRandom()) == pytest.approx(
        1.5 * 2 ** (failures - 1)
    )


def test_backoff_grows() -> None:
    delays = [backoff_delay(2.0, f, rng=MidpointRandom()) for f in range(1, 8)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]


@settings(max_examples=300, deadline=None, database=None)
@given(
    retry_delay=st.floats(min_value=0.001, max_value=3600, allow_nan=False),
    failures=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_jitter_stays_within_a_quarter(
    retry_delay: float, failures: int, seed: int
) -> None:
    base = retry_delay * 2 ** (failures - 1)
    delay = backoff_delay(retry_delay, failures, rng=random.Random(seed))
    assert base * 0.75 <= delay <= base * 1.25


def test_backoff_jitter_is_actually_random() -> None:
    rng = random.Random(7)
    delays = {backoff_delay(10.0, 3, rng=rng) for _ in range(50)}
    assert len(delays) > 1
    assert all(30.0 <= d <= 50.0 for d in delays)


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    a = [backoff_delay(1.0, f, rng=random.Random(42)) for f in range(1, 6)]
    b = [backoff_delay(1.0, f, rng=random.Random(42)) for f in range(1, 6)]
    assert a == b
    one, two = random.Random(3), random.Random(3)
    assert [backoff_delay(0.5, 2, rng=one) for _ in range(10)] == [
        backoff_delay(0.5, 2, rng=two) for _ in range(10)
    ]


def test_backoff_returns_a_float() -> None:
    assert isinstance(backoff_delay(1, 1, rng=random.Random(0)), float)
    assert isinstance(backoff_delay(0, 1), float)


# -- RangeCutter, by example ------------------------------------------------------------------


def page(rows: list[tuple[int, int]], max_weight: int | None = None) -> PageSummary:
    """A page summary of ``rows`` (already limited), as the source would compute it."""
    if not rows:
        return PageSummary(0, None, 0, None, 0, 0, None, 0)
    total = sum(w for _, w in rows)
    if max_weight is None:
        return PageSummary(
            len(rows), rows[0][0], 0, rows[-1][0], total, len(rows), rows[-1][0], total
        )
    fit, running = 0, 0
    for _, w in rows:
        if running + w > max_weight:
            break
        running += w
        fit += 1
    return PageSummary(
        rows=len(rows),
        first_id=rows[0][0],
        first_weight=rows[0][1],
        last_id=rows[-1][0],
        weight=total,
        fit_rows=fit,
        fit_last_id=rows[fit - 1][0] if fit else None,
        fit_weight=running,
    )


def run(
    cutter: RangeCutter, rows: list[tuple[int, int]]
) -> tuple[PlannedRange | None, list[PageRequest]]:
    requests: list[PageRequest] = []
    while (request := cutter.request()) is not None:
        requests.append(request)
        assert len(requests) < 1000
        chosen = [
            r
            for r in rows
            if (request.after is None or r[0] > request.after)
            and (request.end is None or r[0] <= request.end)
        ]
        if request.limit is not None:
            chosen = chosen[: request.limit]
        cap = request.max_weight
        cutter.feed(page(chosen, None if cap is None else int(cap)))
    return cutter.result(), requests


def test_max_count_only_is_one_exact_page() -> None:
    rows = [(i, 1) for i in range(1, 101)]
    cut, requests = run(RangeCutter(after=None, end=None, limits=Limits(max_count=10)), rows)
    assert requests == [PageRequest(after=None, end=None, limit=10, max_weight=None)]
    assert cut == PlannedRange(1, 10, 10, 10)


def test_no_caps_take_everything_in_one_page() -> None:
    rows = [(i, i) for i in range(5, 50, 3)]
    cut, requests = run(RangeCutter(after=None, end=None, limits=Limits()), rows)
    assert requests == [PageRequest(after=None, end=None, limit=None, max_weight=None)]
    assert cut == PlannedRange(5, 47, len(rows), sum(w for _, w in rows))


def test_a_range_after_a_cursor_starts_right_after_it() -> None:
    rows = [(10, 1), (20, 1), (30, 1)]
    cut, _ = run(RangeCutter(after=12, end=None, limits=Limits(max_count=1)), rows)
    assert cut == PlannedRange(13, 20, 1, 1)


def test_the_first_range_without_a_cursor_starts_at_the_first_row() -> None:
    rows = [(10, 1), (20, 1), (30, 1)]
    cut, _ = run(RangeCutter(after=None, end=None, limits=Limits(max_count=2)), rows)
    assert cut == PlannedRange(10, 20, 2, 2)


def test_nothing_after_the_cursor_gives_no_range() -> None:
    rows = [(1, 1), (2, 1)]
    cut, _ = run(RangeCutter(after=2, end=None, limits=Limits(max_weight=5)), rows)
    assert cut is None


def test_an_empty_source_gives_no_range() -> None:
    for limits in (Limits(), Limits(max_count=3), Limits(max_weight=3), Limits(3, 3)):
        cut, _ = run(RangeCutter(after=None, end=None, limits=limits), [])
        assert cut is None


def test_a_cursor_at_the_window_end_asks_nothing() -> None:
    cutter = RangeCutter(after=50, end=50, limits=Limits(max_count=5))
    assert cutter.request() is None
    assert cutter.result() is None


def test_the_window_end_bounds_the_range() -> None:
    rows = [(i, 1) for i in range(1, 101)]
    cut, requests = run(RangeCutter(after=None, end=40, limits=Limits(max_weight=1000)), rows)
    assert cut == PlannedRange(1, 40, 40, 40)
    assert all(r.end == 40 for r in requests)


def test_a_row_heavier_than_the_cap_goes_out_alone_and_flagged() -> None:
    rows = [(1, 500), (2, 1), (3, 1)]
    cut, _ = run(RangeCutter(after=None, end=None, limits=Limits(max_weight=100)), rows)
    assert cut == PlannedRange(1, 1, 1, 500, oversized=True)


def test_a_heavy_row_ends_the_range_before_it() -> None:
    rows = [(1, 10), (2, 10), (3, 500), (4, 1)]
    cut, _ = run(RangeCutter(after=None, end=None, limits=Limits(max_weight=100)), rows)
    assert cut == PlannedRange(1, 2, 2, 20)


def test_zero_weight_rows_after_a_full_cap_join_the_range() -> None:
    rows = [(1, 50), (2, 50), (3, 0), (4, 0), (5, 1)]
    cut, _ = run(RangeCutter(after=None, end=None, limits=Limits(max_weight=100)), rows)
    assert cut == PlannedRange(1, 4, 4, 100)


def test_the_first_cap_hit_ends_the_range() -> None:
    rows = [(i, 10) for i in range(1, 101)]
    by_count, _ = run(RangeCutter(after=None, end=None, limits=Limits(3, 1000)), rows)
    assert by_count == PlannedRange(1, 3, 3, 30)
    by_weight, _ = run(RangeCutter(after=None, end=None, limits=Limits(30, 45)), rows)
    assert by_weight == PlannedRange(1, 4, 4, 40)


def test_first_weighted_page_is_small_and_sized_by_the_hint() -> None:
    limits = Limits(max_weight=10**9)
    plain = RangeCutter(after=None, end=None, limits=limits).request()
    assert plain is not None and plain.limit is not None and plain.limit <= 256
    hinted = RangeCutter(after=None, end=None, limits=limits, hint=20).request()
    assert hinted is not None and hinted.limit is not None and 20 <= hinted.limit <= 64


def test_weighted_pages_never_exceed_max_page_or_max_count() -> None:
    rows = [(i, 0) for i in range(1, 200_001)]
    cut, requests = run(RangeCutter(after=None, end=None, limits=Limits(max_weight=5)), rows)
    assert cut == PlannedRange(1, 200_000, 200_000, 0)
    assert all(r.limit is not None and r.limit <= MAX_PAGE for r in requests)
    cut, requests = run(RangeCutter(after=None, end=None, limits=Limits(7, 5)), rows)
    assert cut == PlannedRange(1, 7, 7, 0)
    assert all(r.limit is not None and r.limit <= 7 for r in requests)


def test_statement_page_sizes_are_few_and_never_smaller_than_asked() -> None:
    sizes = {statement_page_size(n, None) for n in range(1, MAX_PAGE + 1)}
    assert len(sizes) < 70  # ~19 % steps: a weight cap's drifting first page reuses a plan
    assert {statement_page_size(n, None) for n in range(1, 33)} == {32}
    for n in (33, 100, 1008, 1009, 49_999, MAX_PAGE):
        size = statement_page_size(n, None)
        assert n <= size <= math.ceil(n * 1.19), (n, size)
    assert statement_page_size(7, 5) == 5
    assert statement_page_size(1008, 1000) == 1000  # never past the count cap
    assert statement_page_size(MAX_PAGE + 5, None) == MAX_PAGE
    # At most two sizes for a drift of 5 % around a batch of ~1000.
    assert len({statement_page_size(n, None) for n in range(950, 1050)}) <= 2
