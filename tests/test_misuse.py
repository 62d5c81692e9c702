"""Misuse is loud: generators, sync/async mix-ups and async predicates fail at once, uncounted."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import resilience as rs
from resilience.testing import FakeClock


def every_policy() -> list[rs.Middleware]:
    """One of each layer, and a pipeline of several."""
    return [
        rs.Retry(3, backoff=0),
        rs.Timeout(5),
        rs.CircuitBreaker(),
        rs.Throttle(100),
        rs.Bulkhead(2),
        rs.FaultInjector(enabled=False),
        rs.Fallback(value="substitute"),
        rs.AdaptiveLimiter(),
        rs.AdaptiveThrottler(),
        rs.Pipeline([rs.Retry(2, backoff=0), rs.CircuitBreaker()]),
    ]


POLICIES = pytest.mark.parametrize(
    "policy", every_policy(), ids=lambda p: type(p).__name__ if p is not None else "?"
)


def numbers() -> Iterator[int]:
    yield 1


async def anumbers() -> AsyncIterator[int]:
    yield 1


# -- 1. generators ----------------------------------------------------------------------


@POLICIES
def test_decorating_a_generator_function_is_refused(policy: rs.Middleware) -> None:
    """The body of a generator runs after the layers returned: refused when decorated."""
    with pytest.raises(TypeError, match=r"numbers is a generator function.*list\("):
        policy(numbers)
    with pytest.raises(TypeError, match=r"anumbers is an async generator function"):
        policy(anumbers)


@POLICIES
async def test_calling_a_generator_function_is_refused(policy: rs.Middleware) -> None:
    """call() and acall() refuse generator functions the same way, before anything runs."""
    with pytest.raises(TypeError, match=r"generator function"):
        policy.call(numbers)
    with pytest.raises(TypeError, match=r"async generator function"):
        await policy.acall(anumbers)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generator function"):
        policy.call(functools.partial(numbers))


def test_a_generator_method_is_refused_too() -> None:
    """A generator method, bound or decorated in a class body, is refused alike."""

    class Feed:
        def items(self) -> Iterator[int]:
            yield 1

    with pytest.raises(TypeError, match=r"Feed.items is a generator function"):
        rs.Retry().call(Feed().items)
    with pytest.raises(TypeError, match=r"generator function"):

        class Decorated:
            @rs.Retry()
            def items(self) -> Iterator[int]:
                yield 1


# -- 2. sync / async mix-ups ---------------------------------------------------------------


def guarded() -> tuple[rs.Pipeline, rs.CircuitBreaker, rs.Bulkhead, rs.AdaptiveLimiter]:
    breaker = rs.CircuitBreaker(consecutive_failures=1)
    bulkhead = rs.Bulkhead(1)
    limiter = rs.AdaptiveLimiter(initial_limit=1, min_limit=1, max_limit=1)
    pipeline = rs.Pipeline(
        [rs.Fallback(value="substitute"), rs.Retry(3, backoff=0), breaker, bulkhead, limiter]
    )
    return pipeline, breaker, bulkhead, limiter


def untouched(
    breaker: rs.CircuitBreaker, bulkhead: rs.Bulkhead, limiter: rs.AdaptiveLimiter
) -> None:
    assert breaker.state is rs.CircuitState.CLOSED
    assert breaker.metrics().calls == 0
    assert bulkhead.metrics().in_flight == 0
    assert limiter.metrics().in_flight == 0


async def test_a_sync_function_through_acall_runs_once_and_nothing_counts() -> None:
    """acall(sync_fn): the function runs once, a TypeError reaches the caller, and no layer
    retries it, counts it, or replaces it with the fallback."""
    pipeline, breaker, bulkhead, limiter = guarded()
    ran: list[int] = []

    def sync_fn(x: int) -> int:
        ran.append(x)
        return x

    for _ in range(3):
        with pytest.raises(TypeError, match=r"sync_fn, which returned int, not an awaitable"):
            await pipeline.acall(sync_fn, 7)  # type: ignore[arg-type]
    assert ran == [7, 7, 7]  # once per acall, never retried
    untouched(breaker, bulkhead, limiter)


async def test_a_retry_alone_does_not_repeat_a_sync_function() -> None:
    """The issue's case: `await Retry(3).acall(sync_fn)` no longer runs it three times."""
    ran: list[int] = []
    with pytest.raises(TypeError, match="not an awaitable"):
        await rs.Retry(3, backoff=0).acall(lambda: ran.append(1))  # type: ignore[arg-type, func-returns-value]
    assert ran == [1]


async def test_a_coroutine_object_through_acall_is_refused_and_closed() -> None:
    """acall(fetch(1)) instead of acall(fetch, 1): TypeError at once, the coroutine is closed
    (no "never awaited" warning), the fallback does not hide it."""
    pipeline, breaker, bulkhead, limiter = guarded()

    async def fetch(x: int) -> int:
        return x

    coroutine = fetch(1)
    with pytest.raises(TypeError, match=r"acall\(fetch, 1\), not a coroutine object"):
        await pipeline.acall(coroutine)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    with pytest.raises(TypeError, match=r"takes a callable, got int"):
        await rs.Fallback(value=1).acall(5)  # type: ignore[arg-type]
    untouched(breaker, bulkhead, limiter)


async def test_an_async_function_through_call_is_refused_before_it_runs() -> None:
    """call(async_fn) used to return a coroutine that never ran, counted as a success."""
    pipeline, breaker, bulkhead, limiter = guarded()

    async def fetch() -> int:
        raise AssertionError("never runs")

    for _ in range(3):
        with pytest.raises(TypeError, match=r"async function .*fetch.*acall"):
            pipeline.call(fetch)
    untouched(breaker, bulkhead, limiter)
    with pytest.raises(TypeError, match=r"takes the function and its arguments"):
        pipeline.call(fetch())  # type: ignore[arg-type]


