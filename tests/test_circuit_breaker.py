"""Tests of `resilience.CircuitBreaker`: each rule and state, sync and async alike."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import resilience as rs
from modes import Event, create_task, gather, run_yielding
from resilience import CircuitState, backoff
from resilience.testing import FakeClock


@pytest.fixture(params=["memory", "generic"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run through the inlined memory-store shell and through the generic store interface."""
    return str(request.param)


class PlainStore(rs.stores.MemoryCircuitStore):
    """A subclass, so the breaker drives it only through the `CircuitStore` methods."""


def breaker(store_kind: str = "memory", **kwargs: Any) -> rs.CircuitBreaker:
    """A breaker on a fresh store of the given kind."""
    store = PlainStore() if store_kind == "generic" else None
    return rs.CircuitBreaker(store=store, **kwargs)


def ok() -> str:
    return "ok"


def fail() -> None:
    raise ConnectionError("down")


async def outcome(mode: str, policy: rs.Middleware, fn: Callable[..., Any]) -> str:
    """What happened to one call: its result, the error's type name, or "rejected"."""
    try:
        return str(await run_yielding(mode, policy, fn))
    except rs.CircuitOpenError:
        return "rejected"
    except Exception as exc:
        return type(exc).__name__


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_ratio": 0}, ValueError, r"^failure_ratio must be > 0"),
        ({"failure_ratio": 1.5}, ValueError, r"^failure_ratio must be in \(0, 1\]"),
        ({"failure_ratio": math.nan}, ValueError, r"^failure_ratio"),
        ({"failure_ratio": "half"}, TypeError, r"^failure_ratio"),
        ({"consecutive_failures": 0}, ValueError, r"^consecutive_failures must be >= 1"),
        ({"minimum_calls": 0}, ValueError, r"^minimum_calls must be >= 1"),
        ({"window_calls": 0}, ValueError, r"^window_calls must be >= 1"),
        ({"window_calls": 10, "minimum_calls": 11}, ValueError, r"^minimum_calls must be <="),
        ({"window_calls": 10, "window_seconds": 5}, ValueError, r"^window_calls and window_sec"),
        ({"window_seconds": 0}, ValueError, r"^window_seconds must be > 0"),
        ({"window_seconds": 5, "window_buckets": 0}, ValueError, r"^window_buckets"),
        ({"slow_call_seconds": -1}, ValueError, r"^slow_call_seconds"),
        ({"slow_call_ratio": 0}, ValueError, r"^slow_call_ratio"),
        ({"open_seconds": 0}, ValueError, r"^open_seconds must be > 0"),
        ({"open_seconds": "5"}, TypeError, r"^open_seconds"),
        ({"half_open_calls": 0}, ValueError, r"^half_open_calls must be >= 1"),
        ({"half_open_max_seconds": -2}, ValueError, r"^half_open_max_seconds"),
        ({"failure_on": 3}, TypeError, r"^failure_on"),
        ({"ignore": "x"}, TypeError, r"^ignore"),
        ({"failure_result": 1}, TypeError, r"^failure_result must be callable"),
        ({"on_state_change": 1}, TypeError, r"^on_state_change must be callable"),
        ({"on_outcome": 1}, TypeError, r"^on_outcome must be callable"),
        ({"store": object()}, TypeError, r"^store must be a CircuitStore"),
        ({"clock": object()}, TypeError, r"^clock"),
        ({"name": 1}, TypeError, r"^name"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Every bad argument is refused by the constructor, naming the parameter."""
    with pytest.raises(error, match=message):
        rs.CircuitBreaker(**kwargs)


def test_a_store_serves_one_breaker() -> None:
    """Sharing a memory store between two breakers is refused."""
    store = rs.stores.MemoryCircuitStore()
    rs.CircuitBreaker(store=store)
    with pytest.raises(ValueError, match="store is already used"):
        rs.CircuitBreaker(store=store)


def test_defaults_and_settings() -> None:
    """The defaults are a 50 % failure ratio over 100 calls, 20 at least, 30 s open."""
    cb = rs.CircuitBreaker(name="users")
    assert cb.settings() == {
        "failure_ratio": 0.5,
        "consecutive_failures": None,
        "minimum_calls": 20,
        "window_calls": 100,
        "open_seconds": 30.0,
        "half_open_calls": 1,
        "half_open_max_seconds": 30.0,
    }
    assert repr(cb) == "CircuitBreaker('users', failure_ratio=0.5, state=closed)"
    assert cb.describe()["kind"] == "circuit_breaker"
    assert cb.state is CircuitState.CLOSED


def test_consecutive_failures_alone_turns_the_ratio_off() -> None:
    """Setting only consecutive_failures gives a pybreaker-like breaker."""
    cb = rs.CircuitBreaker(consecutive_failures=5)
    assert cb.failure_ratio is None
    assert repr(cb) == "CircuitBreaker(consecutive_failures=5, state=closed)"
    both = rs.CircuitBreaker(consecutive_failures=5, failure_ratio=0.2)
    assert both.failure_ratio == 0.2


def test_settings_of_a_time_window_with_slow_calls() -> None:
    """Time windows, slow-call rules and timedelta durations show in settings()."""
    cb = rs.CircuitBreaker(
        window_seconds=timedelta(seconds=60),
        window_buckets=6,
        slow_call_seconds=timedelta(milliseconds=500),
        slow_call_ratio=0.8,
        open_seconds=backoff.exponential(5, maximum=60),
        half_open_max_seconds=20,
    )
    settings = cb.settings()
    assert settings["window_seconds"] == 60.0
    assert settings["window_buckets"] == 6
    assert settings["slow_call_seconds"] == 0.5
    assert settings["slow_call_ratio"] == 0.8
    assert isinstance(settings["open_seconds"], backoff.Backoff)
    assert settings["half_open_max_seconds"] == 20.0
    assert "slow_call_seconds=0.5" in repr(cb)


@pytest.mark.parametrize(
    ("strategy", "nominal"),
    [
        (lambda: backoff.exponential(1, maximum=60, jitter="full", seed=1), 1.0),
        (lambda: backoff.exponential(100, maximum=60, jitter="equal", seed=1), 60.0),
        (lambda: backoff.decorrelated(2, maximum=60, seed=1), 2.0),
        (lambda: backoff.constant(7), 7.0),
    ],
)
def test_the_default_trial_bound_draws_nothing_from_a_jittered_break(
    strategy: Callable[[], backoff.Backoff], nominal: float
) -> None:
    """half_open_max_seconds defaults to the first break before jitter; breaks keep their seed."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(consecutive_failures=1, open_seconds=strategy(), clock=clock)
    assert cb.half_open_max_seconds == nominal
    assert rs.CircuitBreaker(open_seconds=strategy()).half_open_max_seconds == nominal
    first_break = next(strategy().delays(1))  # the seeded sequence, untouched
    with pytest.raises(ValueError, match="down"):
        cb.call(lambda: (_ for _ in ()).throw(ValueError("down")))
    with pytest.raises(rs.CircuitOpenError) as caught:
        cb.call(lambda: "rejected")
    assert caught.value.retry_after == pytest.approx(first_break)


# -- closed: the trip rules ------------------------------------------------------------


async def test_consecutive_failures_trip(mode: str, store_kind: str, clock: FakeClock) -> None:
    """N failures in a row open the breaker; a success in between starts the count again."""
    cb = breaker(store_kind, consecutive_failures=3, clock=clock)
    for fn in (fail, fail, ok, fail, fail):
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.CLOSED
    assert await outcome(mode, cb, fail) == "ConnectionError"
    assert cb.state is CircuitState.OPEN
    assert await outcome(mode, cb, ok) == "rejected"


async def test_failure_ratio_waits_for_minimum_calls(
    mode: str, store_kind: str, clock: FakeClock
) -> None:
    """The ratio is judged only once the window holds minimum_calls calls, and then at once,
    whether the call that filled it failed or not (resilience4j trips the same way)."""
    cb = breaker(store_kind, failure_ratio=0.5, minimum_calls=5, window_calls=10, clock=clock)
    for fn in (fail, fail, fail, ok):  # 100 % then 75 % failures, but fewer than 5 calls
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.CLOSED
    await outcome(mode, cb, ok)  # F F F S S: the fifth call, a success, fills the window
    assert cb.state is CircuitState.OPEN
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures) == (5, 3)
    assert metrics.failure_ratio == 0.6
    assert metrics.trips == 1


