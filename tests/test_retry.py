"""Tests of `resilience.Retry`, each behaviour checked for sync and async calls."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience
from modes import flavour, run
from resilience import Retry, backoff
from resilience.events import RetriesExhausted, RetryEvent
from resilience.testing import EventRecorder, FakeClock, set_testing


class Flaky:
    """A function that raises the given errors in turn, then returns ``value``; it counts calls."""

    def __init__(self, errors: list[BaseException] | None = None, value: Any = "ok") -> None:
        self.errors = list(errors or [])
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


class AlwaysFails:
    """A function that raises a new exception of ``kind`` on every call and keeps them all."""

    def __init__(self, kind: Callable[[str], BaseException] = ValueError) -> None:
        self.kind = kind
        self.raised: list[BaseException] = []

    @property
    def calls(self) -> int:
        return len(self.raised)

    def __call__(self) -> Any:
        error = self.kind(f"failure {len(self.raised) + 1}")
        self.raised.append(error)
        raise error


def notes(error: BaseException) -> list[str]:
    """The notes added to ``error`` (none when there are none)."""
    return list(getattr(error, "__notes__", []))


# -- attempts ------------------------------------------------------------------


async def test_attempts_counts_the_first_call(mode: str, clock: FakeClock) -> None:
    """attempts=3 is one call and two retries: two failures then a success returns the value."""
    fn = Flaky([ValueError("a"), ValueError("b")], value=42)
    retry = Retry(3, backoff=backoff.constant(0.5), clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == 42
    assert fn.calls == 3
    assert clock.sleeps == [0.5, 0.5]


async def test_success_at_first_call_does_not_sleep(mode: str, clock: FakeClock) -> None:
    """A first call that succeeds is made once, with no wait."""
    fn = Flaky(value="first")
    assert await run(mode, Retry(3, clock=clock), flavour(mode, fn)) == "first"
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_exhausted_attempts_raise_the_last_error_itself(mode: str, clock: FakeClock) -> None:
    """When every attempt fails, the last exception object is raised, noted with the count."""
    fn = AlwaysFails()
    retry = Retry(3, backoff=backoff.constant(0.5), clock=clock)
    with pytest.raises(ValueError, match="failure 3") as excinfo:
        await run(mode, retry, flavour(mode, fn))
    assert fn.calls == 3
    assert excinfo.value is fn.raised[-1]
    assert len(notes(excinfo.value)) == 1
    assert "3 attempts" in notes(excinfo.value)[0]
    assert notes(fn.raised[0]) == []
    assert clock.sleeps == [0.5, 0.5]


class Unrepeatable(ValueError):
    """An error that says its call must not be repeated."""

    retryable = False


@pytest.mark.parametrize("on", [Exception, ValueError, lambda error: True])
async def test_an_error_marked_not_retryable_is_never_retried(
    mode: str, clock: FakeClock, on: Any
) -> None:
    """``retryable = False`` on the error wins over ``on``; True changes nothing."""
    fn = Flaky([Unrepeatable("sent once")], value="no")
    with pytest.raises(Unrepeatable):
        await run(mode, Retry(3, on=on, backoff=0.0, clock=clock), flavour(mode, fn))
    assert fn.calls == 1
    again = ValueError("may repeat")
    again.retryable = True  # type: ignore[attr-defined]
    fn = Flaky([again], value="yes")
    assert await run(mode, Retry(3, on=on, backoff=0.0, clock=clock), flavour(mode, fn)) == "yes"
    assert fn.calls == 2


async def test_attempts_one_means_no_retry(mode: str, clock: FakeClock) -> None:
    """attempts=1 calls once and raises the error with a note saying 1 attempt."""
    fn = AlwaysFails()
    with pytest.raises(ValueError, match="failure") as excinfo:
        await run(mode, Retry(1, clock=clock), flavour(mode, fn))
    assert fn.calls == 1
    assert excinfo.value is fn.raised[0]
    assert "1 attempts" in notes(excinfo.value)[0]
    assert clock.sleeps == []


async def test_note_names_the_retry(mode: str, clock: FakeClock) -> None:
    """The give-up note carries the Retry's name when it has one."""
    fn = AlwaysFails()
    with pytest.raises(ValueError, match="failure") as excinfo:
        await run(mode, Retry(2, backoff=0.1, clock=clock, name="users"), flavour(mode, fn))
    assert "'users'" in notes(excinfo.value)[0]


async def test_sleeps_follow_a_seeded_backoff(mode: str, clock: FakeClock) -> None:
    """The waits are exactly the delays the backoff gives, in order."""
    fn = AlwaysFails()
    retry = Retry(6, backoff=backoff.exponential(0.1, jitter="full", seed=7), clock=clock)
    with pytest.raises(ValueError, match="failure"):
        await run(mode, retry, flavour(mode, fn))
    expected = list(backoff.exponential(0.1, jitter="full", seed=7).delays(5))
    assert clock.sleeps == expected
    assert len(set(expected)) == 5


async def test_decorrelated_backoff_gets_the_previous_wait(mode: str, clock: FakeClock) -> None:
    """Retry feeds each wait back as `previous`, so decorrelated jitter grows as it should."""
    fn = AlwaysFails()
    retry = Retry(8, backoff=backoff.decorrelated(1.0, maximum=1e6, seed=11), clock=clock)
    with pytest.raises(ValueError, match="failure"):
        await run(mode, retry, flavour(mode, fn))
    assert clock.sleeps == list(backoff.decorrelated(1.0, maximum=1e6, seed=11).delays(7))
    assert max(clock.sleeps) > 3.0  # beyond what `previous = 0` would ever give