async def test_callables_that_return_awaitables_still_work_through_acall() -> None:
    """A lambda or partial returning a coroutine, and an object with an async __call__, run."""

    async def fetch(x: int) -> int:
        return x * 2

    class Fetcher:
        async def __call__(self, x: int) -> int:
            return x * 3

    retry = rs.Retry(2, backoff=0)
    assert await retry.acall(lambda: fetch(1)) == 2
    assert await retry.acall(functools.partial(fetch, 2)) == 4
    assert await retry.acall(Fetcher(), 2) == 6
    assert await retry.acall(fetch, 5) == 10
    assert await retry.acall(fetch, 6) == 12  # the remembered function, again


async def test_a_failure_of_a_checked_callable_still_counts() -> None:
    """A lambda that raises before returning its awaitable is a real failure: retried."""
    tries: list[int] = []

    def flaky() -> Any:
        tries.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await rs.Retry(3, backoff=0).acall(flaky)
    assert len(tries) == 3


def test_an_async_behaviour_in_a_sync_call_is_not_counted() -> None:
    """A FaultInjector's async behaviour in a sync call: TypeError, and the breaker counts none."""

    async def behaviour(ctx: rs.CallContext) -> None:
        return None

    breaker = rs.CircuitBreaker(consecutive_failures=1)
    pipeline = rs.Pipeline([rs.Retry(3, backoff=0), breaker, rs.FaultInjector(behaviour=behaviour)])
    with pytest.raises(TypeError, match="async behaviour"):
        pipeline.call(lambda: 1)
    assert breaker.metrics().calls == 0


def test_an_async_fallback_handler_in_a_sync_call_is_loud() -> None:
    """An async handler in a sync call is a TypeError that an outer breaker does not count."""

    async def handler(ctx: rs.FallbackContext) -> str:
        return "x"

    breaker = rs.CircuitBreaker(consecutive_failures=1)
    pipeline = rs.Pipeline([breaker, rs.Fallback(handler=handler)])

    def fail() -> None:
        raise ValueError("boom")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.PipelineOrderWarning)
        with pytest.raises(TypeError, match="returned an awaitable in a sync call"):
            pipeline.call(fail)
    assert breaker.metrics().calls == 0


# -- 3. async callables where plain ones are expected --------------------------------------


async def apredicate(value: Any) -> bool:
    return False


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: rs.Fallback(value=1, on_result=apredicate), "on_result"),
        (lambda: rs.Fallback(value=1, on=apredicate), "on"),
        (lambda: rs.Fallback(value=1, on_fallback=apredicate), "on_fallback"),
        (lambda: rs.Retry(on=apredicate), "on"),
        (lambda: rs.Retry(on_result=apredicate), "on_result"),
        (lambda: rs.Retry(on_retry=apredicate), "on_retry"),
        (lambda: rs.CircuitBreaker(failure_result=apredicate), "failure_result"),
        (lambda: rs.CircuitBreaker(failure_on=apredicate), "failure_on"),
        (lambda: rs.CircuitBreaker(ignore=apredicate), "ignore"),
        (lambda: rs.CircuitBreaker(on_state_change=apredicate), "on_state_change"),
        (lambda: rs.CircuitBreaker(on_outcome=apredicate), "on_outcome"),
        (lambda: rs.AdaptiveThrottler(refused_result=apredicate), "refused_result"),
        (lambda: rs.AdaptiveThrottler(refused_on=apredicate), "refused_on"),
        (lambda: rs.AdaptiveLimiter(drop_on=apredicate), "drop_on"),
        (lambda: rs.FaultInjector(enabled=apredicate), "enabled"),
        (lambda: rs.FaultInjector(error_rate=apredicate), "error_rate"),
        (lambda: rs.FaultInjector(error=apredicate), "error"),
        (lambda: rs.FaultInjector(latency=apredicate), "latency"),
        (lambda: rs.Throttle(10, cost=apredicate), "cost"),
        (lambda: rs.backoff.from_function(apredicate), "fn"),
        (lambda: rs.Retry(backoff=apredicate), "wait"),
    ],
)
def test_async_predicates_and_listeners_are_refused(make: Callable[[], Any], name: str) -> None:
    """A coroutine is always true and never runs: an async function is refused by name."""
    with pytest.raises(TypeError, match=rf"^{name} must be a plain function"):
        make()


@POLICIES
def test_async_subscribers_are_refused(policy: rs.Middleware) -> None:
    """subscribe() takes plain functions only, on every policy and pipeline."""
    with pytest.raises(TypeError, match=r"^listener must be a plain function"):
        policy.subscribe(apredicate)


def test_a_subscriber_returning_a_coroutine_is_closed_with_an_error_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lambda around an async function slips past subscribe(): its coroutine is closed."""
    retry = rs.Retry(2, backoff=0, clock=FakeClock())
    started: list[object] = []

    async def handle(event: object) -> None:
        started.append(event)

    retry.subscribe(lambda event: handle(event))
    calls = iter([ValueError("once"), None])

    def flaky() -> str:
        error = next(calls)
        if error is not None:
            raise error
        return "ok"

    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert retry.call(flaky) == "ok"
    gc.collect()
    assert started == []
    assert any("did not run" in r.getMessage() for r in caplog.records)


async def test_misuse_inside_a_task_group_reaches_the_caller() -> None:
    """The carrier never leaks: a misused acall inside gather raises TypeError there."""

    def sync_fn() -> int:
        return 1

    results = await asyncio.gather(
        rs.Retry(2, backoff=0).acall(sync_fn),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert isinstance(results[0], TypeError)
