"""Property tests of the delay strategies in `resilience.backoff`."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience import backoff
from resilience.testing import FakeClock


def always_down() -> None:
    raise ConnectionError("down")


RETRIES = 200
JITTERS = [None, "full", "equal"]

# derandomize: every run draws the same examples, so the suite is deterministic
fast = settings(max_examples=50, deadline=None, derandomize=True)

# -- hypothesis strategies for valid parameters ------------------------------

amounts = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
positives = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
maximums = st.one_of(amounts, st.just(math.inf))
finite_maximums = amounts
jitters = st.sampled_from(JITTERS)
seeds = st.integers(min_value=0, max_value=2**64)  # Random(-n) == Random(n): keep them >= 0


@st.composite
def capped_params(draw: st.DrawFn, kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """A (strategy name, keyword arguments) pair for one of the jitter-capable strategies."""
    kind = kind or draw(st.sampled_from(["constant", "linear", "exponential", "fibonacci"]))
    kwargs: dict[str, Any] = {"jitter": draw(jitters), "seed": draw(seeds)}
    if kind == "constant":
        kwargs["delay"] = draw(amounts)
    elif kind == "linear":
        kwargs["initial"] = draw(amounts)
        kwargs["step"] = draw(st.one_of(st.none(), amounts))
        kwargs["maximum"] = draw(maximums)
    elif kind == "exponential":
        kwargs["initial"] = draw(amounts)
        kwargs["base"] = draw(st.floats(min_value=1.0, max_value=1e6))
        kwargs["maximum"] = draw(maximums)
    else:
        kwargs["initial"] = draw(st.floats(min_value=0.0, max_value=1e3))
        kwargs["maximum"] = draw(maximums)
    return kind, kwargs


@st.composite
def decorrelated_params(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for a valid `backoff.decorrelated`."""
    initial = draw(positives)
    maximum = draw(st.floats(min_value=initial, max_value=2e6))
    return {"initial": initial, "maximum": maximum, "seed": draw(seeds)}


def build(kind: str, kwargs: dict[str, Any]) -> backoff.Backoff:
    """Call the factory named ``kind`` with ``kwargs``."""
    factory: Callable[..., backoff.Backoff] = getattr(backoff, kind)
    return factory(**kwargs)


def capped(exact: Fraction, maximum: float) -> float:
    """The exact delay ``exact`` capped at ``maximum``, as the float it rounds to."""
    if maximum != math.inf and exact >= Fraction(maximum):
        return maximum
    try:
        return float(exact)
    except OverflowError:
        return math.inf


def assert_close(actual: float, exact: Fraction, maximum: float) -> None:
    """``actual`` is ``exact`` capped at ``maximum``, up to float rounding."""
    expected = capped(exact, maximum)
    assert math.isclose(actual, expected, rel_tol=1e-9), (actual, expected)


def fib(n: int) -> int:
    """fib(1) = fib(2) = 1, fib(3) = 2, ..."""
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a


def assert_in_bounds(delays: list[float], maximum: float) -> None:
    """Each delay is a number in [0, maximum] that is finite or exactly the cap."""
    for delay in delays:
        assert not math.isnan(delay)
        assert 0.0 <= delay <= maximum
        assert math.isfinite(delay) or delay == maximum


def assert_non_decreasing(delays: list[float]) -> None:
    """No delay is smaller than the one before it."""
    assert all(a <= b for a, b in itertools.pairwise(delays)), delays


# -- bounds of every strategy ------------------------------------------------


@fast
@given(capped_params())
def test_capped_strategies_stay_within_zero_and_maximum(params: tuple[str, dict[str, Any]]) -> None:
    """Every capped strategy, with any jitter, gives delays in [0, maximum] for retries 1..200."""
    kind, kwargs = params
    strategy = build(kind, kwargs)
    assert_in_bounds(list(strategy.delays(RETRIES)), kwargs.get("maximum", math.inf))