async def test_successes_after_the_window_is_full_never_trip(
    mode: str, store_kind: str, clock: FakeClock
) -> None:
    """Below the ratio once the window holds minimum_calls, successes keep it closed (they take
    the lock-free path again), and a failure is judged as before."""
    cb = breaker(store_kind, failure_ratio=0.5, minimum_calls=4, window_calls=4, clock=clock)
    for fn in (fail, ok, ok, ok, ok, ok):
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.CLOSED
    for fn in (fail, fail):
        await outcome(mode, cb, fn)
    assert (cb.state, cb.metrics().failures) == (CircuitState.OPEN, 2)


async def test_count_window_forgets_old_calls(mode: str, store_kind: str) -> None:
    """Only the last window_calls outcomes count."""
    cb = breaker(store_kind, failure_ratio=0.5, minimum_calls=4, window_calls=4)
    for fn in (fail, ok, ok, ok, ok, ok):
        await outcome(mode, cb, fn)
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures) == (4, 0)
    for fn in (fail, ok, ok):
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.CLOSED  # 1 of the last 4
    assert cb.metrics().failure_ratio == 0.25
    await outcome(mode, cb, fail)  # 2 of the last 4: the ratio is reached
    assert cb.state is CircuitState.OPEN


async def test_time_window_drops_expired_buckets(mode: str, store_kind: str) -> None:
    """A time window counts the calls of its last seconds only."""
    clock = FakeClock()
    cb = breaker(
        store_kind,
        failure_ratio=0.5,
        minimum_calls=3,
        window_seconds=10,
        window_buckets=5,
        clock=clock,
    )
    await outcome(mode, cb, fail)
    await outcome(mode, cb, fail)
    clock.advance(11)  # both failures fall out of the window
    assert cb.metrics().calls == 0
    await outcome(mode, cb, ok)
    await outcome(mode, cb, fail)
    assert cb.state is CircuitState.CLOSED  # 1 of 2, below minimum_calls
    clock.advance(4)
    await outcome(mode, cb, fail)  # 2 of 3 within 10 s
    assert cb.state is CircuitState.OPEN


def test_time_window_jump_longer_than_the_window() -> None:
    """After a long quiet spell a time window starts empty, then counts again."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(window_seconds=1, window_buckets=4, minimum_calls=2, clock=clock)
    cb.call(ok)
    clock.advance(0.3)
    cb.call(ok)
    assert cb.metrics().calls == 2
    clock.advance(0.8)  # the first bucket expires, the second is still in
    assert cb.metrics().calls == 1
    clock.advance(100)
    assert cb.metrics().calls == 0
    cb.call(ok)
    assert cb.metrics().calls == 1


async def test_slow_calls_trip_on_their_own(mode: str, store_kind: str) -> None:
    """Successful but slow calls reach the slow-call ratio and open the breaker."""
    clock = FakeClock()
    cb = breaker(
        store_kind,
        minimum_calls=2,
        window_calls=10,
        slow_call_seconds=1,
        slow_call_ratio=0.5,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(1.5)
        return "slow"

    def just_in_time() -> str:
        clock.advance(1.0)  # not slower than the limit
        return "fine"

    assert await outcome(mode, cb, just_in_time) == "fine"
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.metrics().slow_calls == 0
    assert await outcome(mode, cb, slow) == "slow"  # 1 slow of 3
    assert cb.state is CircuitState.CLOSED
    assert await outcome(mode, cb, slow) == "slow"  # 2 of 4
    assert cb.state is CircuitState.OPEN
    metrics = cb.metrics()
    assert metrics.slow_calls == 2
    assert metrics.slow_call_ratio == 0.5
    assert metrics.failures == 0


async def test_what_counts(mode: str, store_kind: str) -> None:
    """failure_on, ignore and failure_result decide what is a failure."""
    cb = breaker(
        store_kind,
        consecutive_failures=2,
        failure_on=(ConnectionError, ValueError),
        ignore=lambda error: isinstance(error, ValueError) and "ignore" in str(error),
        failure_result=lambda result: result is None,
    )

    def ignored() -> None:
        raise ValueError("ignore me")

    def not_a_failure() -> None:
        raise KeyError("not listed")

    for fn in (fail, ignored, not_a_failure):
        await outcome(mode, cb, fn)
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures, metrics.consecutive_failures) == (2, 1, 0)
    await outcome(mode, cb, fail)
    assert cb.state is CircuitState.CLOSED
    assert await outcome(mode, cb, lambda: None) == "None"  # a bad result is a failure
    assert cb.state is CircuitState.OPEN


async def test_control_flow_never_counts(mode: str, store_kind: str) -> None:
    """KeyboardInterrupt (and cancellation) passes through and counts neither way."""
    cb = breaker(store_kind, consecutive_failures=1)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await run_yielding(mode, cb, interrupted)
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures, metrics.state) == (0, 0, CircuitState.CLOSED)


async def test_a_failing_predicate_raises_and_counts_nothing(mode: str) -> None:
    """An error in failure_result reaches the caller and leaves the window untouched."""

    def broken(result: object) -> bool:
        raise RuntimeError("bad predicate")

    cb = rs.CircuitBreaker(failure_result=broken)
    with pytest.raises(RuntimeError, match="bad predicate"):
        await run_yielding(mode, cb, ok)
    assert cb.metrics().calls == 0


# -- open, half-open ---------------------------------------------------------------------


async def test_open_rejects_with_retry_after_then_half_opens(
    mode: str, store_kind: str, clock: FakeClock
) -> None:
    """An open breaker rejects until its break ends; then one trial closes it."""
    calls: list[str] = []

    def counted() -> str:
        calls.append("in")
        return "ok"

    cb = breaker(store_kind, consecutive_failures=1, open_seconds=10, clock=clock, name="db")
    await outcome(mode, cb, fail)
    clock.advance(4)
    with pytest.raises(rs.CircuitOpenError) as caught:
        await run_yielding(mode, cb, counted)
    assert calls == []
    assert caught.value.retry_after == 6.0
    assert caught.value.name == "db"
    assert "circuit breaker 'db' is open (next trial in 6s)" in str(caught.value)
    assert cb.metrics().retry_after == 6.0
    clock.advance(6)
    assert cb.state is CircuitState.OPEN  # turns half-open lazily, at the next call
    assert await outcome(mode, cb, counted) == "ok"
    assert cb.state is CircuitState.CLOSED
    metrics = cb.metrics()
    assert (metrics.calls, metrics.rejected, metrics.trips) == (0, 1, 1)


async def test_a_failed_trial_reopens_with_a_growing_break(mode: str, store_kind: str) -> None:
    """Each trip in a row lasts longer, up to the strategy's maximum; closing resets it."""
    clock = FakeClock()
    cb = breaker(
        store_kind,
        consecutive_failures=1,
        open_seconds=backoff.exponential(10, base=2, maximum=30),
        clock=clock,
    )
    retry_afters = []
    await outcome(mode, cb, fail)
    for _ in range(4):
        retry_afters.append(cb.metrics().retry_after)
        clock.advance(100)
        await outcome(mode, cb, fail)  # the trial fails
    assert retry_afters == [10.0, 20.0, 30.0, 30.0]
    clock.advance(100)
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.state is CircuitState.CLOSED
    await outcome(mode, cb, fail)
    assert cb.metrics().retry_after == 10.0