@settings(max_examples=40, deadline=None, derandomize=True)
@given(attempts=st.integers(min_value=1, max_value=8), failures=st.integers(0, 10))
def test_calls_are_failures_plus_one_up_to_attempts(attempts: int, failures: int) -> None:
    """With k failures before a success, Retry(n) makes min(k + 1, n) calls and waits one less."""
    clock = FakeClock()
    fn = Flaky([ValueError(str(i)) for i in range(failures)], value="done")
    retry = Retry(attempts, backoff=backoff.constant(0.25), clock=clock)
    if failures < attempts:
        assert retry.call(fn) == "done"
    else:
        with pytest.raises(ValueError, match=str(attempts - 1)):
            retry.call(fn)
    assert fn.calls == min(failures + 1, attempts)
    assert clock.sleeps == [0.25] * (fn.calls - 1)


# -- which exceptions are retried ------------------------------------------------


def _has_again(error: BaseException) -> bool:
    return "again" in str(error)


RETRYABLE = [
    pytest.param(ValueError, ValueError("x"), KeyError("x"), id="type"),
    pytest.param((ValueError, KeyError), KeyError("x"), TypeError("x"), id="tuple"),
    pytest.param([ValueError, KeyError], ValueError("x"), TypeError("x"), id="list"),
    pytest.param(_has_again, RuntimeError("try again"), RuntimeError("fatal"), id="predicate"),
    pytest.param(OSError, ConnectionResetError("x"), ValueError("x"), id="subclass"),
]


@pytest.mark.parametrize(("on", "matching", "other"), RETRYABLE)
async def test_on_selects_the_retried_exceptions(
    mode: str, clock: FakeClock, on: Any, matching: Exception, other: Exception
) -> None:
    """An exception that `on` accepts is retried until attempts run out."""
    fn = Flaky([matching, matching], value="ok")
    assert await run(mode, Retry(3, on=on, backoff=0.5, clock=clock), flavour(mode, fn)) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == [0.5, 0.5]


@pytest.mark.parametrize(("on", "matching", "other"), RETRYABLE)
async def test_non_matching_exception_is_raised_at_once(
    mode: str, clock: FakeClock, on: Any, matching: Exception, other: Exception
) -> None:
    """An exception that `on` rejects propagates after one call, without a wait or a note."""
    fn = Flaky([other], value="ok")
    with pytest.raises(type(other)) as excinfo:
        await run(mode, Retry(3, on=on, backoff=0.5, clock=clock), flavour(mode, fn))
    assert excinfo.value is other
    assert fn.calls == 1
    assert clock.sleeps == []
    assert notes(other) == []


async def test_non_matching_exception_on_a_retry_stops_at_once(mode: str, clock: FakeClock) -> None:
    """A non-retryable error on a later attempt ends the call there, without a note."""
    fatal = KeyError("fatal")
    fn = Flaky([ValueError("a"), fatal], value="ok")
    with pytest.raises(KeyError) as excinfo:
        await run(mode, Retry(5, on=ValueError, backoff=0.5, clock=clock), flavour(mode, fn))
    assert excinfo.value is fatal
    assert fn.calls == 2
    assert clock.sleeps == [0.5]
    assert notes(fatal) == []


CONTROL_FLOW = [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]


@pytest.mark.parametrize("kind", CONTROL_FLOW, ids=lambda k: k.__name__)
@pytest.mark.parametrize(
    "on", [BaseException, (BaseException,), lambda error: True], ids=["type", "tuple", "predicate"]
)
async def test_control_flow_is_never_retried(
    mode: str, clock: FakeClock, kind: type[BaseException], on: Any
) -> None:
    """KeyboardInterrupt, SystemExit, GeneratorExit and CancelledError pass through at once."""
    signal = kind()
    fn = Flaky([signal], value="ok")
    with pytest.raises(kind) as excinfo:
        await run(mode, Retry(3, on=on, backoff=0.5, clock=clock), flavour(mode, fn))
    assert excinfo.value is signal
    assert fn.calls == 1
    assert clock.sleeps == []
    assert notes(signal) == []


REJECTIONS = [
    resilience.CircuitOpenError,
    resilience.ThrottledError,
    resilience.BulkheadFullError,
    resilience.RejectedError,
]


@pytest.mark.parametrize("kind", REJECTIONS, ids=lambda k: k.__name__)
async def test_rejections_are_not_retried_by_default(
    mode: str, clock: FakeClock, kind: type[resilience.RejectedError]
) -> None:
    """The library's own rejections are not retried under the default on=Exception."""
    rejection = kind("x")
    fn = Flaky([rejection], value="ok")
    with pytest.raises(kind) as excinfo:
        await run(mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, fn))
    assert excinfo.value is rejection
    assert fn.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("kind", REJECTIONS, ids=lambda k: k.__name__)
async def test_rejections_are_retried_when_named(
    mode: str, clock: FakeClock, kind: type[resilience.RejectedError]
) -> None:
    """A rejection named in `on` (alone or in a tuple) is retried like any other error."""
    for on in (kind, (KeyError, kind)):
        fn = Flaky([kind("x"), kind("y")], value="ok")
        assert await run(mode, Retry(3, on=on, backoff=0.5, clock=clock), flavour(mode, fn)) == "ok"
        assert fn.calls == 3