@fast
@given(decorrelated_params())
def test_decorrelated_stays_within_initial_and_maximum(kwargs: dict[str, Any]) -> None:
    """Decorrelated delays lie in [initial, maximum] and never exceed 3 * max(previous, initial)."""
    strategy = backoff.decorrelated(**kwargs)
    initial, maximum = kwargs["initial"], kwargs["maximum"]
    previous = 0.0
    for retry in range(1, RETRIES + 1):
        delay = strategy.delay(retry, previous)
        assert initial <= delay <= maximum
        upper = 3.0 * max(previous, initial)
        # random.uniform(a, b) may land on b "depending on floating-point rounding"
        assert delay <= upper or math.isclose(delay, upper, rel_tol=1e-12)
        previous = delay
    assert_in_bounds(list(strategy.delays(RETRIES)), maximum)


# -- closed forms without jitter ---------------------------------------------


@fast
@given(
    initial=st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e3)),
    base=st.floats(min_value=1.0, max_value=1e6),
    maximum=finite_maximums,
)
def test_exponential_without_jitter_is_the_capped_closed_form(
    initial: float, base: float, maximum: float
) -> None:
    """exponential() gives min(initial * base ** (n - 1), maximum), non-decreasing."""
    strategy = backoff.exponential(initial, base=base, maximum=maximum)
    delays = list(strategy.delays(RETRIES))
    exact = Fraction(initial)
    for delay in delays:
        assert_close(delay, exact, maximum)
        exact *= Fraction(base)
    assert_non_decreasing(delays)
    assert_in_bounds(delays, maximum)


@fast
@given(
    initial=st.floats(min_value=1e-6, max_value=1e3), base=st.floats(min_value=1.0, max_value=10.0)
)
def test_uncapped_exponential_is_the_closed_form(initial: float, base: float) -> None:
    """exponential(maximum=inf) gives initial * base ** (n - 1) while it fits in a float."""
    delays = list(backoff.exponential(initial, base=base, maximum=math.inf).delays(RETRIES))
    for n, delay in enumerate(delays, start=1):
        assert_close(delay, Fraction(initial) * Fraction(base) ** (n - 1), math.inf)
    assert_non_decreasing(delays)


def test_uncapped_exponential_is_finite_while_the_product_fits() -> None:
    """exponential(2**-6, base=36, maximum=inf) before retry 200 is the finite 2**-6 * 36**199."""
    delay = backoff.exponential(0.015625, base=36.0, maximum=math.inf).delay(200, 0.0)
    # regression: at e4ed8b5 returned inf because base ** (retry - 1) alone overflowed
    assert math.isclose(delay, float(Fraction(1, 64) * 36**199), rel_tol=1e-9)


@fast
@given(base=st.floats(min_value=1.0, max_value=10.0), maximum=maximums)
def test_exponential_from_zero_stays_zero_without_overflow(base: float, maximum: float) -> None:
    """exponential(0) is 0 before every retry while base ** (n - 1) fits in a float."""
    strategy = backoff.exponential(0.0, base=base, maximum=maximum)
    assert list(strategy.delays(RETRIES)) == [0.0] * RETRIES


def test_exponential_from_zero_stays_zero_when_the_power_overflows() -> None:
    """exponential(0) is 0 even at retry numbers where base ** (n - 1) overflows a float."""
    # regression: at e4ed8b5 mapped the OverflowError of the power to inf, giving `maximum`
    assert backoff.exponential(0.0, base=2.0, maximum=10.0).delay(2000, 0.0) == 0.0
    assert backoff.exponential(0.0, base=50.0, maximum=3.0).delay(200, 0.0) == 0.0
    assert backoff.exponential(0.0, base=2.0, maximum=math.inf).delay(10**6, 0.0) == 0.0


@fast
@given(
    initial=amounts,
    step=st.one_of(st.none(), amounts),
    maximum=maximums,
)
def test_linear_without_jitter_is_the_capped_closed_form(
    initial: float, step: float | None, maximum: float
) -> None:
    """linear() gives min(initial + step * (n - 1), maximum), step defaulting to initial."""
    strategy = backoff.linear(initial, step, maximum=maximum)
    delays = list(strategy.delays(RETRIES))
    increment = Fraction(initial if step is None else step)
    for n, delay in enumerate(delays, start=1):
        assert_close(delay, Fraction(initial) + increment * (n - 1), maximum)
    assert_non_decreasing(delays)
    assert_in_bounds(delays, maximum)