async def test_a_slow_trial_reopens(mode: str, store_kind: str) -> None:
    """A trial slower than slow_call_seconds counts as a failed trial."""
    clock = FakeClock()
    cb = breaker(store_kind, consecutive_failures=1, slow_call_seconds=1, clock=clock)

    def slow() -> str:
        clock.advance(2)
        return "slow"

    await outcome(mode, cb, fail)
    clock.advance(30)
    assert await outcome(mode, cb, slow) == "slow"
    assert cb.state is CircuitState.OPEN


async def test_half_open_needs_all_its_trials(mode: str, store_kind: str) -> None:
    """With half_open_calls=3, three successful trials in a row close the breaker."""
    clock = FakeClock()
    cb = breaker(store_kind, consecutive_failures=1, half_open_calls=3, clock=clock)
    await outcome(mode, cb, fail)
    clock.advance(30)
    for _ in range(2):
        assert await outcome(mode, cb, ok) == "ok"
        assert cb.state is CircuitState.HALF_OPEN
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.state is CircuitState.CLOSED


async def test_half_open_rejects_beyond_its_trials(store_kind: str) -> None:
    """While its trial is in flight, a half-open breaker rejects other calls."""
    clock = FakeClock()
    cb = breaker(store_kind, consecutive_failures=1, clock=clock)
    await outcome("async", cb, fail)
    clock.advance(30)
    release = asyncio.Event()

    async def held() -> str:
        await release.wait()
        return "trial"

    trial = asyncio.create_task(cb.acall(held))
    await asyncio.sleep(0)
    assert cb.state is CircuitState.HALF_OPEN
    with pytest.raises(rs.CircuitOpenError, match="half-open") as caught:
        await cb.acall(held)
    assert caught.value.retry_after is None
    release.set()
    assert await trial == "trial"
    assert cb.state is CircuitState.CLOSED


async def test_an_ignored_trial_hands_its_slot_back(mode: str, store_kind: str) -> None:
    """An ignored error during half-open frees the trial slot for the next call."""
    clock = FakeClock()
    cb = breaker(store_kind, consecutive_failures=1, ignore=KeyError, clock=clock)

    def ignored() -> None:
        raise KeyError("x")

    await outcome(mode, cb, fail)
    clock.advance(30)
    assert await outcome(mode, cb, ignored) == "KeyError"
    assert cb.state is CircuitState.HALF_OPEN
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.state is CircuitState.CLOSED


# -- manual control ------------------------------------------------------------------------


async def test_isolate_disable_reset(mode: str, store_kind: str, clock: FakeClock) -> None:
    """isolate() rejects everything, disable() admits and measures, reset() clears."""
    cb = breaker(store_kind, consecutive_failures=1, clock=clock, name="pay")
    cb.isolate()
    assert cb.state is CircuitState.ISOLATED
    with pytest.raises(rs.CircuitOpenError, match="'pay' is isolated") as caught:
        await run_yielding(mode, cb, ok)
    assert caught.value.retry_after is None
    clock.advance(1000)
    assert await outcome(mode, cb, ok) == "rejected"  # no break ends an isolation

    cb.disable()
    for _ in range(3):
        assert await outcome(mode, cb, fail) == "ConnectionError"
    assert cb.state is CircuitState.DISABLED
    assert cb.metrics().failures == 3

    cb.reset()
    metrics = cb.metrics()
    assert metrics.state is CircuitState.CLOSED
    assert (metrics.calls, metrics.failures, metrics.consecutive_failures) == (0, 0, 0)
    assert await outcome(mode, cb, ok) == "ok"


def test_a_store_refuses_to_force_open_or_half_open() -> None:
    """OPEN and HALF_OPEN come from the rules only, never by hand."""
    store = rs.stores.MemoryCircuitStore()
    rs.CircuitBreaker(store=store)
    with pytest.raises(ValueError, match="state must be CLOSED, ISOLATED or DISABLED"):
        store.transition(CircuitState.OPEN)


async def test_a_call_admitted_before_a_reset_does_not_move_the_new_state() -> None:
    """A failure that started before reset() is not counted afterwards."""
    cb = rs.CircuitBreaker(consecutive_failures=1)
    started = asyncio.Event()
    release = asyncio.Event()

    async def late_failure() -> None:
        started.set()
        await release.wait()
        raise ConnectionError("late")

    task = asyncio.create_task(cb.acall(late_failure))
    await started.wait()
    cb.reset()
    release.set()
    with pytest.raises(ConnectionError):
        await task
    assert cb.state is CircuitState.CLOSED
    assert cb.metrics().failures == 0


# -- listeners --------------------------------------------------------------------------------


async def test_listeners_see_transitions_and_outcomes(mode: str, store_kind: str) -> None:
    """on_state_change and on_outcome hear every change and every call."""
    clock = FakeClock()
    changes: list[rs.events.CircuitStateChange] = []
    outcomes: list[rs.events.CircuitOutcome] = []
    cb = breaker(
        store_kind,
        consecutive_failures=1,
        ignore=KeyError,
        open_seconds=5,
        on_state_change=changes.append,
        on_outcome=outcomes.append,
        clock=clock,
        name="n",
    )

    def ignored() -> None:
        raise KeyError

    await outcome(mode, cb, ok)
    await outcome(mode, cb, ignored)
    await outcome(mode, cb, fail)
    await outcome(mode, cb, ok)
    clock.advance(5)
    seen_during_trial: list[str] = []
    await outcome(mode, cb, lambda: seen_during_trial.append(changes[-1].new.value))
    assert seen_during_trial == ["half_open"]  # reported before the trial ran
    assert [(c.old.value, c.new.value, c.at) for c in changes] == [
        ("closed", "open", 0.0),
        ("open", "half_open", 5.0),
        ("half_open", "closed", 5.0),
    ]
    assert [o.outcome for o in outcomes] == ["success", "ignored", "failure", "rejected", "success"]
    assert all(o.name == "n" for o in outcomes)
    assert isinstance(outcomes[2].error, ConnectionError)
    assert isinstance(outcomes[3].error, rs.CircuitOpenError)


