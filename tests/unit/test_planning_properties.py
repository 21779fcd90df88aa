"""Property tests of the range planner against an in-memory metadata source (no database).

The simulated source answers ``PageRequest``s exactly as the SQL page query of
``BoundMetaTable.summarize`` does: filter first, then ``id > after``, ``id <= end``, id order,
``LIMIT``; then count / min id / first weight / max id / sum, and with a weight cap a running
sum that says how many leading rows fit.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybatchintory._planning import MAX_PAGE, RangeCutter
from pybatchintory.models import Limits, PlannedRange
from pybatchintory.protocols import PageRequest, PageSummary

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep the example database out of the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Rows a planner may read per range on top of ``4 * count``: one probe page of 256 rows (or
#: the hint + 8 when that is bigger) plus a little slack.
FIRST_PAGE = 256
SLACK = 16

#: A cutter that asks for more pages than this for one range is not converging.
MAX_REQUESTS_PER_CUT = 10_000

EMPTY_PAGE = PageSummary(
    rows=0,
    first_id=None,
    first_weight=0,
    last_id=None,
    weight=0,
    fit_rows=0,
    fit_last_id=None,
    fit_weight=0,
)


# -- the simulated source -------------------------------------------------------------------


def naive_summarize(rows: list[tuple[int, int]], request: PageRequest) -> PageSummary:
    """The SQL page query, written out literally over the (already filtered) rows."""
    page = [
        (i, w)
        for i, w in rows
        if (request.after is None or i > request.after)
        and (request.end is None or i <= request.end)
    ]
    if request.limit is not None:
        page = page[: request.limit]
    if not page:
        return EMPTY_PAGE
    total = sum(w for _, w in page)
    if request.max_weight is None:
        # Unweighted shape: first_weight is a literal 0, every row "fits".
        return PageSummary(
            rows=len(page),
            first_id=page[0][0],
            first_weight=0,
            last_id=page[-1][0],
            weight=total,
            fit_rows=len(page),
            fit_last_id=page[-1][0],
            fit_weight=total,
        )
    running = list(accumulate(w for _, w in page))
    fits = [(i, cw) for (i, _), cw in zip(page, running, strict=True) if cw <= request.max_weight]
    return PageSummary(
        rows=len(page),
        first_id=page[0][0],
        first_weight=min(running),
        last_id=page[-1][0],
        weight=total,
        fit_rows=len(fits),
        fit_last_id=max((i for i, _ in fits), default=None),
        fit_weight=max((cw for _, cw in fits), default=0),
    )


@dataclass
class SimSource:
    """Filtered rows of a metadata table, answering page requests in O(log n)."""

    rows: list[tuple[int, int]]
    ids: list[int] = field(init=False)
    weights: list[int] = field(init=False)
    prefix: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [i for i, _ in self.rows]
        self.weights = [w for _, w in self.rows]
        self.prefix = [0, *accumulate(self.weights)]
        assert self.ids == sorted(set(self.ids)), "ids must be unique and increasing"
        assert all(w >= 0 for w in self.weights)

    def summarize(self, request: PageRequest) -> PageSummary:
        assert request.limit is None or request.limit >= 1, f"bad page limit: {request}"
        assert request.max_weight is None or request.max_weight >= 0, f"bad cap: {request}"
        ids, prefix = self.ids, self.prefix
        lo = 0 if request.after is None else bisect_right(ids, request.after)
        hi = len(ids) if request.end is None else bisect_right(ids, request.end)
        if request.limit is not None:
            hi = min(hi, lo + request.limit)
        if hi <= lo:
            return EMPTY_PAGE
        rows = hi - lo
        total = prefix[hi] - prefix[lo]
        if request.max_weight is None:
            return PageSummary(
                rows=rows,
                first_id=ids[lo],
                first_weight=0,
                last_id=ids[hi - 1],
                weight=total,
                fit_rows=rows,
                fit_last_id=ids[hi - 1],
                fit_weight=total,
            )
        # Running sum of row j (lo <= j < hi) is prefix[j + 1] - prefix[lo]; weights are
        # non-negative, so the rows that fit are a prefix of the page.
        fit = bisect_right(prefix, prefix[lo] + request.max_weight, lo + 1, hi + 1) - (lo + 1)
        return PageSummary(
            rows=rows,
            first_id=ids[lo],
            first_weight=self.weights[lo],
            last_id=ids[hi - 1],
            weight=total,
            fit_rows=fit,
            fit_last_id=ids[lo + fit - 1] if fit else None,
            fit_weight=prefix[lo + fit] - prefix[lo],
        )


# -- driving the planner as the library does --------------------------------------------------


@dataclass
class Cut:
    range: PlannedRange
    after: int | None
    hint: int | None
    requests: list[PageRequest]
    pages: list[PageSummary]

    @property
    def rows_read(self) -> int:
        return sum(page.rows for page in self.pages)


def plan_all(
    source: SimSource,
    id_start: int | None,
    id_end: int | None,
    limits: Limits,
    *,
    use_hint: bool = False,
    first_hint: int | None = None,
    max_cuts: int | None = None,
) -> list[Cut]:
    """Cut ranges until the planner finds nothing, like ``Inventory.plan`` and acquire."""
    cursor = None if id_start is None else id_start - 1
    hint = first_hint
    cuts: list[Cut] = []
    while max_cuts is None or len(cuts) < max_cuts:
        cutter = RangeCutter(after=cursor, end=id_end, limits=limits, hint=hint)
        requests: list[PageRequest] = []
        pages: list[PageSummary] = []
        for _ in range(MAX_REQUESTS_PER_CUT):
            request = cutter.request()
            if request is None:
                break
            page = source.summarize(request)
            requests.append(request)
            pages.append(page)
            cutter.feed(page)
        else:
            raise AssertionError(f"cutter after {cursor} asked for {MAX_REQUESTS_PER_CUT} pages")
        cut = cutter.result()
        if cut is None:
            return cuts
        cuts.append(Cut(cut, cursor, hint, requests, pages))
        assert len(cuts) <= len(source.rows) + 1, "more ranges than rows: no progress"
        if use_hint and not cut.oversized:
            hint = cut.count  # what Inventory remembers per job
        cursor = cut.meta_id_end
    return cuts


# -- strategies -------------------------------------------------------------------------------

WEIGHT_KINDS = ("zero", "const", "small", "mixed", "spiky", "heavy")


def _weight(rng: random.Random, kind: str, param: int) -> int:
    if kind == "zero":
        return 0
    if kind == "const":
        return param
    if kind == "small":
        return rng.randint(0, 3)
    if kind == "mixed":
        return rng.choice((0, 0, rng.randint(1, 100), rng.randint(1, 1000)))
    if kind == "spiky":  # mostly light, now and then far heavier than any cap
        return rng.randint(10_000, 20_000) if rng.random() < 0.05 else rng.randint(0, 5)
    return rng.randint(param * 50, param * 50 + 3000)  # heavy


@dataclass
class Scenario:
    all_rows: list[tuple[int, int]]
    rows: list[tuple[int, int]]  # after the filter
    id_start: int | None
    id_end: int | None
    limits: Limits
    recipe: str = ""

    def __repr__(self) -> str:
        # Compact and reproducible: scenarios(...) rebuilds the rows from the recipe.
        return (
            f"Scenario({self.recipe}, rows={len(self.all_rows)}, filtered={len(self.rows)}, "
            f"id_start={self.id_start}, id_end={self.id_end}, limits={self.limits})"
        )

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # hypothesis' printer
        printer.text(repr(self))  # type: ignore[attr-defined]

    def in_window(self) -> list[tuple[int, int]]:
        return [
            (i, w)
            for i, w in self.rows
            if (self.id_start is None or i >= self.id_start)
            and (self.id_end is None or i <= self.id_end)
        ]


@st.composite
def scenarios(draw: st.DrawFn, *, max_block: int = 300, max_blocks: int = 5) -> Scenario:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    blocks = draw(
        st.lists(
            st.tuples(
                st.integers(1, max_block),
                st.sampled_from(WEIGHT_KINDS),
                st.integers(0, 60),
                st.integers(1, 6),  # largest gap between ids in the block
            ),
            max_size=max_blocks,
        )
    )
    first_id = next_id = draw(st.integers(-20, 1000))
    all_rows: list[tuple[int, int]] = []
    for length, kind, param, max_gap in blocks:
        for _ in range(length):
            all_rows.append((next_id, _weight(rng, kind, param)))
            next_id += rng.randint(1, max_gap)

    keep = draw(st.sampled_from((1.0, 1.0, 0.8, 0.3, 0.02)))
    rows = [row for row in all_rows if keep == 1.0 or rng.random() < keep]

    low = all_rows[0][0] - 3 if all_rows else -5
    high = all_rows[-1][0] + 3 if all_rows else 5
    bound = st.none() | st.integers(low, high)
    id_start, id_end = draw(bound), draw(bound)
    if id_start is not None and id_end is not None and id_start > id_end:
        id_start, id_end = id_end, id_start

    mode = draw(st.sampled_from(("count", "weight", "both", "none")))
    count_cap = st.one_of(st.integers(1, 5), st.integers(1, 600))
    weight_cap = st.one_of(st.integers(1, 20), st.integers(1, 5000))
    limits = Limits(
        max_count=draw(count_cap) if mode in ("count", "both") else None,
        max_weight=draw(weight_cap) if mode in ("weight", "both") else None,
    )
    recipe = f"seed={seed}, first_id={first_id}, blocks={blocks}, keep={keep}"
    return Scenario(all_rows, rows, id_start, id_end, limits, recipe)


# -- the properties ---------------------------------------------------------------------------


def check_ranges(scenario: Scenario, cuts: list[Cut]) -> None:
    """Disjoint, consecutive, covering, exact counts, caps respected, greedy cuts."""
    wanted = scenario.in_window()
    limits = scenario.limits
    ranges = [cut.range for cut in cuts]

    if not wanted:
        assert ranges == []
        return
    assert ranges, "rows in the window but nothing planned"

    # The first range starts at the window start, or at the first row without one.
    expected_first = scenario.id_start if scenario.id_start is not None else wanted[0][0]
    assert ranges[0].meta_id_start == expected_first

    # Consecutive, disjoint, chronological; never past the window.
    for prev, nxt in pairwise(ranges):
        assert nxt.meta_id_start == prev.meta_id_end + 1, (prev, nxt)
    for r in ranges:
        assert r.meta_id_start <= r.meta_id_end
        if scenario.id_end is not None:
            assert r.meta_id_end <= scenario.id_end

    # Every filtered row of the window lands in exactly one range, and nothing else does.
    ids = [i for i, _ in scenario.rows]
    covered: list[tuple[int, int]] = []
    for r in ranges:
        inside = scenario.rows[bisect_left(ids, r.meta_id_start) : bisect_right(ids, r.meta_id_end)]
        assert inside, f"empty range {r}"
        assert inside[-1][0] == r.meta_id_end, "a range ends on a row of the source"
        assert r.count == len(inside), (r, inside)
        assert r.weight == sum(w for _, w in inside), (r, inside)
        covered.extend(inside)
    assert covered == wanted

    # Caps, exactly, with greedy cuts.
    following: dict[int, tuple[int, int] | None] = {r.meta_id_end: None for r in ranges}
    for k, (i, _) in enumerate(wanted):
        if i in following and k + 1 < len(wanted):
            following[i] = wanted[k + 1]
    for r in ranges:
        if r.oversized:
            assert limits.max_weight is not None, "oversized without a weight cap"
            assert r.count == 1 and r.weight > limits.max_weight, r
            continue
        if limits.max_count is not None:
            assert r.count <= limits.max_count, r
        if limits.max_weight is not None:
            assert r.weight <= limits.max_weight, r
        next_row = following[r.meta_id_end]
        if next_row is not None:
            breaks_count = limits.max_count is not None and r.count + 1 > limits.max_count
            breaks_weight = (
                limits.max_weight is not None and r.weight + next_row[1] > limits.max_weight
            )
            assert breaks_count or breaks_weight, f"{r} stopped before {next_row}, which fits"
    if limits.max_count is None and limits.max_weight is None:
        assert len(ranges) == 1


def check_requests(scenario: Scenario, cuts: list[Cut]) -> None:
    """Every page asked for stays after the cursor, inside the window, with a sane size."""
    limits = scenario.limits
    for cut in cuts:
        for request in cut.requests:
            assert request.end == scenario.id_end
            if cut.after is not None:
                assert request.after is not None and request.after >= cut.after
            if limits.max_weight is None:
                assert request.max_weight is None
                assert request.limit == limits.max_count
            else:
                assert request.max_weight is not None
                assert 0 <= request.max_weight <= limits.max_weight
                assert request.limit is not None and 1 <= request.limit <= MAX_PAGE
                if limits.max_count is not None:
                    assert request.limit <= limits.max_count


def page_allowance(hint: int | None) -> int:
    """Rows a range may cost on top of ``4 * count``: one probe page.

    That is the first page (the hint + 8, or 256 rows without a hint), and at least the
    256-row probe, since a later page may be that big however small the hint was.
    """
    return max(FIRST_PAGE, hint + 8 if hint else FIRST_PAGE) + SLACK


def check_rows_read(scenario: Scenario, cuts: list[Cut]) -> None:
    """Planning a range reads about as many rows as the range holds, never the backlog.

    Pages that fit entirely are part of the range; only the page where a cap is hit may
    read rows the range does not take. A planner whose page sizes grow with what it has
    already taken reads at most a few times the batch plus one probe page.
    """
    limits = scenario.limits
    for cut in cuts:
        r = cut.range
        if limits.max_weight is None:
            # One exact page: LIMIT max_count (or everything when uncapped).
            assert len(cut.requests) == 1, cut.requests
            assert cut.rows_read == r.count
            continue
        bound = 4 * r.count + page_allowance(cut.hint)
        assert cut.rows_read <= bound, (
            f"planning {r} (hint {cut.hint}) read {cut.rows_read} rows in "
            f"{len(cut.pages)} pages (limits {[q.limit for q in cut.requests]}, "
            f"rows {[p.rows for p in cut.pages]}, fit {[p.fit_rows for p in cut.pages]}); "
            f"bound {bound}"
        )


@PROPERTY_SETTINGS
@given(scenarios())
def test_ranges_partition_the_window_greedily(scenario: Scenario) -> None:
    cuts = plan_all(SimSource(scenario.rows), scenario.id_start, scenario.id_end, scenario.limits)
    check_ranges(scenario, cuts)
    check_requests(scenario, cuts)


@PROPERTY_SETTINGS
@given(scenarios())
def test_ranges_partition_the_window_with_hints(scenario: Scenario) -> None:
    """The previous batch's count as hint (as Inventory passes it) changes no range."""
    source = SimSource(scenario.rows)
    cuts = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits, use_hint=True)
    check_ranges(scenario, cuts)
    check_requests(scenario, cuts)
    plain = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits)
    assert [c.range for c in cuts] == [c.range for c in plain]