@fast
@given(initial=st.floats(min_value=0.0, max_value=1e3), maximum=maximums)
def test_fibonacci_without_jitter_is_the_capped_closed_form(initial: float, maximum: float) -> None:
    """fibonacci() gives min(initial * fib(n), maximum) with fib = 1, 1, 2, 3, 5, ..."""
    strategy = backoff.fibonacci(initial, maximum=maximum)
    delays = list(strategy.delays(RETRIES))
    for n, delay in enumerate(delays, start=1):
        assert_close(delay, Fraction(initial) * fib(n), maximum)
    assert_non_decreasing(delays)
    assert_in_bounds(delays, maximum)


def test_fibonacci_multipliers_are_one_one_two_three_five() -> None:
    """fibonacci(1) starts 1, 1, 2, 3, 5, 8, 13 and stops at the cap."""
    assert list(backoff.fibonacci(1.0, maximum=10.0).delays(8)) == [1, 1, 2, 3, 5, 8, 10, 10]


def test_constant_without_jitter_is_constant() -> None:
    """constant(d) is d before every retry, however many."""
    assert list(backoff.constant(0.75).delays(RETRIES)) == [0.75] * RETRIES


# -- jitter ------------------------------------------------------------------


@fast
@given(capped_params(), st.sampled_from(["full", "equal"]))
def test_jitter_stays_in_its_range_of_the_capped_delay(
    params: tuple[str, dict[str, Any]], jitter: str
) -> None:
    """Full jitter lies in [0, d] and equal jitter in [d / 2, d], d the capped un-jittered delay."""
    kind, kwargs = params
    jittered = build(kind, {**kwargs, "jitter": jitter})
    plain = build(kind, {**kwargs, "jitter": None})
    for retry in range(1, RETRIES + 1):
        d = plain.delay(retry, 0.0)
        delay = jittered.delay(retry, 0.0)
        low = 0.0 if jitter == "full" else d / 2.0
        assert low <= delay <= d


def test_jitter_actually_varies() -> None:
    """A jittered constant is not the same number every time."""
    assert len(set(backoff.constant(1.0, jitter="full", seed=1).delays(20))) > 1
    assert len(set(backoff.constant(1.0, jitter="equal", seed=1).delays(20))) > 1


# -- seeds -------------------------------------------------------------------

SEEDED: list[tuple[str, dict[str, Any]]] = [
    ("constant", {"delay": 1.0, "jitter": "full"}),
    ("constant", {"delay": 1.0, "jitter": "equal"}),
    ("linear", {"initial": 0.5, "jitter": "full"}),
    ("linear", {"initial": 0.5, "jitter": "equal"}),
    ("exponential", {"initial": 0.1, "jitter": "full"}),
    ("exponential", {"initial": 0.1, "jitter": "equal"}),
    ("fibonacci", {"initial": 0.1, "jitter": "full"}),
    ("fibonacci", {"initial": 0.1, "jitter": "equal"}),
    ("decorrelated", {"initial": 0.1, "maximum": 100.0}),
]
SEEDED_IDS = [f"{kind}-{kw.get('jitter', 'decorrelated')}" for kind, kw in SEEDED]


@pytest.mark.parametrize(("kind", "kwargs"), SEEDED, ids=SEEDED_IDS)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=seeds)
def test_same_seed_gives_the_same_sequence(kind: str, kwargs: dict[str, Any], seed: int) -> None:
    """An int seed, or a random.Random seeded alike, fixes the whole sequence."""
    first = list(build(kind, {**kwargs, "seed": seed}).delays(50))
    assert list(build(kind, {**kwargs, "seed": seed}).delays(50)) == first
    assert list(build(kind, {**kwargs, "seed": random.Random(seed)}).delays(50)) == first


@pytest.mark.parametrize(("kind", "kwargs"), SEEDED, ids=SEEDED_IDS)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=seeds, other=seeds)
def test_different_seeds_give_different_sequences(
    kind: str, kwargs: dict[str, Any], seed: int, other: int
) -> None:
    """Two different int seeds give two different jittered sequences."""
    if seed == other:
        other += 1
    first = list(build(kind, {**kwargs, "seed": seed}).delays(50))
    assert list(build(kind, {**kwargs, "seed": other}).delays(50)) != first