async def test_failing_listeners_never_break_a_call(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the call's own outcome stands."""

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    cb = rs.CircuitBreaker(consecutive_failures=1, on_state_change=broken, on_outcome=broken)
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert await outcome(mode, cb, ok) == "ok"
        assert await outcome(mode, cb, fail) == "ConnectionError"
    assert cb.state is CircuitState.OPEN
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_outcome listener" in m for m in messages)
    assert any("on_state_change listener" in m for m in messages)


# -- in pipelines --------------------------------------------------------------------------------


async def test_retry_outside_the_breaker_waits_its_retry_after(mode: str) -> None:
    """Retry honours the rejection's retry_after and gets through after the break."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(consecutive_failures=1, open_seconds=7, clock=clock)
    pipeline = rs.Pipeline(
        [rs.Retry(3, on=(ConnectionError, rs.CircuitOpenError), backoff=0, clock=clock), cb]
    )
    results = iter([ConnectionError("once"), "recovered"])

    def flaky() -> str:
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    assert await run_yielding(mode, pipeline, flaky) == "recovered"
    assert clock.sleeps == [0.0, 7.0]  # then the rejected attempt waited its retry_after


async def test_fallback_serves_while_the_breaker_is_open(mode: str) -> None:
    """Fallback outside the breaker turns rejections into a default answer."""
    cb = rs.CircuitBreaker(consecutive_failures=1)
    pipeline = rs.Pipeline([rs.Fallback(value="cached"), cb])
    assert await run_yielding(mode, pipeline, fail) == "cached"
    assert cb.state is CircuitState.OPEN
    assert await run_yielding(mode, pipeline, ok) == "cached"
    assert cb.metrics().rejected == 1


def test_decorator_keeps_the_signature() -> None:
    """A decorated function keeps its name, signature and sync or async nature."""
    cb = rs.CircuitBreaker()

    @cb
    def add(a: int, b: int = 1) -> int:
        return a + b

    @cb
    async def aadd(a: int) -> int:
        return a

    assert add(1) == 2
    assert add.__name__ == "add"
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 1) -> 'int'"
    assert inspect.iscoroutinefunction(aadd)
    assert asyncio.run(aadd(3)) == 3


# -- the review's cases: half-open counts and rules, rules that can never trip -------------


async def test_consecutive_failures_count_half_open_trials(mode: str, clock: FakeClock) -> None:
    """ "Failures since the last success", trials included (pybreaker's counter): a successful
    trial resets it, a failed one adds to it."""
    cb = rs.CircuitBreaker(consecutive_failures=2, half_open_calls=2, open_seconds=5, clock=clock)
    for _ in range(2):
        await outcome(mode, cb, fail)
    assert (cb.state, cb.metrics().consecutive_failures) == (CircuitState.OPEN, 2)
    clock.advance(5)
    assert await outcome(mode, cb, ok) == "ok"
    assert (cb.state, cb.metrics().consecutive_failures) == (CircuitState.HALF_OPEN, 0)
    assert await outcome(mode, cb, fail) == "ConnectionError"
    assert (cb.state, cb.metrics().consecutive_failures) == (CircuitState.OPEN, 1)


async def test_the_ratio_rule_judges_the_trials_together(mode: str, clock: FakeClock) -> None:
    """half_open_rule="ratio" (resilience4j): the failure ratio of all the trials decides,
    not the first failure. metrics() in half-open counts the trials only."""
    cb = rs.CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=2,
        window_calls=2,
        half_open_calls=4,
        half_open_rule="ratio",
        open_seconds=5,
        clock=clock,
    )
    assert cb.settings()["half_open_rule"] == "ratio"
    for _ in range(2):
        await outcome(mode, cb, fail)
    assert cb.state is CircuitState.OPEN
    assert (cb.metrics().calls, cb.metrics().failures) == (2, 2)  # open: the window that tripped
    clock.advance(5)
    for fn in (ok, fail, ok):  # a failed trial does not reopen under this rule
        await outcome(mode, cb, fn)
    metrics = cb.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == (CircuitState.HALF_OPEN, 3, 1)
    await outcome(mode, cb, ok)  # 1 of 4 failed: below 0.5
    assert cb.state is CircuitState.CLOSED
    for _ in range(2):
        await outcome(mode, cb, fail)
    clock.advance(5)
    for fn in (fail, ok):
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.HALF_OPEN  # 1 of 2 so far: the last two decide
    await outcome(mode, cb, fail)  # 2 of 4 whatever the last does: reaches 0.5
    assert (cb.state, cb.metrics().trips) == (CircuitState.OPEN, 3)  # closed, tripped, reopened


async def test_the_ratio_rule_decides_once_the_trials_left_cannot_change_it(
    clock: FakeClock,
) -> None:
    """With 10 trials and failure_ratio=0.6, the fifth success closes the breaker (at most 5
    failures: 0.5) while the other trials still run, and the sixth failure reopens it."""
    cb = rs.CircuitBreaker(
        failure_ratio=0.6,
        minimum_calls=5,
        window_calls=5,
        half_open_calls=10,
        half_open_rule="ratio",
        open_seconds=1,
        clock=clock,
    )
    for _ in range(5):
        await outcome("async", cb, fail)
    clock.advance(1)
    release = asyncio.Event()

    async def ok_async() -> str:
        return "ok"

    async def slow_trial() -> str:
        await release.wait()
        return "late"

    hanging = [asyncio.create_task(cb.acall(slow_trial)) for _ in range(5)]
    await asyncio.sleep(0)
    assert cb.state is CircuitState.HALF_OPEN
    for count in range(1, 6):
        await cb.acall(ok_async)
        expected = CircuitState.CLOSED if count == 5 else CircuitState.HALF_OPEN
        assert cb.state is expected, count
    release.set()
    assert await asyncio.gather(*hanging) == ["late"] * 5
    assert cb.state is CircuitState.CLOSED
    # And the other way: 6 failures of 10 reopen it at the sixth, five trials still out.
    for _ in range(5):
        await outcome("async", cb, fail)
    assert cb.state is CircuitState.OPEN
    clock.advance(1)
    release = asyncio.Event()
    hanging = [asyncio.create_task(cb.acall(slow_trial)) for _ in range(4)]
    await asyncio.sleep(0)
    for count in range(1, 7):
        await outcome("async", cb, fail)
        expected = CircuitState.OPEN if count == 6 else CircuitState.HALF_OPEN
        assert cb.state is expected, count
    release.set()
    await asyncio.gather(*hanging)
    assert cb.state is CircuitState.OPEN  # the late trials belong to the old half-open


def test_the_first_failure_rule_stays_the_default() -> None:
    """With several trials, the default still reopens at the first failed one."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(consecutive_failures=1, half_open_calls=3, open_seconds=1, clock=clock)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1)
    cb.call(ok)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    assert cb.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_ratio": None}, r"^failure_ratio=None with no other rule"),
        ({"failure_on": ()}, r"^failure_on=\(\) counts no error"),
        ({"half_open_rule": "ratio", "consecutive_failures": 3}, r"^half_open_rule='ratio'"),
        ({"half_open_rule": "majority"}, r"^half_open_rule must be"),
    ],
)
def test_breakers_that_could_never_open_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """No rule, or no failure that counts, would build a breaker that never opens."""
    with pytest.raises(ValueError, match=message):
        rs.CircuitBreaker(**kwargs)


