"""Fuzzing every public constructor with hypothesis.

Each constructor has a table of its parameters: a strategy of valid values and
a list of invalid ones. Two properties per constructor:

* start from a valid configuration and spoil one argument: construction
  raises `ValueError` or `TypeError` whose message names that parameter;
* any valid configuration serves a happy call, sync and async, without
  raising (a `FaultInjector` raises only what it was told to inject).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pybreaker
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience import backoff
from resilience.integrations.pybreaker import PybreakerLayer
from resilience.testing import FakeClock

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples in every run: CI does not flake
)

NAN = math.nan
INF = math.inf


def none_or(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def seconds(low: float = 1e-3, high: float = 100.0) -> st.SearchStrategy[Any]:
    """Positive durations, as floats, ints or timedeltas."""
    value = st.floats(low, high)
    return st.one_of(value, value.map(lambda s: timedelta(seconds=s)), st.integers(1, 5))


def ratio() -> st.SearchStrategy[float]:
    return st.floats(0.01, 1.0)


NAMES = none_or(st.text(max_size=8))
CLOCKS = st.builds(FakeClock)
EXCEPTIONS = st.sampled_from([Exception, ValueError, (ValueError, KeyError), lambda e: True])
CALLBACKS = none_or(st.just(lambda *_: None))
PREDICATES = none_or(st.just(lambda *_: False))
SEEDS = none_or(st.one_of(st.integers(0, 2**32), st.builds(random.Random, st.integers(0, 9))))

BAD_SECONDS = [0, -1, -0.5, NAN, INF, "1", True]
BAD_SECONDS_OR_ZERO = [-1, NAN, INF, "1", True]
BAD_RATIO = [0, -0.1, 1.5, NAN, INF, "0.5", True]
BAD_RATE = [-0.1, 1.5, NAN, "0.5", True]  # rates in [0, 1]
BAD_NAME = [3, b"x", 1.5]
BAD_CLOCK = [object(), 3, FakeClock]  # FakeClock: the class, not an instance
BAD_CALLABLE = [3, "x"]
BAD_EXCEPTIONS = [3, "x", (ValueError, 3), int, [KeyError, "y"]]
BAD_SEED = ["x", 1.5, True]


def bad_int(minimum: int) -> list[object]:
    return [minimum - 1, minimum - 100, 1.5, "3", True, None]


@dataclass
class Spec:
    """How to fuzz one public constructor."""

    make: Callable[..., Any]
    valid: dict[str, st.SearchStrategy[Any]]
    invalid: dict[str, list[object]]
    fix: Callable[[dict[str, Any]], dict[str, Any]] = lambda kwargs: kwargs
    """Makes a drawn configuration consistent (relations between parameters)."""
    required: tuple[str, ...] = ()
    """Parameters always passed."""
    expected: Callable[[dict[str, Any]], tuple[type[BaseException], ...]] = field(
        default=lambda kwargs: ()
    )
    """Exceptions a valid configuration may raise in a call, on purpose."""

    def configs(self) -> st.SearchStrategy[dict[str, Any]]:
        must = {k: v for k, v in self.valid.items() if k in self.required}
        optional = {k: v for k, v in self.valid.items() if k not in self.required}
        return st.fixed_dictionaries(must, optional=optional).map(self.fix)


def _breaker_fix(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("window_seconds") is not None:
        kwargs.pop("window_calls", None)
    window = kwargs.get("window_calls") or 100
    if kwargs.get("window_seconds") is None and kwargs.get("minimum_calls", 20) > window:
        kwargs["minimum_calls"] = window
    if kwargs.get("store") == "memory":
        kwargs["store"] = rs.stores.MemoryCircuitStore()
    consecutive = kwargs.get("consecutive_failures")
    ratio = kwargs.get("failure_ratio", None if consecutive is not None else 0.5)
    slow = kwargs.get("slow_call_seconds")
    if ratio is None and consecutive is None and slow is None:
        kwargs["failure_ratio"] = ratio = 0.5  # a breaker with no rule at all is refused
    if kwargs.get("half_open_rule") == "ratio" and ratio is None and slow is None:
        kwargs["half_open_rule"] = "first_failure"  # the ratio rule needs a ratio
    return kwargs


def _throttle_fix(kwargs: dict[str, Any]) -> dict[str, Any]:
    burst = kwargs.get("burst")
    burst = max(kwargs["rate"], 1.0) if burst is None else burst
    cost = kwargs.get("cost", 1)
    if callable(cost):
        kwargs["cost"] = lambda *a, **k: burst / 2
    elif cost * 2 > burst:  # two calls must fit: one sync, one async
        kwargs["cost"] = burst / 2
    return kwargs


def _limits_fix(kwargs: dict[str, Any]) -> dict[str, Any]:
    low, high = sorted((kwargs.get("min_limit", 1), kwargs.get("max_limit", 200)))
    kwargs["min_limit"], kwargs["max_limit"] = low, high
    kwargs["initial_limit"] = min(max(kwargs.get("initial_limit", 20), low), high)
    return kwargs


def _faults_fix(kwargs: dict[str, Any]) -> dict[str, Any]:
    for fault in ("latency", "behaviour"):
        if kwargs.get(f"{fault}_rate") and kwargs.get(fault) is None:
            kwargs.pop(f"{fault}_rate")
    if kwargs.get("result_rate") and "result" not in kwargs:
        kwargs.pop("result_rate")
    return kwargs


def _faults_expected(kwargs: dict[str, Any]) -> tuple[type[BaseException], ...]:
    error = kwargs.get("error")
    # An omitted error_rate follows the error (1.0 with one, else off); None or 0 is off.
    rate = kwargs.get("error_rate", 0.0 if error is None else 1.0)
    if not rate or kwargs.get("enabled") is False:
        return ()  # no error can be injected: every call must return
    if error is None:
        return (rs.InjectedFault,)
    if isinstance(error, BaseException):
        return (type(error),)
    if isinstance(error, type):
        return (error,)
    return (KeyError,)  # the factory below


def _decorated(lo: float = 0.0) -> st.SearchStrategy[Any]:
    return st.floats(lo, 10.0)


SPECS: dict[str, Spec] = {
    "Retry": Spec(
        rs.Retry,
        {
            "attempts": st.integers(1, 5),
            "on": EXCEPTIONS,
            "on_result": PREDICATES,
            "backoff": st.one_of(
                st.floats(0, 1), st.just(backoff.exponential()), st.just(backoff.constant(0))
            ),
            "on_retry": CALLBACKS,
            "budget": none_or(st.builds(rs.RetryBudget)),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "attempts": bad_int(1),
            "on": BAD_EXCEPTIONS,
            "on_result": BAD_CALLABLE,
            "backoff": [-1, NAN, INF, "x", None, True],
            "on_retry": BAD_CALLABLE,
            "budget": [3, "x", backoff.constant(1)],
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
    ),
    "Timeout": Spec(
        rs.Timeout,
        {
            "seconds": seconds(),
            "sync_mode": st.sampled_from(["cooperative", "walk_away"]),
            "max_workers": st.integers(1, 4),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "seconds": [*BAD_SECONDS, None],
            "sync_mode": ["walkaway", None, 1],
            "max_workers": bad_int(1),
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        required=("seconds",),
    ),
    "CircuitBreaker": Spec(
        rs.CircuitBreaker,
        {
            "failure_ratio": none_or(ratio()),
            "consecutive_failures": none_or(st.integers(1, 10)),
            "minimum_calls": st.integers(1, 50),
            "window_calls": none_or(st.integers(1, 200)),
            "window_seconds": none_or(seconds()),
            "window_buckets": st.integers(1, 20),
            "slow_call_seconds": none_or(seconds()),
            "slow_call_ratio": ratio(),
            "open_seconds": st.one_of(seconds(), st.just(backoff.exponential(1.0))),
            "half_open_calls": st.integers(1, 5),
            "half_open_max_seconds": none_or(seconds()),
            "half_open_rule": st.sampled_from(["first_failure", "ratio"]),
            "failure_on": EXCEPTIONS,
            "ignore": none_or(EXCEPTIONS),
            "failure_result": PREDICATES,
            "on_state_change": CALLBACKS,
            "on_outcome": CALLBACKS,
            "store": st.sampled_from([None, "memory"]),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "failure_ratio": BAD_RATIO,
            "consecutive_failures": [0, -1, 1.5, "3", True],
            "minimum_calls": bad_int(1),
            "window_calls": [0, -1, 2.5, "x", True],
            "window_seconds": BAD_SECONDS,
            "window_buckets": bad_int(1),
            "slow_call_seconds": BAD_SECONDS,
            "slow_call_ratio": BAD_RATIO,
            "open_seconds": [*BAD_SECONDS, None],
            "half_open_calls": bad_int(1),
            "half_open_max_seconds": BAD_SECONDS,
            "half_open_rule": ["any", 3, None],
            "failure_on": [*BAD_EXCEPTIONS, None],
            "ignore": BAD_EXCEPTIONS,
            "failure_result": BAD_CALLABLE,
            "on_state_change": BAD_CALLABLE,
            "on_outcome": BAD_CALLABLE,
            "store": [3, object(), "memory"],
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        fix=_breaker_fix,
    ),
    "Throttle": Spec(
        rs.Throttle,
        {
            "rate": st.floats(1e-3, 1e9),
            "per": seconds(),
            "burst": none_or(st.floats(1e-3, 1e6)),
            "max_wait": none_or(st.floats(0, 10)),
            "cost": st.one_of(st.floats(0, 10), st.just(1), st.just(len)),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "rate": [0, -1, NAN, INF, "10", True, None],
            "per": [*BAD_SECONDS, None],
            "burst": [0, -1, NAN, INF, "5", True],
            "max_wait": BAD_SECONDS_OR_ZERO,
            "cost": [-1, NAN, INF, "1", True, None, 1e12],
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        fix=_throttle_fix,
        required=("rate",),
    ),
    "Bulkhead": Spec(
        rs.Bulkhead,
        {
            "max_concurrent": st.integers(1, 100),
            "max_queue": st.integers(0, 10),
            "max_wait": none_or(st.floats(0, 10)),
            "isolation": st.sampled_from([None, "thread"]),
            "retry_after": none_or(st.floats(0, 10)),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "max_concurrent": bad_int(1),
            "max_queue": [-1, 1.5, "2", True, None],
            "max_wait": BAD_SECONDS_OR_ZERO,
            "isolation": ["process", "threads", 1],
            "retry_after": BAD_SECONDS_OR_ZERO,
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        required=("max_concurrent",),
    ),
    "FaultInjector": Spec(
        rs.FaultInjector,
        {
            "error": none_or(
                st.sampled_from(
                    [rs.InjectedFault, ValueError("x"), ConnectionError, lambda ctx: KeyError("k")]
                )
            ),
            "error_rate": none_or(st.floats(0, 1)),
            "latency": none_or(st.one_of(st.floats(0, 5), st.just(lambda ctx: 0.5))),
            "latency_rate": none_or(st.floats(0, 1)),
            "result": st.integers(),
            "result_rate": none_or(st.floats(0, 1)),
            "behaviour": none_or(st.just(lambda ctx: None)),
            "behaviour_rate": none_or(st.floats(0, 1)),
            "enabled": st.one_of(st.booleans(), st.just(lambda ctx: True)),
            "seed": SEEDS,
            "name": NAMES,
            "clock": CLOCKS,
        },
        {
            "error": [3, "x", int, UnicodeDecodeError],
            "error_rate": BAD_RATE,
            "latency": [-1, NAN, INF, "x", True],
            "latency_rate": BAD_RATE,
            "result_rate": BAD_RATE,
            "behaviour": BAD_CALLABLE,
            "behaviour_rate": BAD_RATE,
            "enabled": [3, "yes", None],
            "seed": BAD_SEED,
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        fix=_faults_fix,
        required=("clock",),  # latency on the real clock would really sleep
        expected=_faults_expected,
    ),
    "Fallback": Spec(
        rs.Fallback,
        {
            "value": st.integers(),
            "on": EXCEPTIONS,
            "on_result": PREDICATES,
            "on_fallback": CALLBACKS,
            "name": NAMES,
        },
        {
            "handler": BAD_CALLABLE,
            "on": BAD_EXCEPTIONS,
            "on_result": BAD_CALLABLE,
            "on_fallback": BAD_CALLABLE,
            "name": BAD_NAME,
        },
        required=("value",),
    ),
    "Pipeline": Spec(
        rs.Pipeline,
        {
            "layers": st.lists(
                st.sampled_from([lambda: rs.Retry(), lambda: rs.Timeout(1), rs.Fallback]),
                max_size=3,
            ).map(lambda makers: [m(value=0) if m is rs.Fallback else m() for m in makers]),
            "name": NAMES,
        },
        {"layers": [3, [3], [rs.Retry], "ab", None], "name": BAD_NAME},
    ),
    "RetryBudget": Spec(
        rs.RetryBudget,
        {
            "ratio": st.floats(0, 1000),
            "min_per_second": st.floats(0, 1000),
            "ttl": st.floats(1, 60),
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "ratio": [-1, 1001, NAN, INF, "x", True],
            "min_per_second": [-1, NAN, INF, "x", True],
            "ttl": [0.5, 61, NAN, INF, "x", True, None],
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
    ),
    "AdaptiveLimiter": Spec(
        rs.AdaptiveLimiter,
        {
            "algorithm": none_or(
                st.sampled_from([rs.AIMD, rs.Vegas, rs.Gradient2]).map(lambda cls: cls())
            ),
            "initial_limit": st.integers(1, 50),
            "min_limit": st.integers(1, 50),
            "max_limit": st.integers(1, 500),
            "max_queue": st.integers(0, 10),
            "max_wait": none_or(st.floats(0, 10)),
            "window_seconds": st.floats(0, 10),
            "window_samples": st.integers(1, 1000),
            "drop_on": EXCEPTIONS,
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "algorithm": [3, rs.AIMD, "vegas"],
            "initial_limit": bad_int(1),
            "min_limit": bad_int(1),
            "max_limit": bad_int(1),
            "max_queue": [-1, 1.5, None],
            "max_wait": BAD_SECONDS_OR_ZERO,
            "window_seconds": [*BAD_SECONDS_OR_ZERO, None],
            "window_samples": [*bad_int(1), 1001],
            "drop_on": BAD_EXCEPTIONS,
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
        fix=_limits_fix,
    ),
    "AIMD": Spec(
        rs.AIMD,
        {"backoff_ratio": st.floats(0.5, 0.99), "timeout": seconds()},
        {"backoff_ratio": [0.4, 1.0, NAN, "x", True], "timeout": [*BAD_SECONDS, None]},
    ),
    "Vegas": Spec(
        rs.Vegas,
        {
            "alpha": none_or(st.one_of(st.floats(0, 10), st.just(lambda limit: 3))),
            "beta": none_or(st.floats(0, 10)),
            "threshold": none_or(st.floats(0, 10)),
            "increase": none_or(st.just(lambda limit: limit + 1)),
            "decrease": none_or(st.just(lambda limit: limit - 1)),
            "smoothing": st.floats(0.01, 1),
            "probe_multiplier": st.integers(1, 100),
            "seed": SEEDS,
        },
        {
            "alpha": [-1, NAN, "x", True],
            "beta": [-1, NAN, "x"],
            "threshold": [-1, INF, "x"],
            "increase": [3, "x"],
            "decrease": [3, "x"],
            "smoothing": BAD_RATIO,
            "probe_multiplier": bad_int(1),
            "seed": BAD_SEED,
        },
    ),
    "Gradient2": Spec(
        rs.Gradient2,
        {
            "smoothing": st.floats(0.01, 1),
            "queue_size": st.one_of(st.floats(0, 10), st.just(lambda limit: 4)),
            "long_window": st.integers(1, 1000),
            "rtt_tolerance": st.floats(1, 10),
        },
        {
            "smoothing": BAD_RATIO,
            "queue_size": [-1, NAN, "x", None],
            "long_window": bad_int(1),
            "rtt_tolerance": [0.5, NAN, INF, "x", True],
        },
    ),
    "AdaptiveThrottler": Spec(
        rs.AdaptiveThrottler,
        {
            "k": st.floats(1, 10),
            "window_seconds": seconds(),
            "window_buckets": st.integers(1, 20),
            "refused_on": EXCEPTIONS,
            "refused_result": PREDICATES,
            "seed": SEEDS,
            "clock": CLOCKS,
            "name": NAMES,
        },
        {
            "k": [0.5, NAN, INF, "2", True],
            "window_seconds": [*BAD_SECONDS, None],
            "window_buckets": bad_int(1),
            "refused_on": BAD_EXCEPTIONS,
            "refused_result": BAD_CALLABLE,
            "seed": BAD_SEED,
            "clock": BAD_CLOCK,
            "name": BAD_NAME,
        },
    ),
    "backoff.constant": Spec(
        backoff.constant,
        {
            "delay": _decorated(),
            "jitter": st.sampled_from([None, "full", "equal"]),
            "seed": SEEDS,
        },
        {
            "delay": [-1, NAN, INF, "1", True, None],
            "jitter": ["decorrelated", "half", 1, ["full"]],
            "seed": BAD_SEED,
        },
    ),
    "backoff.linear": Spec(
        backoff.linear,
        {
            "initial": _decorated(),
            "step": none_or(_decorated()),
            "maximum": st.one_of(_decorated(), st.just(INF)),
            "jitter": st.sampled_from([None, "full", "equal"]),
            "seed": SEEDS,
        },
        {
            "initial": [-1, NAN, INF, "1", True, None],
            "step": [-1, NAN, INF, "1", True],
            "maximum": [-1, NAN, "1", True, None],
            "jitter": ["decorrelated", 1, ["full"]],
            "seed": BAD_SEED,
        },
    ),
    "backoff.exponential": Spec(
        backoff.exponential,
        {
            "initial": _decorated(),
            "base": st.floats(1, 10),
            "maximum": st.one_of(_decorated(), st.just(INF)),
            "jitter": st.sampled_from([None, "full", "equal"]),
            "seed": SEEDS,
        },
        {
            "initial": [-1, NAN, INF, "1", True, None],
            "base": [0.5, -1, NAN, INF, "2", True, None],
            "maximum": [-1, NAN, "1", True, None],
            "jitter": ["decorrelated", 1, ["full"]],
            "seed": BAD_SEED,
        },
    ),
    "backoff.fibonacci": Spec(
        backoff.fibonacci,
        {
            "initial": _decorated(),
            "maximum": st.one_of(_decorated(), st.just(INF)),
            "jitter": st.sampled_from([None, "full", "equal"]),
            "seed": SEEDS,
        },
        {
            "initial": [-1, NAN, INF, "1", True, None],
            "maximum": [-1, NAN, "1", True, None],
            "jitter": ["decorrelated", 1, ["full"]],
            "seed": BAD_SEED,
        },
    ),
    "backoff.decorrelated": Spec(
        backoff.decorrelated,
        {"initial": st.floats(0.001, 1), "maximum": st.floats(1, 100), "seed": SEEDS},
        {
            "initial": [0, -1, NAN, INF, "1", True, None],
            "maximum": [-1, NAN, INF, "1", True, None],
            "seed": BAD_SEED,
        },
    ),
    "FakeClock": Spec(
        FakeClock,
        {"start": st.floats(-1e6, 1e6), "auto_advance": st.booleans()},
        {"start": [NAN, INF, "x", True, None], "auto_advance": [1, "yes", None]},
    ),
    "PybreakerLayer": Spec(
        PybreakerLayer,
        {"breaker": st.builds(pybreaker.CircuitBreaker), "name": NAMES},
        {"breaker": [3, None, rs.CircuitBreaker()], "name": BAD_NAME},
        required=("breaker",),
    ),
}


def _spoil(spec: Spec, valid: dict[str, Any], param: str, bad: object) -> str | None:
    """Construct with ``param=bad``; the complaint, or None when refused by name."""
    kwargs = {k: v for k, v in valid.items() if k != param}
    if param == "handler":  # Fallback takes one of value= and handler=
        kwargs.pop("value", None)
    if param == "result_rate":
        kwargs["result"] = 0
    if param == "latency_rate" and kwargs.get("latency") is None:
        kwargs["latency"] = 0.0
    if param == "behaviour_rate" and kwargs.get("behaviour") is None:
        kwargs["behaviour"] = lambda ctx: None
    kwargs[param] = bad
    try:
        spec.make(**kwargs)
    except (ValueError, TypeError) as exc:
        return None if param in str(exc) else f"{param}={bad!r}: {type(exc).__name__}: {exc}"
    except Exception as exc:
        return f"{param}={bad!r}: {type(exc).__name__}: {exc}"
    return f"{param}={bad!r}: accepted"


@pytest.mark.parametrize("label", sorted(SPECS))
@FUZZ
@given(data=st.data())
def test_invalid_argument_is_refused_by_name(label: str, data: st.DataObject) -> None:
    """A valid configuration with any one argument spoiled raises naming that argument."""
    spec = SPECS[label]
    valid = data.draw(spec.configs(), label="valid")
    problems = [
        problem
        for param, values in spec.invalid.items()
        for bad in values
        if (problem := _spoil(spec, valid, param, bad))
    ]
    assert problems == [], f"{label}: {problems}"


def _work() -> int:
    return 1


async def _awork() -> int:
    return 1


def _happy(
    layer: rs.Middleware,
    expected: tuple[type[BaseException], ...],
    answers: tuple[object, ...] = (1,),
) -> None:
    """A sync and an async call both return one of ``answers``, or raise one of ``expected``."""
    outcomes: dict[str, object] = {}
    with contextlib.suppress(*expected):
        outcomes["sync"] = layer.call(_work)

    async def main() -> None:
        with contextlib.suppress(*expected):
            outcomes["async"] = await layer.acall(_awork)

    asyncio.run(main())
    if not expected:
        assert set(outcomes) == {"sync", "async"}, outcomes
    for how, outcome in outcomes.items():
        assert outcome in answers, f"{how} call returned {outcome!r}, not one of {answers!r}"


@pytest.mark.parametrize("label", sorted(SPECS))
@FUZZ
@given(data=st.data())
def test_valid_configuration_serves_calls(label: str, data: st.DataObject) -> None:
    """Any valid configuration constructs, and serves a happy call sync and async."""
    spec = SPECS[label]
    kwargs = data.draw(spec.configs(), label="valid")
    made = spec.make(**kwargs)
    text = repr(made)
    shown = label.rpartition(".")[2]  # backoff.exponential(...) shows as exponential(...)
    assert text.startswith(f"{shown}("), text
    assert text.endswith(")"), text
    if isinstance(made, rs.Middleware):
        assert made.describe()["type"]
        # A FaultInjector may answer with its injected result instead of calling.
        answers = (1, kwargs["result"]) if "result" in kwargs else (1,)
        _happy(made, spec.expected(kwargs), answers)
        if isinstance(made, rs.Timeout | rs.Bulkhead):
            assert made.drain(5.0)
    elif isinstance(made, backoff.Backoff):
        delays = list(made.delays(8))
        assert all(0.0 <= d <= made.maximum for d in delays), delays
        _happy(rs.Retry(backoff=made, clock=FakeClock()), ())
    elif isinstance(made, rs.RetryBudget):
        _happy(rs.Retry(budget=made), ())
    elif isinstance(made, rs.LimitAlgorithm):
        _happy(rs.AdaptiveLimiter(made), ())
    else:
        assert isinstance(made, FakeClock)
        before = made.monotonic()
        made.advance(1.0)
        if made.auto_advance:
            made.sleep(1.0)
            asyncio.run(made.asleep(1.0))
        assert made.monotonic() == before + (3.0 if made.auto_advance else 1.0)