def test_a_shared_random_instance_is_used_as_given() -> None:
    """A random.Random passed as seed is the generator itself, not a copy of it."""
    rng = random.Random(3)
    strategy = backoff.exponential(1.0, jitter="full", seed=rng)
    expected = random.Random(3)
    assert [strategy.delay(1, 0.0) for _ in range(5)] == [expected.random() for _ in range(5)]


# -- huge retry numbers --------------------------------------------------------

HUGE = 10**6
nan, inf = math.nan, math.inf

EVERY_DEFAULT: list[tuple[str, dict[str, Any]]] = [
    (kind, {"jitter": jitter, "seed": 1})
    for kind in ("constant", "linear", "exponential", "fibonacci")
    for jitter in JITTERS
] + [
    ("exponential", {"initial": 1e300, "base": 1e6, "maximum": 1e300}),
    ("exponential", {"initial": 1.0, "maximum": math.inf}),
    ("linear", {"initial": 1e300, "maximum": 5.0}),
    ("fibonacci", {"initial": 1e-300, "maximum": 5.0, "jitter": "equal", "seed": 1}),
    ("decorrelated", {"seed": 1}),
]


@pytest.mark.parametrize(
    ("kind", "kwargs"), EVERY_DEFAULT, ids=[f"{k}-{i}" for i, (k, _) in enumerate(EVERY_DEFAULT)]
)
def test_huge_retry_numbers_do_not_overflow(kind: str, kwargs: dict[str, Any]) -> None:
    """Retry number 10**6 gives a delay in [0, maximum] instead of raising OverflowError."""
    strategy = build(kind, kwargs)
    delays = [strategy.delay(HUGE, previous) for previous in (0.0, 1.0, 1e300)]
    assert_in_bounds(delays, strategy.maximum)


def test_huge_retry_numbers_reach_the_cap() -> None:
    """Far along, the growing strategies without jitter sit exactly at their cap."""
    assert backoff.exponential(0.1, maximum=7.0).delay(HUGE, 0.0) == 7.0
    assert backoff.fibonacci(0.1, maximum=7.0).delay(HUGE, 0.0) == 7.0
    assert backoff.linear(0.1, maximum=7.0).delay(HUGE, 0.0) == 7.0


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [(backoff.fibonacci(0.0, maximum=10.0), 0.0), (backoff.fibonacci(0.1, maximum=math.inf), inf)],
    ids=["initial-0", "maximum-inf"],
)
def test_fibonacci_huge_retry_numbers_do_not_overflow_at_the_edges(
    strategy: backoff.Backoff, expected: float
) -> None:
    """fibonacci with initial=0 or no cap gives 0 or inf past fib(1476) instead of raising."""
    # regression: at e4ed8b5 `initial * fib(n)` raised OverflowError converting the int to float
    for retry in (1500, 2000, HUGE):
        assert strategy.delay(retry, 0.0) == expected


# -- validation ------------------------------------------------------------------