def test_a_latency_only_breaker_is_allowed() -> None:
    """failure_on=() with a slow-call rule trips on latency alone."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(
        failure_ratio=None,
        failure_on=(),
        slow_call_seconds=1,
        minimum_calls=1,
        window_calls=1,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        cb.call(fail)  # no failure counts
    assert cb.state is CircuitState.CLOSED

    def slow() -> str:
        clock.advance(2)
        return "late"

    cb.call(slow)
    assert cb.state is CircuitState.OPEN


# -- runtime updates ----------------------------------------------------------------------


def test_settings_are_read_only() -> None:
    """Assigning a threshold used to change nothing: now it points to update()."""
    cb = rs.CircuitBreaker()
    for attribute in ("failure_ratio", "minimum_calls", "open_seconds", "store", "failure_on"):
        with pytest.raises(AttributeError, match=rf"^CircuitBreaker.{attribute} is read-only"):
            setattr(cb, attribute, 1)


async def test_update_changes_thresholds_and_keeps_the_window(
    mode: str, store_kind: str, clock: FakeClock
) -> None:
    """A lower ratio trips a closed breaker at once when the window already breaks it."""
    cb = breaker(store_kind, failure_ratio=0.9, minimum_calls=4, window_calls=10, clock=clock)
    for fn in (fail, fail, ok, ok):
        await outcome(mode, cb, fn)
    assert cb.state is CircuitState.CLOSED
    cb.update(failure_ratio=0.5)
    assert (cb.failure_ratio, cb.state) == (0.5, CircuitState.OPEN)
    assert cb.metrics().calls == 4


async def test_update_of_the_break_and_trials(mode: str, clock: FakeClock) -> None:
    """open_seconds and half_open_calls take effect from the next trip and trial."""
    cb = rs.CircuitBreaker(consecutive_failures=1, open_seconds=10, clock=clock)
    cb.update(open_seconds=2, half_open_calls=2)
    assert cb.half_open_max_seconds == 2  # the default bound follows the break
    await outcome(mode, cb, fail)
    assert cb.metrics().retry_after == 2
    clock.advance(2)
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.state is CircuitState.HALF_OPEN  # a second trial is needed now
    assert await outcome(mode, cb, ok) == "ok"
    assert cb.state is CircuitState.CLOSED


def half_open_after(
    cb: rs.CircuitBreaker, clock: FakeClock, failures: int, trials: tuple[Any, ...]
) -> None:
    """Trip ``cb`` with ``failures``, wait out its break of 1 s, run ``trials`` as trial calls."""
    for _ in range(failures):
        with contextlib.suppress(ConnectionError):
            cb.call(fail)
    assert cb.state is CircuitState.OPEN
    clock.advance(1)
    for fn in trials:
        with contextlib.suppress(ConnectionError):
            cb.call(fn)


@pytest.mark.parametrize("lowered", [1, 2])
def test_lowering_half_open_calls_to_the_trials_done_closes_at_once(
    store_kind: str, lowered: int
) -> None:
    """Two trials of three succeeded: asking for two (or one) trials closes the breaker on the
    update, instead of refusing every call as if the trials were still to run."""
    clock = FakeClock()
    cb = breaker(store_kind, consecutive_failures=1, half_open_calls=3, open_seconds=1, clock=clock)
    half_open_after(cb, clock, 1, (ok, ok))
    seen = transitions(cb)
    cb.update(half_open_calls=lowered)
    assert (cb.state, seen) == (CircuitState.CLOSED, [("half_open", "closed")])
    assert cb.call(ok) == "ok"


def test_lowering_half_open_calls_under_the_ratio_rule_judges_the_trials_done() -> None:
    """The ratio rule judges the trials done at the update: 2 failed of 4 reopens; later, 1
    failed of 3 closes though only 2 trials are asked for (the ratio is of all trials done)."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=2,
        window_calls=2,
        half_open_calls=6,
        half_open_rule="ratio",
        open_seconds=1,
        clock=clock,
    )
    half_open_after(cb, clock, 2, (fail, fail, ok, ok))
    assert cb.state is CircuitState.HALF_OPEN  # 2 of 6 so far: the last two decide
    cb.update(half_open_calls=4)
    assert (cb.state, cb.metrics().trips) == (CircuitState.OPEN, 2)
    clock.advance(1)
    for fn in (fail, ok, ok):
        with contextlib.suppress(ConnectionError):
            cb.call(fn)
    assert cb.state is CircuitState.HALF_OPEN  # 1 of 4 so far: the last one decides
    cb.update(half_open_calls=2)
    assert cb.state is CircuitState.CLOSED


def test_raising_half_open_calls_while_half_open_admits_more_trials(clock: FakeClock) -> None:
    cb = rs.CircuitBreaker(consecutive_failures=1, half_open_calls=2, open_seconds=1, clock=clock)
    half_open_after(cb, clock, 1, (ok,))
    cb.update(half_open_calls=3)
    assert cb.state is CircuitState.HALF_OPEN
    for _ in range(2):
        assert cb.state is CircuitState.HALF_OPEN
        assert cb.call(ok) == "ok"
    assert cb.state is CircuitState.CLOSED


def test_trials_out_when_half_open_calls_is_lowered_decide_as_they_end(clock: FakeClock) -> None:
    """One trial done, two out, one trial asked for: the breaker waits for the trials out, and
    closes when the last of them is given back (once: a later trip is told once too)."""
    cb = rs.CircuitBreaker(consecutive_failures=1, half_open_calls=3, open_seconds=1, clock=clock)
    half_open_after(cb, clock, 1, (ok,))
    first, second = cb.store.acquire(), cb.store.acquire()
    assert min(first, second) >= 0
    seen = transitions(cb)
    cb.update(half_open_calls=1)
    assert cb.state is CircuitState.HALF_OPEN
    cb.store.release(first)
    assert cb.state is CircuitState.HALF_OPEN  # a trial still out
    cb.store.release(second)
    assert cb.state is CircuitState.CLOSED
    with pytest.raises(ConnectionError):
        cb.call(fail)
    assert seen == [("half_open", "closed"), ("closed", "open")]


def test_update_of_the_window_size_starts_it_empty() -> None:
    """A window of another size starts empty; a window kind cannot change."""
    cb = rs.CircuitBreaker(minimum_calls=2, window_calls=5, clock=FakeClock())
    cb.call(ok)
    cb.update(window_calls=8)
    assert (cb.window_calls, cb.metrics().calls) == (8, 0)
    with pytest.raises(ValueError, match=r"cannot switch between a count and a time window"):
        cb.update(window_seconds=10)
    with pytest.raises(ValueError, match=r"slow-call rule on or off"):
        cb.update(slow_call_seconds=1)
    with pytest.raises(ValueError, match=r"^minimum_calls must be <= window_calls \(8\)"):
        cb.update(minimum_calls=9)
    with pytest.raises(TypeError, match=r"update\(\) takes the thresholds"):
        cb.update(failure_on=ValueError)
    assert cb.minimum_calls == 2