@PROPERTY_SETTINGS
@given(scenarios(), st.integers(1, 2000))
def test_any_hint_gives_the_same_ranges(scenario: Scenario, hint: int) -> None:
    """A hint only sizes the first page: a wrong one never changes what is cut."""
    source = SimSource(scenario.rows)
    hinted = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits, first_hint=hint)
    plain = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits)
    assert [c.range for c in hinted] == [c.range for c in plain]


@PROPERTY_SETTINGS
@given(scenarios())
def test_planning_reads_rows_in_proportion_to_the_batch(scenario: Scenario) -> None:
    cuts = plan_all(SimSource(scenario.rows), scenario.id_start, scenario.id_end, scenario.limits)
    check_rows_read(scenario, cuts)


@PROPERTY_SETTINGS
@given(scenarios())
def test_planning_reads_rows_in_proportion_to_the_batch_with_hints(scenario: Scenario) -> None:
    source = SimSource(scenario.rows)
    cuts = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits, use_hint=True)
    check_rows_read(scenario, cuts)


@PROPERTY_SETTINGS
@given(scenarios(), st.integers(1, 1000))
def test_planning_reads_rows_in_proportion_to_the_batch_with_a_small_first_page(
    scenario: Scenario, hint: int
) -> None:
    source = SimSource(scenario.rows)
    cuts = plan_all(source, scenario.id_start, scenario.id_end, scenario.limits, first_hint=hint)
    check_rows_read(scenario, cuts)