INVALID: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("constant", {"delay": -1}, ValueError, "delay"),
    ("constant", {"delay": nan}, ValueError, "delay"),
    ("constant", {"delay": inf}, ValueError, "delay"),
    ("constant", {"delay": True}, TypeError, "delay"),
    ("constant", {"delay": "1"}, TypeError, "delay"),
    ("constant", {"jitter": "decorrelated"}, ValueError, "jitter"),
    ("constant", {"jitter": "bogus"}, ValueError, "jitter"),
    ("constant", {"seed": "1"}, TypeError, "seed"),
    ("linear", {"initial": -0.1}, ValueError, "initial"),
    ("linear", {"initial": nan}, ValueError, "initial"),
    ("linear", {"initial": inf}, ValueError, "initial"),
    ("linear", {"initial": False}, TypeError, "initial"),
    ("linear", {"step": -1}, ValueError, "step"),
    ("linear", {"step": nan}, ValueError, "step"),
    ("linear", {"step": "2"}, TypeError, "step"),
    ("linear", {"maximum": -1}, ValueError, "maximum"),
    ("linear", {"maximum": nan}, ValueError, "maximum"),
    ("linear", {"maximum": -inf}, ValueError, "maximum"),
    ("linear", {"jitter": "decorrelated"}, ValueError, "jitter"),
    ("linear", {"seed": 1.5}, TypeError, "seed"),
    ("exponential", {"initial": -1}, ValueError, "initial"),
    ("exponential", {"initial": inf}, ValueError, "initial"),
    ("exponential", {"initial": "0.1"}, TypeError, "initial"),
    ("exponential", {"base": 0.5}, ValueError, "base"),
    ("exponential", {"base": 0}, ValueError, "base"),
    ("exponential", {"base": nan}, ValueError, "base"),
    ("exponential", {"base": inf}, ValueError, "base"),
    ("exponential", {"base": True}, TypeError, "base"),
    ("exponential", {"maximum": -0.5}, ValueError, "maximum"),
    ("exponential", {"maximum": nan}, ValueError, "maximum"),
    ("exponential", {"maximum": True}, TypeError, "maximum"),
    ("exponential", {"maximum": "10"}, TypeError, "maximum"),
    ("exponential", {"jitter": "bogus"}, ValueError, "jitter"),
    ("exponential", {"jitter": True}, ValueError, "jitter"),
    ("exponential", {"seed": True}, TypeError, "seed"),
    ("exponential", {"seed": "abc"}, TypeError, "seed"),
    ("fibonacci", {"initial": -1}, ValueError, "initial"),
    ("fibonacci", {"initial": nan}, ValueError, "initial"),
    ("fibonacci", {"initial": True}, TypeError, "initial"),
    ("fibonacci", {"maximum": -1}, ValueError, "maximum"),
    ("fibonacci", {"jitter": "decorrelated"}, ValueError, "jitter"),
    ("fibonacci", {"seed": [1]}, TypeError, "seed"),
    ("decorrelated", {"initial": 0}, ValueError, "initial"),
    ("decorrelated", {"initial": -1}, ValueError, "initial"),
    ("decorrelated", {"initial": nan}, ValueError, "initial"),
    ("decorrelated", {"initial": inf}, ValueError, "initial"),
    ("decorrelated", {"initial": True}, TypeError, "initial"),
    ("decorrelated", {"maximum": inf}, ValueError, "maximum"),
    ("decorrelated", {"maximum": nan}, ValueError, "maximum"),
    ("decorrelated", {"maximum": -1}, ValueError, "maximum"),
    ("decorrelated", {"maximum": "10"}, TypeError, "maximum"),
    ("decorrelated", {"initial": 2.0, "maximum": 1.0}, ValueError, "maximum"),
    ("decorrelated", {"seed": 2.0}, TypeError, "seed"),
]