def test_a_store_that_cannot_change_its_rules_says_so() -> None:
    """A custom store without reconfigure() refuses update() clearly."""

    class Fixed(rs.stores.CircuitStore):
        def configure(self, rules: Any, clock: Any, notify: Any) -> None:
            pass

        def acquire(self) -> int:
            return 0

        def record(self, permit: int, outcome: int, now: float) -> None:
            pass

        def release(self, permit: int) -> None:
            pass

        def state(self) -> CircuitState:
            return CircuitState.CLOSED

        def retry_after(self) -> float | None:
            return None

        def transition(self, state: CircuitState) -> None:
            pass

        def metrics(self) -> rs.metrics.CircuitMetrics:
            raise NotImplementedError

    cb = rs.CircuitBreaker(store=Fixed())
    with pytest.raises(NotImplementedError, match=r"Fixed cannot change its rules"):
        cb.update(failure_ratio=0.2)
    assert cb.failure_ratio == 0.5


# -- holes a mutation run found in the state machine ---------------------------------------


def transitions(cb: rs.CircuitBreaker) -> list[tuple[str, str]]:
    """Subscribe to ``cb``: the list of (old, new) state values it will receive."""
    seen: list[tuple[str, str]] = []
    cb.subscribe(lambda event: seen.append((event.old.value, event.new.value)))
    return seen


def test_manual_controls_notify_listeners_exactly_once(store_kind: str) -> None:
    """isolate(), disable() and reset() each send one state change to every listener."""
    heard: list[tuple[str, str]] = []
    cb = breaker(
        store_kind,
        consecutive_failures=1,
        on_state_change=lambda e: heard.append((e.old.value, e.new.value)),
        clock=FakeClock(),
    )
    seen = transitions(cb)
    cb.isolate()
    cb.disable()
    cb.reset()
    expected = [("closed", "isolated"), ("isolated", "disabled"), ("disabled", "closed")]
    assert seen == expected
    assert heard == expected


def test_an_update_that_trips_notifies_once_and_uses_the_first_break(store_kind: str) -> None:
    """update() that opens a closed breaker: one event, and the first break of a growing one."""
    clock = FakeClock()
    cb = breaker(
        store_kind,
        failure_ratio=0.9,
        minimum_calls=2,
        window_calls=2,
        open_seconds=backoff.exponential(2.0, maximum=60.0),
        clock=clock,
    )
    seen = transitions(cb)
    for fn in (fail, ok):
        with contextlib.suppress(ConnectionError):
            cb.call(fn)
    cb.update(failure_ratio=0.75)  # 1 of 2 failed: still below
    assert (cb.state, seen) == (CircuitState.CLOSED, [])
    cb.update(failure_ratio=0.5)
    assert seen == [("closed", "open")]
    assert cb.metrics().retry_after == 2.0
    cb.isolate()
    assert seen == [("closed", "open"), ("open", "isolated")]  # the update's change told once
    cb.update(failure_ratio=0.1)  # only a closed breaker trips on an update
    assert cb.state is CircuitState.ISOLATED


def test_slow_calls_leave_a_time_window_as_they_expire(clock: FakeClock) -> None:
    """A time window subtracts the slow calls of the buckets it drops, not only the calls."""
    cb = rs.CircuitBreaker(
        failure_ratio=None,
        slow_call_seconds=1.0,
        slow_call_ratio=0.9,
        minimum_calls=100,
        window_seconds=3.0,
        window_buckets=3,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    cb.call(slow)  # ends at 1.5: bucket 1
    clock.advance(1.0)
    cb.call(ok)  # 2.5: bucket 2
    metrics = cb.metrics()
    assert (metrics.calls, metrics.slow_calls) == (2, 1)
    clock.advance(2.0)  # 4.5: bucket 4; bucket 1 (the slow call) has left the window
    metrics = cb.metrics()
    assert (metrics.calls, metrics.slow_calls) == (1, 0)
    clock.advance(1.0)  # 5.5: bucket 5; bucket 2 has left too
    assert (cb.metrics().calls, cb.metrics().slow_calls) == (0, 0)


def test_a_time_window_moves_bucket_by_bucket(clock: FakeClock) -> None:
    """Calls in successive buckets leave one at a time, each when its own bucket expires."""
    cb = rs.CircuitBreaker(minimum_calls=100, window_seconds=4.0, window_buckets=4, clock=clock)
    counts = []
    for _ in range(4):
        with contextlib.suppress(ConnectionError):
            cb.call(fail)
        clock.advance(1.0)
        counts.append(cb.metrics().calls)
    assert counts == [1, 2, 3, 3]  # at 4.0 the call of bucket 0 has left
    for _ in range(3):
        clock.advance(1.0)
        counts.append(cb.metrics().failures)
    assert counts[4:] == [2, 1, 0]


async def test_half_open_counts_running_and_ended_trials_together(mode: str) -> None:
    """half_open_calls bounds the trials that ran plus those running: one ended, one running,
    one more admitted, then rejections."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(consecutive_failures=1, half_open_calls=3, open_seconds=1, clock=clock)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1)
    assert cb.call(ok) == "ok"  # trial 1 ended
    gate, entered = Event(), Event()

    async def held() -> str:
        entered.set()
        await gate.wait()
        return "held"

    running = create_task(cb.acall(held))  # trial 2 runs
    await entered.wait()
    assert await outcome(mode, cb, lambda: "third") == "third"  # trial 3 admitted
    assert await outcome(mode, cb, ok) == "rejected"
    assert cb.state is CircuitState.HALF_OPEN
    gate.set()
    assert await running == "held"
    assert cb.state is CircuitState.CLOSED


async def test_an_ended_trial_frees_exactly_its_own_place(mode: str) -> None:
    """After a trial ends (or is ignored), the count admits exactly the places left."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(
        consecutive_failures=1, half_open_calls=3, open_seconds=1, ignore=KeyError, clock=clock
    )
    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1)

    def ignored() -> None:
        raise KeyError("not counted")

    with pytest.raises(KeyError):
        cb.call(ignored)  # its place comes back
    assert cb.call(ok) == "ok"  # trial 1 ended: two places left
    gate, both = Event(), Event()
    running: list[str] = []

    async def held() -> str:
        running.append("held")
        if len(running) == 2:
            both.set()
        await gate.wait()
        return "held"

    tasks = [create_task(cb.acall(held)) for _ in range(2)]
    await both.wait()
    assert await outcome(mode, cb, ok) == "rejected"  # 1 ended + 2 running = 3
    gate.set()
    assert await gather(*tasks) == ["held", "held"]
    assert cb.state is CircuitState.CLOSED