async def test_naming_one_rejection_does_not_admit_the_others(mode: str, clock: FakeClock) -> None:
    """on=(Exception, ThrottledError) retries throttling but still not an open circuit."""
    retry = Retry(3, on=(Exception, resilience.ThrottledError), backoff=0.5, clock=clock)
    throttled = Flaky([resilience.ThrottledError("x")], value="ok")
    assert await run(mode, retry, flavour(mode, throttled)) == "ok"
    assert throttled.calls == 2
    circuit = Flaky([resilience.CircuitOpenError("x")], value="ok")
    with pytest.raises(resilience.CircuitOpenError):
        await run(mode, retry, flavour(mode, circuit))
    assert circuit.calls == 1


async def test_naming_rejected_error_admits_every_rejection(mode: str, clock: FakeClock) -> None:
    """on=RejectedError retries each of its subclasses."""
    errors: list[BaseException] = [kind("x") for kind in REJECTIONS[:3]]
    fn = Flaky(errors, value="ok")
    retry = Retry(4, on=resilience.RejectedError, backoff=0.5, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert fn.calls == 4


# -- on_result -----------------------------------------------------------------


async def test_on_result_retries_while_true(mode: str, clock: FakeClock) -> None:
    """A result for which on_result is True is retried; the first other result is returned."""
    results = iter([None, None, 7])
    calls: list[int] = []

    def fn() -> Any:
        calls.append(1)
        return next(results)

    retry = Retry(5, on_result=lambda r: r is None, backoff=0.5, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == 7
    assert len(calls) == 3
    assert clock.sleeps == [0.5, 0.5]


async def test_on_result_returns_the_last_result_when_attempts_run_out(
    mode: str, clock: FakeClock
) -> None:
    """When every result is rejected, the last one is returned and nothing is raised."""
    results = iter(["a", "b", "c", "d"])
    retry = Retry(3, on_result=lambda r: r != "ok", backoff=0.5, clock=clock)
    assert await run(mode, retry, flavour(mode, lambda: next(results))) == "c"
    assert next(results) == "d"
    assert clock.sleeps == [0.5, 0.5]


async def test_on_result_and_errors_mix(mode: str, clock: FakeClock) -> None:
    """An error, then a rejected result, then a good one: three calls, one value."""
    outcomes: list[Any] = [ValueError("x"), "bad", "good"]

    def fn() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retry = Retry(3, on_result=lambda r: r == "bad", backoff=0.5, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "good"
    assert outcomes == []


# -- retry_after -----------------------------------------------------------------


class Hinted(Exception):
    """An error that tells how long to wait before trying again."""

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


async def test_retry_after_hint_lengthens_the_wait(mode: str, clock: FakeClock) -> None:
    """retry_after=5.0 makes the next wait 5.0 although the backoff says 0.5."""
    fn = Flaky([Hinted(5.0)], value="ok")
    assert await run(mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, fn)) == "ok"
    assert clock.sleeps == [5.0]


async def test_smaller_retry_after_hint_does_not_shorten_the_wait(
    mode: str, clock: FakeClock
) -> None:
    """retry_after below the backoff delay leaves the backoff delay in place."""
    fn = Flaky([Hinted(0.1), Hinted(3)], value="ok")
    assert await run(mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.5, 3.0]


@pytest.mark.parametrize("hint", [True, math.nan, math.inf, "10", None, -4.0])
async def test_unusable_retry_after_hints_are_ignored(
    mode: str, clock: FakeClock, hint: object
) -> None:
    """A bool, NaN, inf, str, None or negative retry_after leaves the backoff delay alone."""
    fn = Flaky([Hinted(hint)], value="ok")
    assert await run(mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.5]


async def test_rejection_retry_after_is_honoured(mode: str, clock: FakeClock) -> None:
    """A named rejection's retry_after is the least wait before the next attempt."""
    fn = Flaky([resilience.ThrottledError("slow down", retry_after=2.5)], value="ok")
    retry = Retry(3, on=resilience.ThrottledError, backoff=0.5, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [2.5]


async def test_a_negative_zero_hint_is_no_hint(mode: str, clock: FakeClock) -> None:
    """retry_after=-0.0 leaves a zero backoff's wait as it is: +0.0, not the hint's -0.0."""
    fn = Flaky([Hinted(-0.0)], value="ok")
    assert await run(mode, Retry(3, backoff=0.0, clock=clock), flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.0]
    assert math.copysign(1.0, clock.sleeps[0]) == 1.0


# -- max_delay ----------------------------------------------------------------------


async def test_max_delay_caps_the_backoff_and_the_hint(mode: str, clock: FakeClock) -> None:
    """max_delay=2 shortens a 5 s backoff and a 30 s retry_after to 2 s; shorter waits stay."""
    fn = Flaky([ValueError("a"), Hinted(30.0)], value="ok")
    retry = Retry(3, backoff=backoff.constant(5.0), max_delay=2, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [2.0, 2.0]
    fn = Flaky([ValueError("a"), Hinted(1.5)], value="ok")
    retry = Retry(3, backoff=backoff.constant(0.5), max_delay=2, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [2.0, 2.0, 0.5, 1.5]


async def test_max_delay_zero_retries_at_once(mode: str, clock: FakeClock) -> None:
    """max_delay=0 (or timedelta(0)) is allowed: every retry follows its failure without a wait."""
    for cap in (0, timedelta(0)):
        fn = Flaky([ValueError("a"), Hinted(3.0)], value="ok")
        retry = Retry(3, backoff=0.5, max_delay=cap, clock=clock)
        assert retry.max_delay == 0.0
        assert await run(mode, retry, flavour(mode, fn)) == "ok"
        assert fn.calls == 3
    assert clock.sleeps == [0.0] * 4


async def test_a_wait_equal_to_max_delay_is_the_backoff_own(mode: str, clock: FakeClock) -> None:
    """A cap of -0.0 replaces no zero wait: the zero backoff's +0.0 is slept, not the cap."""
    fn = Flaky([ValueError("a")], value="ok")
    retry = Retry(3, backoff=0.0, max_delay=-0.0, clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.0]
    assert math.copysign(1.0, clock.sleeps[0]) == 1.0


# -- the deadline -----------------------------------------------------------------


def _timeout_outside(build: str, timeout: float, retry: Retry, clock: FakeClock) -> Any:
    """A layer that runs ``retry`` inside a Timeout, built as a Pipeline or by nesting calls."""
    limit = resilience.Timeout(timeout, clock=clock)
    if build == "pipeline":
        return resilience.Pipeline.builder().add(limit).add(retry).build()
    return _Nested(limit, retry)


class _Nested(resilience.Middleware):
    """Not a real layer: runs ``inner.call`` inside ``outer.call`` (and the async twins)."""

    def __init__(self, outer: resilience.Middleware, inner: resilience.Middleware) -> None:
        self.outer, self.inner = outer, inner

    def wrap(self, next: Any, /) -> Any:
        raise AssertionError("unreachable")

    def awrap(self, next: Any, /) -> Any:
        raise AssertionError("unreachable")

    def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self.outer.call(self.inner.call, fn, *args, **kwargs)

    async def acall(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return await self.outer.acall(self.inner.acall, fn, *args, **kwargs)


@pytest.mark.parametrize("build", ["pipeline", "nested"])
async def test_retry_stops_before_crossing_the_deadline(
    mode: str, clock: FakeClock, build: str
) -> None:
    """Inside Timeout(1.0) with 0.4s waits, the third failure is raised at once (0.8 + 0.4 > 1)."""
    fn = AlwaysFails()
    retry = Retry(10, backoff=backoff.constant(0.4), clock=clock)
    policy = _timeout_outside(build, 1.0, retry, clock)
    with pytest.raises(ValueError, match="failure") as excinfo:
        await run(mode, policy, flavour(mode, fn))
    assert fn.calls == 3
    assert excinfo.value is fn.raised[-1]
    assert clock.sleeps == [0.4, 0.4]
    assert sum(clock.sleeps) <= 1.0
    (note,) = notes(excinfo.value)
    assert "deadline" in note
    assert "3 attempt" in note


@pytest.mark.parametrize(
    ("limit", "delay", "waits"),
    [(1.0, 0.25, 3), (2.0, 0.5, 3), (0.5, 0.75, 0), (4.0, 1.0, 3), (1.0, 0.125, 7)],
)
async def test_total_wait_never_exceeds_the_timeout(
    mode: str, clock: FakeClock, limit: float, delay: float, waits: int
) -> None:
    """Retry only waits when the wait ends strictly before the deadline."""
    fn = AlwaysFails()
    policy = _timeout_outside("pipeline", limit, Retry(50, backoff=delay, clock=clock), clock)
    with pytest.raises(ValueError, match="failure") as excinfo:
        await run(mode, policy, flavour(mode, fn))
    assert clock.sleeps == [delay] * waits
    assert sum(clock.sleeps) < limit
    assert fn.calls == waits + 1
    assert "deadline" in notes(excinfo.value)[0]


async def test_retry_after_hint_past_the_deadline_stops(mode: str, clock: FakeClock) -> None:
    """A retry_after longer than the time left ends the retries instead of oversleeping."""
    error = Hinted(30.0)
    fn = Flaky([error], value="ok")
    policy = _timeout_outside("pipeline", 10.0, Retry(3, backoff=0.5, clock=clock), clock)
    with pytest.raises(Hinted) as excinfo:
        await run(mode, policy, flavour(mode, fn))
    assert excinfo.value is error
    assert fn.calls == 1
    assert clock.sleeps == []
    assert "deadline" in notes(error)[0]


async def test_deadline_with_on_result_returns_the_last_result(mode: str, clock: FakeClock) -> None:
    """When the deadline stops on_result retries, the last result is returned."""
    results = iter(range(100))
    retry = Retry(10, on_result=lambda r: True, backoff=0.4, clock=clock)
    policy = _timeout_outside("pipeline", 1.0, retry, clock)
    assert await run(mode, policy, flavour(mode, lambda: next(results))) == 2
    assert clock.sleeps == [0.4, 0.4]


# -- the call context -------------------------------------------------------------


async def test_current_attempt_counts_up(mode: str, clock: FakeClock) -> None:
    """current().attempt reads 1, 2, 3 on successive attempts; pipeline is the Retry's name."""
    seen: list[tuple[int, str | None]] = []

    def fn() -> str:
        ctx = resilience.current()
        seen.append((ctx.attempt, ctx.pipeline))
        if ctx.attempt < 3:
            raise ValueError(ctx.attempt)
        return "ok"

    retry = Retry(3, backoff=0.5, clock=clock, name="x")
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert seen == [(1, "x"), (2, "x"), (3, "x")]
    assert resilience.current().attempt == 0


async def test_current_attempt_through_the_decorator(mode: str, clock: FakeClock) -> None:
    """The decorated form sets the same attempt numbers and pipeline name."""
    seen: list[tuple[int, str | None]] = []

    def body() -> str:
        ctx = resilience.current()
        seen.append((ctx.attempt, ctx.pipeline))
        if ctx.attempt < 2:
            raise ValueError(ctx.attempt)
        return "ok"

    decorated = Retry(3, backoff=0.5, clock=clock, name="x")(flavour(mode, body))
    result = decorated() if mode == "sync" else await decorated()
    assert result == "ok"
    assert seen == [(1, "x"), (2, "x")]


async def test_current_pipeline_inside_a_named_pipeline(mode: str, clock: FakeClock) -> None:
    """Inside a named Pipeline the context shows the pipeline's name on every attempt."""
    seen: list[tuple[int, str | None]] = []

    def fn() -> str:
        ctx = resilience.current()
        seen.append((ctx.attempt, ctx.pipeline))
        if ctx.attempt < 2:
            raise ValueError(ctx.attempt)
        return "ok"

    pipeline = resilience.Pipeline.builder("p").add(Retry(3, backoff=0.5, clock=clock)).build()
    assert await run(mode, pipeline, flavour(mode, fn)) == "ok"
    assert seen == [(1, "p"), (2, "p")]


# -- on_retry -----------------------------------------------------------------------


async def test_on_retry_receives_one_event_per_retry(mode: str, clock: FakeClock) -> None:
    """on_retry gets RetryEvents for attempts 1..n-1 with the delay and the error of each."""
    events: list[RetryEvent] = []
    errors = [ValueError("a"), KeyError("b"), ValueError("c")]
    fn = Flaky(list(errors), value="ok")
    retry = Retry(
        4,
        on=(ValueError, KeyError),
        backoff=backoff.exponential(0.1, jitter="equal", seed=3),
        on_retry=events.append,
        clock=clock,
        name="svc",
    )
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert [e.attempt for e in events] == [1, 2, 3]
    assert [e.delay for e in events] == clock.sleeps
    assert clock.sleeps == list(backoff.exponential(0.1, jitter="equal", seed=3).delays(3))
    assert all(e.error is err for e, err in zip(events, errors, strict=True))
    assert all(e.name == "svc" and e.result is None for e in events)


async def test_on_retry_is_not_called_when_giving_up(mode: str, clock: FakeClock) -> None:
    """With attempts=3 and three failures there are two events, not three."""
    events: list[RetryEvent] = []
    with pytest.raises(ValueError, match="failure"):
        await run(
            mode,
            Retry(3, backoff=0.5, on_retry=events.append, clock=clock),
            flavour(mode, AlwaysFails()),
        )
    assert [e.attempt for e in events] == [1, 2]


async def test_on_retry_event_for_a_rejected_result(mode: str, clock: FakeClock) -> None:
    """A result retry gives an event with error None and the rejected result."""
    events: list[RetryEvent] = []
    results = iter(["bad", "good"])
    retry = Retry(
        3, on_result=lambda r: r == "bad", backoff=0.5, on_retry=events.append, clock=clock
    )
    assert await run(mode, retry, flavour(mode, lambda: next(results))) == "good"
    assert events == [RetryEvent(None, 1, 0.5, None, "bad")]


async def test_on_retry_hears_the_hinted_delay(mode: str, clock: FakeClock) -> None:
    """The event's delay is the wait actually taken, retry_after included."""
    events: list[RetryEvent] = []
    fn = Flaky([Hinted(4.0)], value="ok")
    await run(mode, Retry(2, backoff=0.5, on_retry=events.append, clock=clock), flavour(mode, fn))
    assert [e.delay for e in events] == [4.0] == clock.sleeps


async def test_failing_on_retry_does_not_break_the_call(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_retry that raises is logged under 'resilience'; the call still retries and succeeds."""

    def listener(event: RetryEvent) -> None:
        raise RuntimeError("listener broke")

    fn = Flaky([ValueError("a")], value="ok")
    retry = Retry(3, backoff=0.5, on_retry=listener, clock=clock, name="svc")
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert fn.calls == 2
    assert clock.sleeps == [0.5]
    records = [r for r in caplog.records if r.name == "resilience"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "on_retry" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


# -- events and logs ---------------------------------------------------------------


async def test_subscribers_hear_each_retry_and_the_end(mode: str, clock: FakeClock) -> None:
    """A subscriber gets a RetryEvent per retry, then RetriesExhausted with the last error."""
    fn = AlwaysFails()
    retry = Retry(3, backoff=0.5, clock=clock, name="svc")
    with (
        EventRecorder().watch(retry) as recorder,
        pytest.raises(ValueError, match="failure 3") as caught,
    ):
        await run(mode, retry, flavour(mode, fn))
    assert recorder.events == [
        RetryEvent("svc", 1, 0.5, fn.raised[0]),
        RetryEvent("svc", 2, 0.5, fn.raised[1]),
        RetriesExhausted("svc", 3, "attempts", caught.value),
    ]


async def test_retries_exhausted_says_why(mode: str, clock: FakeClock) -> None:
    """The end event's reason: attempts used up, the deadline, or an endless backoff."""
    results = iter(range(100))
    retry = Retry(2, on_result=lambda r: True, backoff=0.5, clock=clock)
    with EventRecorder().watch(retry) as recorder:
        assert await run(mode, retry, flavour(mode, lambda: next(results))) == 1
    assert recorder.of(RetriesExhausted) == [RetriesExhausted(None, 2, "attempts", None, 1)]

    retry = Retry(10, backoff=0.4, clock=clock)
    policy = _timeout_outside("pipeline", 1.0, retry, clock)
    with (
        EventRecorder().watch(retry) as recorder,
        pytest.raises(ValueError, match="failure 3") as caught,
    ):
        await run(mode, policy, flavour(mode, AlwaysFails()))
    assert recorder.of(RetriesExhausted) == [RetriesExhausted(None, 3, "deadline", caught.value)]

    retry = Retry(3, backoff=_Endless(), clock=clock)
    with (
        EventRecorder().watch(retry) as recorder,
        pytest.raises(ValueError, match="failure 1") as caught,
    ):
        await run(mode, retry, flavour(mode, AlwaysFails()))
    assert recorder.of(RetriesExhausted) == [RetriesExhausted(None, 1, "backoff", caught.value)]


def test_retry_events_describe_themselves() -> None:
    """A RetryEvent is retry_scheduled with the attempt and the delay; RetriesExhausted is
    retries_exhausted with the attempts and the reason."""
    error = ValueError("x")
    assert RetryEvent("svc", 1, 0.5, error).describe() == (
        "retry_scheduled",
        error,
        {"resilience.attempt.number": 1, "resilience.retry.delay": 0.5},
    )
    assert RetriesExhausted("svc", 3, "deadline", error).describe() == (
        "retries_exhausted",
        error,
        {"resilience.retry.attempts": 3, "resilience.retry.reason": "deadline"},
    )


async def test_retries_and_the_end_are_logged(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry is logged at DEBUG and giving up at INFO, under 'resilience', with the name."""
    fn = Flaky([ValueError("a"), ValueError("b")])
    retry = Retry(2, backoff=0.5, clock=clock, name="svc")
    with caplog.at_level(logging.DEBUG, logger="resilience"), pytest.raises(ValueError, match="b"):
        await run(mode, retry, flavour(mode, fn))
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "resilience"]
    assert logged == [
        (
            logging.DEBUG,
            "resilience: Retry 'svc' retrying in 0.5s after attempt 1 failed: ValueError('a')",
        ),
        (
            logging.INFO,
            "resilience: Retry 'svc' gave up after 2 attempt(s) (attempts): ValueError('b')",
        ),
    ]


# -- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)],
)
def test_attempts_is_validated(attempts: object, error: type[Exception]) -> None:
    """attempts must be an int >= 1 (not a bool); the error names `attempts`."""
    with pytest.raises(error, match=r"^attempts "):
        Retry(attempts)  # type: ignore[arg-type]


@pytest.mark.parametrize("on", [int, (ValueError, 3), 42, "ValueError", (ValueError, str)])
def test_on_is_validated(on: object) -> None:
    """on must be an exception type, a tuple of them or a predicate; the error names `on`."""
    with pytest.raises(TypeError, match=r"^on "):
        Retry(on=on)  # type: ignore[arg-type]


@pytest.mark.parametrize("param", ["on_result", "on_retry"])
@pytest.mark.parametrize("value", [3, "x", True])
def test_hooks_must_be_callable(param: str, value: object) -> None:
    """on_result and on_retry must be callables (or None); the error names them."""
    with pytest.raises(TypeError, match=rf"^{param} "):
        Retry(**{param: value})


@pytest.mark.parametrize("value", ["x", True, None, [0.5]])
def test_backoff_is_validated(value: object) -> None:
    """backoff must be a strategy, seconds or a tenacity wait; the error names `backoff`."""
    with pytest.raises(TypeError, match=r"^backoff "):
        Retry(backoff=value)


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf])
def test_bad_backoff_number_names_backoff(value: float) -> None:
    """Retry(backoff=-0.5) (or NaN, inf) is refused with a message that names `backoff`."""
    with pytest.raises(ValueError, match=r"^backoff "):
        Retry(backoff=value)


def test_clock_and_name_are_validated() -> None:
    """A clock without the Clock methods and a non-str name are refused, naming them."""
    with pytest.raises(TypeError, match=r"^clock "):
        Retry(clock=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^name "):
        Retry(name=3)  # type: ignore[arg-type]


async def test_number_backoff_means_constant(mode: str, clock: FakeClock) -> None:
    """backoff=0.25 waits 0.25 before every retry."""
    retry = Retry(3, backoff=0.25, clock=clock)
    assert repr(retry.backoff) == "constant(0.25)"
    fn = Flaky([ValueError("a"), ValueError("b")], value="ok")
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.25, 0.25]


async def test_tenacity_wait_as_backoff(mode: str, clock: FakeClock) -> None:
    """backoff=tenacity.wait_fixed(0.3) waits 0.3 between attempts."""
    fn = Flaky([ValueError("a")], value="ok")
    retry = Retry(3, backoff=tenacity.wait_fixed(0.3), clock=clock)
    assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.3]


async def test_default_backoff_is_capped_full_jitter(mode: str, clock: FakeClock) -> None:
    """The default backoff waits in [0, 0.1 * 2 ** (n - 1)] before retry n."""
    with pytest.raises(ValueError, match="failure"):
        await run(mode, Retry(5, clock=clock), flavour(mode, AlwaysFails()))
    assert len(clock.sleeps) == 4
    assert all(0.0 <= s <= 0.1 * 2**n for n, s in enumerate(clock.sleeps))


def test_repr_and_describe_show_the_settings() -> None:
    """repr() and describe() show the attempts, the retried exceptions and the backoff."""
    retry = Retry(4, on=(ValueError, KeyError), backoff=0.5, name="svc")
    assert (
        repr(retry) == "Retry('svc', attempts=4, on=(ValueError, KeyError), backoff=constant(0.5))"
    )
    described = retry.describe()
    assert described["kind"] == "retry"
    assert described["name"] == "svc"
    assert described["attempts"] == 4
    assert described["on"] == (ValueError, KeyError)


def test_defaults() -> None:
    """Retry() makes 3 attempts with full-jitter exponential waits from 0.1 s up to 10 s."""
    retry = Retry()
    assert retry.attempts == 3
    assert repr(retry.backoff) == repr(backoff.exponential(0.1, maximum=10.0, jitter="full"))
    assert retry.max_delay is None
    assert retry.budget is None
    described = retry.describe()
    assert "max_delay" not in described
    assert "budget" not in described
    assert Retry(max_delay=2.5).describe()["max_delay"] == 2.5


@pytest.mark.parametrize(
    "attribute",
    ["attempts", "on", "on_result", "backoff", "max_delay", "on_retry", "budget", "clock", "name"],
)
def test_settings_are_read_only(attribute: str) -> None:
    """A built Retry's settings cannot be assigned (the calls would not see the change)."""
    retry = Retry()
    before = getattr(retry, attribute)
    with pytest.raises(AttributeError, match=rf"^Retry\.{attribute} is read-only"):
        setattr(retry, attribute, None)
    assert getattr(retry, attribute) is before


# -- decorator, call, acall --------------------------------------------------------


def test_decorator_keeps_the_metadata_of_a_def(clock: FakeClock) -> None:
    """The decorated def keeps __name__, __doc__, __wrapped__ and its signature."""

    def fetch(user: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        return f"user {user}"

    decorated = Retry(3, clock=clock)(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch a user."
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated(7) == "user 7"


async def test_decorator_keeps_the_metadata_of_an_async_def(clock: FakeClock) -> None:
    """The decorated async def stays a coroutine function with the original's metadata."""

    async def fetch(user: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        return f"user {user}"

    decorated = Retry(3, clock=clock)(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__doc__ == "Fetch a user."
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(decorated)
    assert await decorated(7) == "user 7"


async def test_decorated_function_retries_with_its_arguments(mode: str, clock: FakeClock) -> None:
    """A decorated function is retried, getting the same args and kwargs on each attempt."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def body(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        if len(seen) < 3:
            raise ValueError(len(seen))
        return sum(args) + kwargs["c"]

    decorated = Retry(3, backoff=0.5, clock=clock)(flavour(mode, body))
    result = decorated(1, 2, c=3) if mode == "sync" else await decorated(1, 2, c=3)
    assert result == 6
    assert seen == [((1, 2), {"c": 3})] * 3


async def test_call_and_acall_pass_args_and_kwargs(mode: str, clock: FakeClock) -> None:
    """call(fn, *args, **kwargs) and acall(...) hand every argument through, on every attempt."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def body(a: int, b: int, *, c: int, fn: str) -> tuple[int, str]:
        seen.append(((a, b), {"c": c, "fn": fn}))
        if len(seen) == 1:
            raise ValueError("first")
        return a * b + c, fn

    result = await run(
        mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, body), 2, 5, c=1, fn="named fn"
    )
    assert result == (11, "named fn")
    assert seen == [((2, 5), {"c": 1, "fn": "named fn"})] * 2


# -- concurrency ---------------------------------------------------------------------

THREADS, CALLS_PER_THREAD, TASKS = 8, 200, 500


class Counter:
    """A lock-protected invocation counter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0

    def bump(self) -> None:
        with self.lock:
            self.value += 1


def test_shared_retry_is_thread_safe(clock: FakeClock) -> None:
    """8 threads x 200 calls through one Retry, failing on odd attempts: all right, 2 calls each."""
    counter = Counter()
    retry = Retry(3, backoff=backoff.exponential(0.01, jitter="full", seed=1), clock=clock)
    start = threading.Barrier(THREADS)

    def fn(value: int) -> int:
        counter.bump()
        if resilience.current().attempt % 2 == 1:
            raise ValueError(value)
        return value * 10

    def worker(thread: int) -> list[int]:
        start.wait()
        return [retry.call(fn, thread * 1000 + i) for i in range(CALLS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    for thread, values in enumerate(results):
        assert values == [(thread * 1000 + i) * 10 for i in range(CALLS_PER_THREAD)]
    assert counter.value == THREADS * CALLS_PER_THREAD * 2
    assert len(clock.sleeps) == THREADS * CALLS_PER_THREAD


async def test_shared_retry_is_task_safe(clock: FakeClock) -> None:
    """500 tasks through one Retry, failing on odd attempts: all right, 2 calls each."""
    counter = Counter()
    retry = Retry(3, backoff=backoff.exponential(0.01, jitter="full", seed=1), clock=clock)

    async def fn(value: int) -> int:
        counter.bump()
        await asyncio.sleep(0)
        if resilience.current().attempt % 2 == 1:
            raise ValueError(value)
        return value * 10

    results = await asyncio.gather(*(retry.acall(fn, i) for i in range(TASKS)))
    assert results == [i * 10 for i in range(TASKS)]
    assert counter.value == TASKS * 2
    assert len(clock.sleeps) == TASKS


async def test_zero_delays_are_slept_the_same_way_sync_and_async(
    mode: str, clock: FakeClock
) -> None:
    """A zero backoff still goes through the clock, so sync and async record the same waits."""
    flaky = Flaky([ConnectionError("a"), ConnectionError("b")])
    retry = Retry(attempts=3, backoff=backoff.constant(0), clock=clock)
    assert await run(mode, retry, flavour(mode, flaky)) == "ok"
    assert clock.sleeps == [0.0, 0.0]


async def test_an_endless_backoff_delay_gives_up_instead_of_sleeping_forever(
    mode: str, clock: FakeClock
) -> None:
    """A backoff that returns inf stops the retries at once, with a note saying why."""
    error = ConnectionError("down")
    flaky = Flaky([error, error])
    retry = Retry(attempts=3, backoff=_Endless(), clock=clock)
    with pytest.raises(ConnectionError) as caught:
        await run(mode, retry, flavour(mode, flaky))
    assert caught.value is error
    assert flaky.calls == 1
    assert clock.sleeps == []
    assert "endless wait" in caught.value.__notes__[-1]


class _Endless(backoff.Backoff):
    """A backoff whose delay has overflowed to infinity."""

    def delay(self, retry: int, previous: float) -> float:
        return math.inf


def test_a_retry_with_a_function_of_the_retry_number() -> None:
    """backoff.from_function waits fn(1), fn(2); the bare function fails with a pointer to it."""
    clock = FakeClock()
    flaky = Flaky([ConnectionError("1"), ConnectionError("2")])
    retry = Retry(attempts=3, backoff=backoff.from_function(lambda n: 0.1 * n), clock=clock)
    assert retry.call(flaky) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    wrong = Retry(attempts=3, backoff=lambda n: 0.1 * n, clock=clock)  # taken for tenacity's
    with pytest.raises(TypeError, match="from_function"):
        wrong.call(Flaky([ConnectionError("1")]))


# -- what the backoff is told --------------------------------------------------------


async def test_the_backoff_is_told_the_waits_so_far_and_the_time_since_the_start(
    mode: str,
) -> None:
    """Each RetryOutcome has the previous wait, the waits' sum and the time since the first try."""
    clock = FakeClock(100.0)
    seen: list[backoff.RetryOutcome] = []

    def delay(outcome: backoff.RetryOutcome) -> float:
        seen.append(outcome)
        return 0.5 * outcome.retry

    def slow_failure() -> None:
        clock.advance(0.25)
        raise ValueError("slow")

    retry = Retry(3, backoff=backoff.from_outcome(delay), clock=clock)
    with pytest.raises(ValueError, match="slow"):
        await run(mode, retry, flavour(mode, slow_failure))
    assert [(o.retry, o.previous, o.slept, o.elapsed) for o in seen] == [
        (1, 0.0, 0.0, 0.25),
        (2, 0.5, 0.5, 1.0),
    ]
    assert clock.sleeps == [0.5, 1.0]


# -- the testing switches ------------------------------------------------------------


async def test_max_attempts_switch_caps_every_retry(mode: str, clock: FakeClock) -> None:
    """set_testing(max_attempts=2) stops Retry(5) after 2 attempts; a cap of 10 leaves Retry(3)."""
    with set_testing(max_attempts=2):
        fn = AlwaysFails()
        with pytest.raises(ValueError, match="failure 2") as caught:
            await run(mode, Retry(5, backoff=0.5, clock=clock), flavour(mode, fn))
        assert fn.calls == 2
        assert "gave up after 2 attempts" in notes(caught.value)[0]
    with set_testing(max_attempts=10):
        fn = AlwaysFails()
        with pytest.raises(ValueError, match="failure 3"):
            await run(mode, Retry(3, backoff=0.5, clock=clock), flavour(mode, fn))
        assert fn.calls == 3


async def test_instant_waits_switch_makes_every_wait_zero(mode: str, clock: FakeClock) -> None:
    """set_testing(instant_waits=True) turns the backoff's waits and retry_after hints into 0."""
    events: list[RetryEvent] = []
    fn = Flaky([ValueError("a"), Hinted(30.0)], value="ok")
    retry = Retry(3, backoff=0.5, on_retry=events.append, clock=clock)
    with set_testing(instant_waits=True):
        assert await run(mode, retry, flavour(mode, fn)) == "ok"
    assert clock.sleeps == [0.0, 0.0]
    assert [e.delay for e in events] == [0.0, 0.0]


# -- in a pipeline -------------------------------------------------------------------


class _CountingLayer(resilience.Middleware):
    """A layer that counts the calls that pass through it."""

    def __init__(self) -> None:
        self.passed = 0

    def wrap(self, next: Any, /) -> Any:
        def counted(fn: Any, args: Any, kwargs: Any) -> Any:
            self.passed += 1
            return next(fn, args, kwargs)

        return counted

    def awrap(self, next: Any, /) -> Any:
        async def counted(fn: Any, args: Any, kwargs: Any) -> Any:
            self.passed += 1
            return await next(fn, args, kwargs)

        return counted


async def test_every_attempt_goes_through_the_inner_layers(mode: str, clock: FakeClock) -> None:
    """A Retry outside another layer sends each attempt, the first one too, through it."""
    inner = _CountingLayer()
    retry = Retry(3, backoff=0.5, clock=clock)
    pipeline = resilience.Pipeline.builder().add(retry).add(inner).build()
    fn = Flaky([ValueError("a")], value="ok")
    assert await run(mode, pipeline, flavour(mode, fn)) == "ok"
    assert fn.calls == 2
    assert inner.passed == 2