@st.composite
def shifting_backlogs(draw: st.DrawFn) -> tuple[list[tuple[int, int]], Limits, int | None]:
    """Long runs of rows whose weight profile changes sharply from one run to the next.

    Weights follow a cheap deterministic pattern per run (base + a spread), so tens of
    thousands of rows cost little to build.
    """
    runs = draw(
        st.lists(
            st.tuples(
                st.integers(1, 20_000),  # rows in the run
                st.sampled_from((0, 1, 3, 10, 100, 1000, 10**4, 10**6)),  # base weight
                st.sampled_from((0, 1, 5, 100)),  # spread, in percent of base (+1)
            ),
            min_size=1,
            max_size=4,
        )
    )
    rows: list[tuple[int, int]] = []
    next_id = 1
    for length, base, spread in runs:
        span = base * spread // 100 + 1
        rows.extend((next_id + k, base + (k * 7919) % span) for k in range(length))
        next_id += length
    max_weight = draw(st.sampled_from((1, 10, 1000, 10**5, 10**6, 10**8)))
    max_count = draw(st.none() | st.integers(1, 100_000))
    hint = draw(st.none() | st.integers(1, 1000))
    return rows, Limits(max_count=max_count, max_weight=max_weight), hint


def check_leading_ranges(rows: list[tuple[int, int]], limits: Limits, cuts: list[Cut]) -> None:
    """The first ranges of a source: consecutive, exact, within the caps, greedy."""
    ids = [i for i, _ in rows]
    expected_start = rows[0][0] if rows else None
    for cut in cuts:
        r = cut.range
        assert r.meta_id_start == expected_start, (r, expected_start)
        lo, hi = bisect_left(ids, r.meta_id_start), bisect_right(ids, r.meta_id_end)
        inside = rows[lo:hi]
        assert inside and inside[-1][0] == r.meta_id_end
        assert (r.count, r.weight) == (len(inside), sum(w for _, w in inside)), r
        following = rows[hi] if hi < len(rows) else None
        if r.oversized:
            assert limits.max_weight is not None
            assert r.count == 1 and r.weight > limits.max_weight, r
        else:
            assert limits.max_count is None or r.count <= limits.max_count, r
            assert limits.max_weight is None or r.weight <= limits.max_weight, r
            if following is not None:
                assert (limits.max_count is not None and r.count + 1 > limits.max_count) or (
                    limits.max_weight is not None and r.weight + following[1] > limits.max_weight
                ), f"{r} stopped before {following}, which fits"
        expected_start = r.meta_id_end + 1