async def test_a_late_release_of_an_old_trial_leaves_a_new_half_open_alone() -> None:
    """A trial of an earlier half-open state that is cancelled after the breaker reopened and
    half-opened again gives back nothing of the new state's places."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(consecutive_failures=1, half_open_calls=2, open_seconds=1, clock=clock)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1)
    entered = asyncio.Event()

    async def stuck() -> None:
        entered.set()
        await asyncio.Event().wait()

    old = asyncio.create_task(cb.acall(stuck))  # a trial of this half-open state
    await entered.wait()
    with pytest.raises(ConnectionError):
        cb.call(fail)  # the other trial fails: reopen
    clock.advance(10)
    assert cb.call(ok) == "ok"  # a new half-open state: 1 of 2 trials done
    old.cancel()  # the old trial's slot is not this state's to give back
    with pytest.raises(asyncio.CancelledError):
        await old
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "held"

    second = asyncio.create_task(cb.acall(held))
    await asyncio.sleep(0)
    with pytest.raises(rs.CircuitOpenError):
        cb.call(ok)  # 1 done + 1 running: no third trial
    gate.set()
    assert await second == "held"


def test_a_stuck_trial_reopens_with_a_longer_break(store_kind: str) -> None:
    """Trials stuck past half_open_max_seconds reopen the breaker with the next, longer break;
    a close resets the growth."""
    clock = FakeClock()
    cb = breaker(
        store_kind,
        consecutive_failures=1,
        open_seconds=backoff.exponential(1.0, maximum=100.0),
        half_open_max_seconds=5,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        cb.call(fail)
    assert cb.metrics().retry_after == 1.0
    clock.advance(1)
    permit = cb.store.acquire()  # a trial that never reports back
    assert permit >= 0
    clock.advance(5)
    with pytest.raises(rs.CircuitOpenError):
        cb.call(ok)  # the stuck trial's time is up: reopen, second break
    assert (cb.state, cb.metrics().retry_after) == (CircuitState.OPEN, 2.0)
    clock.advance(2)
    with pytest.raises(ConnectionError):
        cb.call(fail)  # a failed trial: third break
    assert cb.metrics().retry_after == 4.0
    clock.advance(4)
    cb.call(ok)  # closes: the growth starts again
    with pytest.raises(ConnectionError):
        cb.call(fail)
    assert cb.metrics().retry_after == 1.0


def test_the_ratio_rule_grows_the_break_and_judges_slow_trials() -> None:
    """Under half_open_rule="ratio", slow trials count for the slow ratio (and only they), and a
    reopening grows the break."""
    clock = FakeClock()
    cb = rs.CircuitBreaker(
        failure_ratio=0.5,
        slow_call_seconds=1.0,
        slow_call_ratio=0.5,
        minimum_calls=1,
        window_calls=1,
        half_open_calls=2,
        half_open_rule="ratio",
        open_seconds=backoff.exponential(1.0, maximum=100.0),
        clock=clock,
    )

    def slow() -> str:
        clock.advance(2)
        return "late"

    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1)
    cb.call(ok)
    cb.call(slow)  # one slow of two: reaches 0.5
    metrics = cb.metrics()
    assert (metrics.state, metrics.retry_after) == (CircuitState.OPEN, 2.0)
    clock.advance(2)
    cb.call(ok)
    assert cb.metrics().slow_calls == 0
    cb.call(ok)  # two fast trials: neither ratio reached
    assert cb.state is CircuitState.CLOSED


def test_a_call_meeting_a_state_changed_on_its_way_is_admitted() -> None:
    """The slow path finds the breaker closed again (reset while the call came): admitted
    under the new state, and its outcome counts there."""
    store = rs.stores.MemoryCircuitStore()
    cb = rs.CircuitBreaker(consecutive_failures=1, store=store, clock=FakeClock())
    with pytest.raises(ConnectionError):
        cb.call(fail)
    cb.reset()
    permit = store._acquire_slow()  # as a call that saw the breaker open a moment ago
    assert permit >= 0
    store.record(permit, rs._circuit_store.FAILURE, 0.0)
    assert (cb.state, cb.metrics().failures) == (CircuitState.OPEN, 1)


# -- the store's protocol: its lock-free lane, its codes, late reports, long gaps -----------


class CountingLock:
    """Stands in for a store's lock and counts how often it is taken."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.taken = 0

    def __enter__(self) -> Any:
        self.taken += 1
        return self.lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.lock.__exit__(*exc)


def test_closed_and_disabled_calls_take_no_lock() -> None:
    """A closed or disabled memory store admits calls and takes back the permits of ignored
    and interrupted calls without its lock, and so does a plain success once the count window
    holds minimum_calls: the lane (the successes before that are judged under the lock)."""
    store = rs.stores.MemoryCircuitStore()
    cb = rs.CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=2,
        window_calls=10,
        ignore=KeyError,
        store=store,
        clock=FakeClock(),
    )
    lock = CountingLock(store._lock)
    store._lock = lock

    def ignored() -> None:
        raise KeyError("not counted")

    def interrupted() -> None:
        raise KeyboardInterrupt

    def locks_taken(calls: Callable[[], None]) -> int:
        before = lock.taken
        calls()
        return lock.taken - before

    def admissions_and_hand_backs() -> None:
        assert store.acquire() >= 0
        with pytest.raises(KeyError):
            cb.call(ignored)
        with pytest.raises(KeyboardInterrupt):
            cb.call(interrupted)

    def successes(count: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                assert cb.call(ok) == "ok"

        return run

    assert locks_taken(admissions_and_hand_backs) == 0
    assert locks_taken(successes(2)) == 2  # the window fills up to minimum_calls
    assert locks_taken(successes(3)) == 0
    assert cb.metrics().calls == 5
    cb.isolate()
    cb.disable()
    assert locks_taken(admissions_and_hand_backs) == 0
    cb.reset()
    assert locks_taken(admissions_and_hand_backs) == 0


class RecordingStore(rs.stores.MemoryCircuitStore):
    """A memory store that keeps the outcome codes its breaker hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[int] = []

    def record(self, permit: int, outcome: int, now: float) -> None:
        self.codes.append(outcome)
        super().record(permit, outcome, now)


def test_a_store_is_handed_the_outcome_codes_the_redis_scripts_decode() -> None:
    """The outcome codes a store receives are those the Redis scripts decode and keep in a
    shared window: 1 a success, 3 a failure, 5 and 7 the same calls when slow. An open store
    answers acquire() with -1, the rejection the Redis script returns and NO_LANE's permit."""
    clock = FakeClock()
    store = RecordingStore()
    cb = rs.CircuitBreaker(
        failure_ratio=None,
        consecutive_failures=4,
        slow_call_seconds=1.0,
        window_seconds=60.0,
        store=store,
        clock=clock,
    )

    def slow_ok() -> str:
        clock.advance(2.0)
        return "ok"

    def slow_fail() -> None:
        clock.advance(2.0)
        raise ConnectionError("down")

    for fn in (ok, fail, slow_ok, slow_fail):
        with contextlib.suppress(ConnectionError):
            cb.call(fn)
    assert store.codes == [1, 3, 5, 7]
    cb.isolate()
    assert (store.acquire(), rs.stores.NO_LANE.permit) == (-1, -1)


def test_an_outcome_reported_late_counts_in_the_newest_bucket() -> None:
    """A call that ended in a bucket older than the time window's newest (its end read before
    another call moved the window on) counts in the newest bucket, and leaves with it: the
    window never moves back."""
    clock = FakeClock()
    store = rs.stores.MemoryCircuitStore()
    cb = rs.CircuitBreaker(
        failure_ratio=None,
        consecutive_failures=100,
        window_seconds=10.0,
        window_buckets=10,
        store=store,
        clock=clock,
    )
    cb.call(ok)  # at 0: bucket 0
    clock.advance(100.0)
    assert cb.metrics().calls == 0  # the window has moved on to bucket 100
    permit = store.acquire()
    store.record(permit, rs._circuit_store.FAILURE, 95.5)  # ended in bucket 95
    clock.advance(5.25)  # 105.25: buckets 96 to 105 are in the window, and 100 with them
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures) == (1, 1)
    clock.advance(5.0)  # 110.25: bucket 100 has left
    assert cb.metrics().calls == 0