@pytest.mark.parametrize(
    ("kind", "kwargs", "error", "param"),
    INVALID,
    ids=[f"{k}-{'-'.join(f'{a}={v!r}' for a, v in kw.items())}" for k, kw, _, _ in INVALID],
)
def test_invalid_arguments_fail_at_construction_naming_the_parameter(
    kind: str, kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """Bad arguments raise ValueError/TypeError from the factory, the message naming them."""
    with pytest.raises(error, match=rf"^{param} "):
        build(kind, kwargs)


def test_decorrelated_jitter_hint_points_to_decorrelated() -> None:
    """jitter='decorrelated' is refused with a pointer to backoff.decorrelated()."""
    with pytest.raises(ValueError, match=r"backoff\.decorrelated\(\)"):
        backoff.exponential(jitter="decorrelated")  # type: ignore[arg-type]


def test_decorrelated_takes_no_jitter() -> None:
    """decorrelated() has no jitter parameter: its randomness is the strategy itself."""
    with pytest.raises(TypeError, match="jitter"):
        backoff.decorrelated(jitter="full")  # type: ignore[call-arg]


def test_boundary_values_are_accepted() -> None:
    """Zero delays, base 1 and maximum == initial for decorrelated are valid."""
    assert list(backoff.constant(0).delays(3)) == [0.0, 0.0, 0.0]
    assert list(backoff.exponential(0.5, base=1).delays(3)) == [0.5, 0.5, 0.5]
    assert list(backoff.linear(0, 0).delays(3)) == [0.0, 0.0, 0.0]
    assert list(backoff.fibonacci(0.2, maximum=0).delays(3)) == [0.0, 0.0, 0.0]
    assert list(backoff.decorrelated(0.3, maximum=0.3, seed=1).delays(3)) == [0.3, 0.3, 0.3]


# -- delays(), repr ------------------------------------------------------------


@fast
@given(capped_params(), st.integers(min_value=0, max_value=300))
def test_delays_yields_count_items(params: tuple[str, dict[str, Any]], count: int) -> None:
    """delays(count) yields exactly count delays, each the one delay() gives for its retry."""
    kind, kwargs = params
    delays = list(build(kind, kwargs).delays(count))
    assert len(delays) == count
    if kwargs["jitter"] is None:
        twin = build(kind, kwargs)
        assert delays == [twin.delay(n, 0.0) for n in range(1, count + 1)]


def test_delays_without_count_is_endless() -> None:
    """delays() with no count keeps yielding."""
    taken = list(itertools.islice(backoff.decorrelated(seed=1).delays(), 1000))
    assert len(taken) == 1000


def test_delays_threads_the_previous_delay() -> None:
    """delays() feeds each delay back as `previous`, as decorrelated jitter needs."""
    strategy = backoff.decorrelated(1.0, maximum=1e6, seed=5)
    twin = backoff.decorrelated(1.0, maximum=1e6, seed=5)
    expected, previous = [], 0.0
    for n in range(1, 31):
        previous = twin.delay(n, previous)
        expected.append(previous)
    assert list(strategy.delays(30)) == expected


@pytest.mark.parametrize(
    ("strategy", "text"),
    [
        (backoff.constant(0.5), "constant(0.5)"),
        (backoff.constant(2, jitter="full"), "constant(2, jitter='full')"),
        (backoff.linear(0.1), "linear(initial=0.1, step=0.1)"),
        (
            backoff.linear(0.1, 0.2, maximum=5, jitter="equal"),
            "linear(initial=0.1, step=0.2, maximum=5, jitter='equal')",
        ),
        (backoff.exponential(), "exponential(initial=0.1, base=2, maximum=10)"),
        (
            backoff.exponential(0.5, base=3, maximum=math.inf, jitter="full"),
            "exponential(initial=0.5, base=3, jitter='full')",
        ),
        (backoff.fibonacci(), "fibonacci(initial=0.1, maximum=10)"),
        (backoff.decorrelated(0.2, maximum=4), "decorrelated(initial=0.2, maximum=4)"),
    ],
)
def test_repr_shows_the_settings(strategy: backoff.Backoff, text: str) -> None:
    """repr() of a strategy reads like the call that built it."""
    assert repr(strategy) == text


# -- tenacity interop ----------------------------------------------------------


def test_from_tenacity_wait_exponential() -> None:
    """tenacity.wait_exponential(multiplier=1, max=10) gives 1, 2, 4, 8, 10, 10."""
    strategy = backoff.from_tenacity(tenacity.wait_exponential(multiplier=1, max=10))
    assert list(strategy.delays(6)) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_from_tenacity_wait_fixed() -> None:
    """tenacity.wait_fixed(2) gives 2 before every retry."""
    assert list(backoff.from_tenacity(tenacity.wait_fixed(2)).delays(4)) == [2.0] * 4


def test_from_tenacity_sees_the_failed_outcome() -> None:
    """The tenacity wait gets a RetryCallState with the attempt number and the outcome."""
    seen: list[tuple[int, BaseException | None, float]] = []

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        seen.append((state.attempt_number, state.outcome.exception(), state.idle_for))
        return 1.5

    error = ValueError("boom")
    strategy = backoff.from_tenacity(wait)
    assert strategy.delay_for(backoff.RetryOutcome(3, 0.25, error, slept=0.75)) == 1.5
    assert seen == [(3, error, 0.75)]  # idle_for: the total waited so far


@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_from_tenacity_rejects_a_bad_wait_result(value: float) -> None:
    """A tenacity wait returning a negative or NaN delay raises ValueError."""
    with pytest.raises(ValueError, match="returned"):
        backoff.from_tenacity(lambda state: value).delay(1, 0.0)


@pytest.mark.parametrize("wait", [3, "wait_fixed", None, backoff.constant(1.0)])
def test_from_tenacity_rejects_non_callables(wait: object) -> None:
    """from_tenacity() refuses anything that is not a callable wait, naming `wait`."""
    with pytest.raises(TypeError, match=r"^wait "):
        backoff.from_tenacity(wait)  # type: ignore[arg-type]


# -- functions of the retry number ------------------------------------------------


def test_from_function_gives_the_function_of_the_retry_number() -> None:
    """from_function(fn) calls fn(1), fn(2), ... and keeps what it returns, as floats."""
    seen: list[int] = []

    def stepped(retry: int) -> float:
        seen.append(retry)
        return [0, 1, 5][min(retry, 3) - 1]

    strategy = backoff.from_function(stepped)
    delays = list(strategy.delays(4))
    assert delays == [0.0, 1.0, 5.0, 5.0]
    assert all(type(d) is float for d in delays)
    assert seen == [1, 2, 3, 4]
    assert repr(strategy) == f"from_function({stepped!r})"


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1.0, ValueError), (math.nan, ValueError), ("1", TypeError), (None, TypeError)],
)
def test_from_function_refuses_what_is_not_seconds(value: object, error: type) -> None:
    """A function returning a negative, NaN or non-number delay fails with the value named."""
    with pytest.raises(error, match=r"returned"):
        backoff.from_function(lambda retry: value).delay(1, 0.0)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("fn", [3, "fn", None, backoff.constant(1.0)])