@PROPERTY_SETTINGS
@given(shifting_backlogs())
def test_planning_reads_in_proportion_on_long_shifting_backlogs(
    backlog: tuple[list[tuple[int, int]], Limits, int | None],
) -> None:
    """Whatever lies beyond, each of the first ranges costs about as many rows as it holds."""
    rows, limits, hint = backlog
    cuts = plan_all(SimSource(rows), None, None, limits, first_hint=hint, max_cuts=4)
    check_leading_ranges(rows, limits, cuts)
    check_rows_read(Scenario(rows, rows, None, None, limits), cuts)


@PROPERTY_SETTINGS
@given(
    scenarios(max_block=40),
    st.none() | st.integers(-30, 1300),
    st.none() | st.integers(-30, 1300),
    st.none() | st.integers(1, 60),
    st.none() | st.integers(0, 3000),
)
def test_simulated_source_matches_the_literal_query(
    scenario: Scenario,
    after: int | None,
    end: int | None,
    limit: int | None,
    max_weight: int | None,
) -> None:
    """The fast simulation answers exactly what the SQL page query would."""
    request = PageRequest(after=after, end=end, limit=limit, max_weight=max_weight)
    assert SimSource(scenario.rows).summarize(request) == naive_summarize(scenario.rows, request)


@PROPERTY_SETTINGS
@given(scenarios(max_block=60), st.integers(1, 5000))
def test_a_lone_row_heavier_than_the_cap_is_oversized(scenario: Scenario, cap: int) -> None:
    """Exactly the rows heavier than ``max_weight`` go out alone, flagged ``oversized``."""
    limits = Limits(max_count=scenario.limits.max_count, max_weight=cap)
    cuts = plan_all(SimSource(scenario.rows), scenario.id_start, scenario.id_end, limits)
    heavy = {i for i, w in scenario.in_window() if w > cap}
    oversized = {c.range.meta_id_end for c in cuts if c.range.oversized}
    assert oversized == heavy
    check_ranges(
        Scenario(scenario.all_rows, scenario.rows, scenario.id_start, scenario.id_end, limits),
        cuts,
    )