def test_a_time_window_idle_for_ages_starts_empty_without_walking_the_gap(
    clock: FakeClock,
) -> None:
    """After a gap of a billion buckets the window is empty at once: a jump longer than the
    window clears it, and does not step through the buckets in between."""
    cb = rs.CircuitBreaker(minimum_calls=100, window_seconds=1.0, window_buckets=10, clock=clock)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1e8)
    assert cb.metrics().calls == 0
    with pytest.raises(ConnectionError):
        cb.call(fail)
    metrics = cb.metrics()
    assert (metrics.calls, metrics.failures) == (1, 1)


def test_a_slow_trial_counts_once_toward_the_slow_ratio_of_the_trials(clock: FakeClock) -> None:
    """Under half_open_rule="ratio", one slow trial of four is one slow call: under the 0.5 slow
    ratio, so the breaker stays half-open; a second one reaches it and reopens."""
    cb = rs.CircuitBreaker(
        failure_ratio=0.5,
        slow_call_seconds=1.0,
        slow_call_ratio=0.5,
        minimum_calls=1,
        window_calls=1,
        half_open_calls=4,
        half_open_rule="ratio",
        open_seconds=1.0,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    with pytest.raises(ConnectionError):
        cb.call(fail)
    clock.advance(1.0)
    cb.call(slow)
    metrics = cb.metrics()
    assert (metrics.state, metrics.calls, metrics.failures, metrics.slow_calls) == (
        CircuitState.HALF_OPEN,
        1,
        0,
        1,
    )
    cb.call(slow)
    assert cb.state is CircuitState.OPEN


def test_rules_without_a_window_size_keep_a_window_of_one_call() -> None:
    """Rules that give neither window_calls nor window_seconds (CircuitBreaker never builds
    them) make the smallest count window, of the last call."""
    store = rs.stores.MemoryCircuitStore()
    rules = rs.stores.CircuitRules(
        failure_ratio=1.0,
        consecutive_failures=None,
        slow_call_ratio=None,
        minimum_calls=1,
        window_calls=None,
        window_seconds=None,
        window_buckets=1,
        half_open_calls=1,
        half_open_max_seconds=1.0,
        break_seconds=lambda trips: 1.0,
    )
    store.configure(rules, FakeClock(), lambda old, new, at: None)
    for code in (rs._circuit_store.SUCCESS, rs._circuit_store.SUCCESS):
        store.record(store.acquire(), code, 0.0)
    metrics = store.metrics()
    assert (metrics.state, metrics.calls) == (CircuitState.CLOSED, 1)
    store.record(store.acquire(), rs._circuit_store.FAILURE, 0.0)
    assert store.state() is CircuitState.OPEN


@pytest.mark.redis
def test_manual_controls_act_on_a_redis_backed_breaker_as_on_a_memory_one(redis_url: str) -> None:
    """isolate(), disable() and reset() on a breaker whose state lives in Redis: the same
    states, rejections, admissions and state changes as in memory."""
    from resilience.redis import RedisBackend

    backend = RedisBackend.from_url(redis_url, prefix="circuit-manual", mode="strict")
    try:
        seen: list[tuple[str, str]] = []
        cb = rs.CircuitBreaker(
            name="manual",
            consecutive_failures=1,
            on_state_change=lambda e: seen.append((e.old.value, e.new.value)),
            backend=backend,
        )
        cb.isolate()
        with pytest.raises(rs.CircuitOpenError, match="isolated"):
            cb.call(ok)
        cb.disable()
        for _ in range(3):
            with pytest.raises(ConnectionError):
                cb.call(fail)
        assert cb.state is CircuitState.DISABLED
        cb.reset()
        assert cb.call(ok) == "ok"
        with pytest.raises(ConnectionError):
            cb.call(fail)
        assert cb.metrics().state is CircuitState.OPEN  # outcomes travel with the next request
        assert seen == [
            ("closed", "isolated"),
            ("isolated", "disabled"),
            ("disabled", "closed"),
            ("closed", "open"),
        ]
    finally:
        backend.close()
        backend.client.close()


def test_a_lane_success_of_a_call_admitted_before_a_trip_counts_nowhere() -> None:
    """A plain success of a call admitted while closed (its success on the lane) that ends
    after the breaker opened is not added to the window: the trip closed the lane."""
    cb = rs.CircuitBreaker(failure_ratio=0.5, minimum_calls=1, window_calls=10, clock=FakeClock())
    cb.call(ok)  # the window holds minimum_calls: successes take the lane

    def trips_inside() -> str:
        with pytest.raises(ConnectionError):
            cb.call(fail)  # 1 failure of 2 reaches 0.5
        assert cb.state is CircuitState.OPEN
        return "late"

    assert cb.call(trips_inside) == "late"
    metrics = cb.metrics()
    assert (metrics.state, metrics.calls, metrics.failures) == (CircuitState.OPEN, 2, 1)


def test_an_update_that_empties_the_window_judges_successes_again() -> None:
    """After an update() to another window size the window is empty, so the success that brings
    it to minimum_calls is judged again (and trips at the ratio), not appended on the lane."""
    cb = rs.CircuitBreaker(failure_ratio=0.5, minimum_calls=2, window_calls=4, clock=FakeClock())
    cb.call(ok)
    cb.call(ok)  # the lane is open
    cb.update(window_calls=3)
    with pytest.raises(ConnectionError):
        cb.call(fail)
    cb.call(ok)  # 1 failure of 2
    assert cb.state is CircuitState.OPEN


def test_the_lane_of_no_store_and_metrics_describe_themselves() -> None:
    """NO_LANE shows its permits (a rejection, and a success permit no call has); a memory
    store's metrics are not shared, and do not say so in their repr."""
    assert repr(rs.stores.NO_LANE) == "CircuitLane(permit=-1, success_permit=-2)"
    metrics = rs.CircuitBreaker(clock=FakeClock()).metrics()
    assert metrics.shared is False
    assert "shared" not in repr(metrics)


def test_a_time_bucket_reused_after_it_left_counts_only_its_new_calls(clock: FakeClock) -> None:
    """A bucket's slot, reused after its calls left the window, holds only its new calls:
    they leave in their turn, and the totals never go below zero."""
    cb = rs.CircuitBreaker(minimum_calls=100, window_seconds=2.0, window_buckets=2, clock=clock)
    clock.advance(0.5)
    counts = []
    for _ in range(2):
        with pytest.raises(ConnectionError):
            cb.call(fail)  # at 0.5, then at 2.5: the same slot
        for _ in range(2):
            clock.advance(1.0)
            counts.append(cb.metrics().failures)
    assert counts == [1, 0, 1, 0]
