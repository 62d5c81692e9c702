"""Tests of `resilience.Hedge`: hedges on delay and on failure, winners, losers cancelled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import modes
import resilience as rs
from modes import (
    Event,
    checkpoint,
    create_task,
    forever,
    gather,
    on_asyncio,
    task_cancelled,
)
from resilience._aio import is_cancellation
from resilience.events import HedgeEvent
from resilience.testing import FakeClock


class Attempts:
    """An async service whose attempts are scripted by number; records what happened."""

    def __init__(self, script: dict[int, Callable[[], Awaitable[Any]]]) -> None:
        self.script = script
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    async def __call__(self) -> Any:
        attempt = rs.current().attempt
        self.started.append(attempt)
        try:
            answer = await self.script[attempt]()
        except BaseException as exc:
            if is_cancellation(exc):  # asyncio's or trio's
                self.cancelled.append(attempt)
            raise
        self.finished.append(attempt)
        return answer


def answers(value: Any) -> Callable[[], Awaitable[Any]]:
    async def answer() -> Any:
        await checkpoint()
        return value

    return answer


def fails(error: BaseException) -> Callable[[], Awaitable[Any]]:
    async def fail() -> Any:
        await checkpoint()
        raise error

    return fail


def hangs() -> Callable[[], Awaitable[Any]]:
    async def hang() -> Any:
        await forever()

    return hang


async def settle() -> None:
    """Let the tasks of the test run until each waits for something."""
    await modes.settle(10)


def held_clock() -> FakeClock:
    return FakeClock(auto_advance=False)


async def test_a_slow_attempt_is_hedged_after_the_delay_and_the_loser_cancelled(
    async_mode: str,
) -> None:
    clock = held_clock()
    events: list[HedgeEvent] = []
    hedge = rs.Hedge(0.05, clock=clock, on_hedge=events.append)
    service = Attempts({1: hangs(), 2: answers("second")})
    call = create_task(hedge.acall(service))
    await settle()
    assert service.started == [1]
    clock.advance(0.05)
    assert await call == "second"
    assert service.started == [1, 2]
    assert service.cancelled == [1]  # really cancelled, and awaited before the call returned
    assert [(event.attempt, event.reason) for event in events] == [(2, "delay")]


async def test_an_answer_before_the_delay_starts_no_hedge(async_mode: str) -> None:
    clock = held_clock()
    hedge = rs.Hedge(0.05, clock=clock)
    service = Attempts({1: answers("first")})
    tasks = len(asyncio.all_tasks()) if on_asyncio() else 0
    assert await hedge.acall(service) == "first"
    assert service.started == [1]
    if on_asyncio():  # (under trio the attempts are a nursery's, over when it is)
        assert len(asyncio.all_tasks()) == tasks  # the timer is gone too


async def test_a_failure_starts_the_hedge_at_once(async_mode: str) -> None:
    hedge = rs.Hedge(30.0, clock=held_clock(), max_hedges=2)
    service = Attempts({1: fails(ConnectionError("1")), 2: answers("second")})
    assert await hedge.acall(service) == "second"
    assert service.started == [1, 2]


async def test_when_every_attempt_fails_the_last_failure_stands(async_mode: str) -> None:
    hedge = rs.Hedge(30.0, clock=held_clock(), max_hedges=2)
    service = Attempts({n: fails(ConnectionError(str(n))) for n in (1, 2, 3)})
    with pytest.raises(ConnectionError, match="3"):
        await hedge.acall(service)
    assert service.started == [1, 2, 3]


async def test_an_error_not_worth_hedging_ends_the_call(async_mode: str) -> None:
    clock = held_clock()
    hedge = rs.Hedge(0.05, clock=clock, on=ConnectionError)
    service = Attempts({1: fails(ValueError("bad request")), 2: answers("never")})
    with pytest.raises(ValueError, match="bad request"):
        await hedge.acall(service)
    assert service.started == [1]


async def test_a_rejected_result_is_a_failed_attempt(async_mode: str) -> None:
    hedge = rs.Hedge(30.0, clock=held_clock(), on_result=lambda result: result is None)
    service = Attempts({1: answers(None), 2: answers("good")})
    assert await hedge.acall(service) == "good"


async def test_parallel_mode_starts_all_and_the_first_good_answer_wins(async_mode: str) -> None:
    events: list[HedgeEvent] = []
    hedge = rs.Hedge(mode="parallel", max_hedges=2, clock=held_clock(), on_hedge=events.append)
    service = Attempts({1: hangs(), 2: fails(ConnectionError("2")), 3: answers("third")})
    assert await hedge.acall(service) == "third"
    assert sorted(service.started) == [1, 2, 3]
    assert service.cancelled == [1]
    assert [event.reason for event in events] == ["parallel", "parallel"]


async def test_fallback_mode_hedges_only_on_failure(async_mode: str) -> None:
    clock = held_clock()
    hedge = rs.Hedge(0.01, mode="fallback", clock=clock)
    slow = Attempts({1: answers("slow but first"), 2: answers("never")})
    call = create_task(hedge.acall(slow))
    clock.advance(10)
    assert await call == "slow but first"
    assert slow.started == [1]
    failing = Attempts({1: fails(ConnectionError("1")), 2: answers("second")})
    assert await hedge.acall(failing) == "second"


async def test_a_budget_that_refuses_stops_the_hedge(async_mode: str) -> None:
    budget = rs.RetryBudget(ratio=0.0001, min_per_second=0.0001)
    while budget.try_withdraw():
        pass
    hedge = rs.Hedge(30.0, clock=held_clock(), budget=budget)
    service = Attempts({1: fails(ConnectionError("1")), 2: answers("never")})
    with pytest.raises(ConnectionError):
        await hedge.acall(service)
    assert service.started == [1]


async def test_a_timeout_outside_bounds_every_attempt(async_mode: str) -> None:
    clock = held_clock()
    pipeline = rs.Pipeline([rs.Timeout(1.0, clock=clock), rs.Hedge(0.1, clock=clock)])
    service = Attempts({1: hangs(), 2: hangs()})
    call = create_task(pipeline.acall(service))
    await settle()
    clock.advance(0.1)
    await settle()
    assert service.started == [1, 2]
    clock.advance(1.0)
    with pytest.raises(rs.TimeoutExceeded):
        await call
    assert sorted(service.cancelled) == [1, 2]


async def test_a_breaker_inside_counts_each_attempt_and_not_the_cancelled(async_mode: str) -> None:
    clock = held_clock()
    breaker = rs.CircuitBreaker(minimum_calls=100)
    pipeline = rs.Pipeline([rs.Hedge(0.1, clock=clock, max_hedges=2), breaker])
    service = Attempts({1: hangs(), 2: fails(ConnectionError("2")), 3: answers("third")})
    call = create_task(pipeline.acall(service))
    await settle()
    clock.advance(0.1)
    assert await call == "third"
    metrics = breaker.metrics()
    assert (metrics.calls, metrics.failures) == (2, 1)


async def test_a_bulkhead_inside_gives_each_attempt_its_slot(async_mode: str) -> None:
    clock = held_clock()
    bulkhead = rs.Bulkhead(max_concurrent=2, max_queue=0)
    pipeline = rs.Pipeline([rs.Hedge(0.1, clock=clock), bulkhead])
    seen: list[int] = []
    release = Event()

    async def attempt() -> str:
        seen.append(bulkhead.metrics().in_flight)
        if rs.current().attempt == 1:
            await release.wait()
        return f"attempt {rs.current().attempt}"

    call = create_task(pipeline.acall(attempt))
    await settle()
    clock.advance(0.1)
    assert await call == "attempt 2"
    assert seen == [1, 2]
    assert bulkhead.metrics().in_flight == 0


@pytest.mark.parametrize("when", ["before the hedge", "after the hedge"])
async def test_cancelling_the_caller_cancels_every_attempt(when: str, async_mode: str) -> None:
    clock = held_clock()
    hedge = rs.Hedge(0.1, clock=clock)
    service = Attempts({1: hangs(), 2: hangs()})
    tasks = len(asyncio.all_tasks()) if on_asyncio() else 0
    call = create_task(hedge.acall(service))
    await settle()
    if when == "after the hedge":
        clock.advance(0.1)
        await settle()
    call.cancel()
    with pytest.raises(task_cancelled(async_mode)):
        await call
    assert sorted(service.cancelled) == sorted(service.started)
    if on_asyncio():
        assert len(asyncio.all_tasks()) == tasks


async def test_each_attempt_has_its_own_context(async_mode: str) -> None:
    seen: list[tuple[int, Any]] = []

    async def attempt() -> str:
        seen.append((rs.current().attempt, rs.current().tags.get("user")))
        if rs.current().attempt == 1:
            raise ConnectionError("first")
        return "ok"

    with rs.tags(user=7):
        assert await rs.Hedge(30.0, clock=held_clock()).acall(attempt) == "ok"
    assert rs.current().attempt == 0
    assert seen == [(1, 7), (2, 7)]


# -- sync ---------------------------------------------------------------------------------------


def test_sync_a_slow_attempt_is_hedged_and_left_behind() -> None:
    release = threading.Event()
    seen: list[int] = []
    lock = threading.Lock()

    def attempt() -> str:
        number = rs.current().attempt
        with lock:
            seen.append(number)
        if number == 1:
            release.wait(10.0)
        return f"attempt {number}"

    hedge = rs.Hedge(0.01, max_workers=4)
    try:
        assert hedge.call(attempt) == "attempt 2"
        assert seen == [1, 2]
    finally:
        release.set()
        hedge.close()


def test_sync_failures_and_the_last_failure() -> None:
    clock = FakeClock()  # auto-advance: each delay passes at once
    hedge = rs.Hedge(30.0, max_hedges=2, clock=clock, on=ConnectionError)
    outcomes = iter([ConnectionError("1"), "second"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    try:
        assert hedge.call(flaky) == "second"
        with pytest.raises(ValueError, match="bad"):
            hedge.call(lambda: (_ for _ in ()).throw(ValueError("bad")))
        counter = iter(range(10))

        def always() -> None:
            raise ConnectionError(str(next(counter)))

        with pytest.raises(ConnectionError):
            hedge.call(always)
    finally:
        hedge.close()


# -- the delay --------------------------------------------------------------------------------


def test_latency_percentile_follows_recent_latencies() -> None:
    delay = rs.LatencyPercentile(95, window=100, minimum=20, initial=0.5)
    assert delay() == 0.5
    for _ in range(19):
        delay.record(0.01)
    assert delay() == 0.5
    delay.record(0.01)
    assert delay() == 0.01
    for index in range(100):
        delay.record(0.2 if index % 10 == 0 else 0.01)  # 10 % slow: p95 is slow
    assert delay() == 0.2


async def test_a_percentile_delay_learns_from_the_winners(async_mode: str) -> None:
    clock = held_clock()
    delay = rs.LatencyPercentile(50, window=10, minimum=1, initial=1.0)
    hedge = rs.Hedge(delay, clock=clock)

    async def timed() -> str:
        await clock.asleep(0.3)
        return "ok"

    call = create_task(hedge.acall(timed))
    await settle()
    clock.advance(0.3)
    assert await call == "ok"
    assert delay() == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"delay": -1}, ValueError, "delay"),
        ({"max_hedges": 0}, ValueError, "max_hedges"),
        ({"mode": "eager"}, ValueError, "mode must be one of"),
        ({"budget": 3}, TypeError, "budget must be a RetryBudget"),
        ({"on": 3}, TypeError, "on must be"),
        ({"max_workers": 0}, ValueError, "max_workers"),
    ],
)
def test_bad_arguments_are_refused(options: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        rs.Hedge(**options)


def test_bad_percentiles_are_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        rs.LatencyPercentile(100)
    with pytest.raises(TypeError, match="percentile must be a number"):
        rs.LatencyPercentile("p95")  # type: ignore[arg-type]


async def test_many_tasks_exact_counts_and_nothing_left(async_mode: str) -> None:
    clock = held_clock()
    events: list[HedgeEvent] = []
    hedge = rs.Hedge(0.05, clock=clock, on_hedge=events.append)
    started: list[tuple[int, int]] = []
    gates: dict[int, Any] = {}

    async def attempt(key: int) -> int:
        started.append((key, rs.current().attempt))
        if key % 4 == 0 and rs.current().attempt == 1:  # every fourth first attempt is stuck
            gates[key] = Event()
            await gates[key].wait()
        await checkpoint()
        return key

    tasks_before = len(asyncio.all_tasks()) if on_asyncio() else 0
    calls = [create_task(hedge.acall(attempt, key)) for key in range(200)]
    await settle()
    clock.advance(0.05)
    assert await gather(*calls) == list(range(200))
    assert len(events) == 50
    assert len(started) == 200 + len(events)
    assert sorted(key for key, number in started if number == 2) == list(range(0, 200, 4))
    if on_asyncio():
        assert len(asyncio.all_tasks()) == tasks_before


def test_many_threads_each_get_their_own_answer() -> None:
    hedge = rs.Hedge(0.001, max_workers=8)

    def attempt(key: int) -> int:
        return key * 2

    def many(offset: int) -> list[int]:
        return [hedge.call(attempt, offset * 100 + index) for index in range(20)]

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(many, range(8)))
    finally:
        hedge.close()
    assert results == [[(offset * 100 + index) * 2 for index in range(20)] for offset in range(8)]