def test_from_function_rejects_non_functions(fn: object) -> None:
    """from_function() refuses anything that is not a function, naming `fn`."""
    with pytest.raises(TypeError, match=r"^fn "):
        backoff.from_function(fn)  # type: ignore[arg-type]


def test_a_function_of_the_retry_number_fails_with_a_pointer_to_from_function() -> None:
    """backoff=lambda retry: ... is taken for a tenacity wait; its failure says what to use."""
    strategy = backoff.coerce(lambda retry: 0.1 * retry)
    with pytest.raises(TypeError, match=r"backoff\.from_function\(fn\)") as caught:
        strategy.delay_for(backoff.RetryOutcome(1, error=ConnectionError("down")))
    assert isinstance(caught.value.__cause__, TypeError)


def test_tenacity_waits_of_every_kind_are_taken_as_they_are() -> None:
    """Builtin waits, and functions of the RetryCallState, including ones that read the error.

    Nothing is called at construction: a seeded wait keeps its sequence.
    """
    calls: list[int] = []

    def my_wait(state: tenacity.RetryCallState) -> float:
        calls.append(state.attempt_number)
        return 0.25 * state.attempt_number

    def server_hint(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        return float(state.outcome.exception().retry_after)  # type: ignore[union-attr]

    class Busy(Exception):
        retry_after = 0.5

    assert list(backoff.coerce(tenacity.wait_fixed(2)).delays(2)) == [2.0, 2.0]
    strategy = backoff.coerce(my_wait)
    assert calls == []  # not called at construction
    assert list(strategy.delays(3)) == [0.25, 0.5, 0.75]
    assert backoff.coerce(server_hint).delay_for(backoff.RetryOutcome(1, error=Busy())) == 0.5


# -- the tenacity call state, as tenacity fills it -------------------------------------------


def test_a_tenacity_wait_sees_the_running_total_it_has_waited() -> None:
    """idle_for is what tenacity says: the total slept so far, so `idle_for + 1` doubles as
    1, 2, 4, 8 (it was the previous delay here, giving 1, 2, 3, 4)."""
    clock = FakeClock()
    retry = rs.Retry(5, backoff=lambda state: state.idle_for + 1, clock=clock)
    with pytest.raises(ConnectionError):
        retry.call(always_down)
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]