# -- worked examples of the read bound --------------------------------------------------------


def test_a_light_run_then_heavy_rows_does_not_read_the_backlog() -> None:
    """300 zero-weight rows, then a long backlog of heavy ones (a new, bigger file type).

    The first page (256 rows) all fits with weight 0; the next page must still be sized by
    the batch, not jump to MAX_PAGE rows of which one fits.
    """
    rows = [(i, 0) for i in range(1, 301)] + [(i, 1000) for i in range(301, 60_301)]
    cuts = plan_all(SimSource(rows), None, None, Limits(max_weight=1000), max_cuts=1)
    first = cuts[0]
    assert first.range.count == 301 and first.range.weight == 1000
    assert first.rows_read <= 4 * first.range.count + FIRST_PAGE + SLACK, (
        f"read {first.rows_read} rows in pages of {[q.limit for q in first.requests]} "
        f"to cut a range of {first.range.count}"
    )


def test_light_rows_then_a_heavier_kind_does_not_read_the_backlog() -> None:
    """256 rows of weight 1 then rows of weight 10**6: the estimate must not trust one page."""
    rows = [(i, 1) for i in range(1, 257)] + [(i, 10**6) for i in range(257, 60_257)]
    cuts = plan_all(SimSource(rows), None, None, Limits(max_weight=10**6), max_cuts=1)
    first = cuts[0]
    assert first.range.count == 256
    assert first.rows_read <= 4 * first.range.count + FIRST_PAGE + SLACK, (
        f"read {first.rows_read} rows in pages of {[q.limit for q in first.requests]} "
        f"to cut a range of {first.range.count}"
    )