def test_a_tenacity_wait_sees_the_seconds_since_the_first_attempt() -> None:
    """seconds_since_start counts from the first attempt, time spent in attempts included."""
    clock = FakeClock()
    seen: list[float | None] = []

    def wait(state: tenacity.RetryCallState) -> float:
        seen.append(state.seconds_since_start)
        return 1.0

    def slow_and_down() -> None:
        clock.advance(0.5)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        rs.Retry(3, backoff=wait, clock=clock).call(slow_and_down)
    assert seen == [0.5, 2.0]  # 0.5 s attempt; then 1 s wait and another 0.5 s attempt


# -- delays from the failed attempt --------------------------------------------------------


class Response:
    """Stands for an HTTP response: a status and headers with a get()."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class StatusError(Exception):
    """Stands for httpx.HTTPStatusError: the response is on the error."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
        (7, 7.0),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(value: Any, expected: Any) -> None:
    """Delay-seconds or an HTTP-date (RFC 9110), measured from `now`; anything else is None."""
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert backoff.parse_retry_after(value, now=now) == expected


def test_retry_after_waits_what_the_server_asked() -> None:
    """retry_after(): the header on a failed response, or on an error's response; else the
    fallback strategy."""
    clock = FakeClock()
    answers = iter(
        [
            StatusError(Response(503, {"Retry-After": "2"})),
            Response(429, {"Retry-After": "3"}),
            StatusError(Response(503, {})),
            Response(200, {}),
        ]
    )

    def call() -> Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retry = rs.Retry(
        5,
        on=StatusError,
        on_result=lambda response: response.status_code == 429,
        backoff=backoff.retry_after(otherwise=0.25),
        clock=clock,
    )
    assert retry.call(call).status_code == 200
    assert clock.sleeps == [2.0, 3.0, 0.25]


def test_max_delay_caps_what_a_server_may_ask() -> None:
    """Retry(max_delay=...) caps both the strategy's delays and retry_after hints."""
    clock = FakeClock()

    class Busy(Exception):
        retry_after = 60.0

    def busy() -> None:
        raise Busy("later")

    with pytest.raises(Busy):
        rs.Retry(3, on=Busy, backoff=backoff.constant(10), max_delay=5, clock=clock).call(busy)
    assert clock.sleeps == [5.0, 5.0]
    assert rs.Retry(max_delay=5).settings()["max_delay"] == 5


def test_from_outcome_reads_the_outcome_and_falls_back() -> None:
    """from_outcome(fn): fn sees the retry, error, result, time waited; None defers."""
    seen: list[backoff.RetryOutcome] = []

    def rule(outcome: backoff.RetryOutcome) -> float | None:
        seen.append(outcome)
        return None if outcome.retry == 2 else 0.5

    strategy = backoff.from_outcome(rule, otherwise=backoff.constant(9))
    clock = FakeClock()
    with pytest.raises(ConnectionError):
        rs.Retry(4, backoff=strategy, clock=clock).call(always_down)
    assert clock.sleeps == [0.5, 9.0, 0.5]
    assert [o.retry for o in seen] == [1, 2, 3]
    assert [o.slept for o in seen] == [0.0, 0.5, 9.5]
    assert isinstance(seen[0].error, ConnectionError)
    with pytest.raises(TypeError, match=r"^fn must be a function"):
        backoff.from_outcome(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not seconds"):
        backoff.from_outcome(lambda o: "x").delay(1, 0.0)  # type: ignore[arg-type,return-value]


def test_a_subclass_overriding_delay_for_reads_the_error() -> None:
    """The documented way to write a strategy of your own that reads the outcome."""

    class Honest(backoff.Backoff):
        def delay(self, retry: int, previous: float) -> float:
            return 1.0

        def delay_for(self, outcome: backoff.RetryOutcome) -> float:
            wait = getattr(outcome.error, "wait", None)
            return float(wait) if wait is not None else self.delay(outcome.retry, outcome.previous)

    class Later(Exception):
        wait = 4

    clock = FakeClock()
    calls = iter([Later(), ConnectionError()])

    def flaky() -> None:
        raise next(calls)

    with pytest.raises(ConnectionError):
        rs.Retry(2, backoff=Honest(), clock=clock).call(flaky)
    assert clock.sleeps == [4.0]
